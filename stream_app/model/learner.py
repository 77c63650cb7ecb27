"""The churn scorer: a fixed prior until an online model, learning from delayed labels,
proves better on them.

The learned model is river's ``StandardScaler | LogisticRegression``: linear in features
that are already log-scaled and tenure-relative, so it extrapolates sensibly to users older
than any it has seen labels for, and its reasons are readable (weight times standardised
value). Every matured label is first scored by both the prior and the model, which feeds
their live quality; only then does the model learn it. The model takes over once it has seen
``min_labels`` labels and its rolling AUC beats the prior's by ``margin``; an ADWIN detector on
its error stream flags drift, after which the better of the two scores.

Examples
--------
>>> scorer = ChurnScorer(ScorerConfig(min_labels=20, margin=0.05))
>>> s = scorer.score({"recency_log": 3.0})
>>> s.source, s.version
('prior', 'prior-1')
>>> for i in range(200):
...     away = (i * 7) % 10
...     _ = scorer.learn({"recency_log": 0.0, "tenure_log": float(away)}, churned=away > 4)
>>> scorer.source, scorer.switches
('model', 1)
>>> s = scorer.score({"recency_log": 0.0, "tenure_log": 9.0})
>>> s.source, s.version, s.probability > 0.5, s.reasons[0][0]
('model', 'm200', True, 'tenure_log')
>>> ChurnScorer.from_bytes(scorer.to_bytes()).score({"tenure_log": 9.0}) == scorer.score(
...     {"tenure_log": 9.0})
True
"""

from __future__ import annotations

import io
import pickle
import zlib
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from river import compose, drift, linear_model, optim, preprocessing
from river._river_rust.stats import RsRollingROCAUC

from stream_app.model.prior import PRIOR_VERSION, Prior, PriorConfig, Reason
from stream_app.model.quality import LiveQuality, Source
from stream_app.model.quantiles import RankSketch
from stream_app.slots import fast_constructor

__all__ = ["ChurnScorer", "Score", "ScorerConfig", "Switch"]

# Checkpoint markers: version 3 stores the learned state as a canonical pickle of its small
# objects plus, apart, its big string-free leaves (see ``ChurnScorer.to_bytes``); version 2,
# still read, stored it as one pickle.
_CHECKPOINT = "churn-scorer/3"
_CHECKPOINT_V2 = "churn-scorer/2"


@dataclass(frozen=True, slots=True)
class ScorerConfig:
    """Model, trust and ranking settings.

    Parameters
    ----------
    learning_rate
        Plain SGD step of the logistic regression and its intercept; small, because labels
        mature in bursts of similar snapshots (a sweep's worth at once) and a larger step
        chases each burst: on CDNOW 0.01 loses 0.016 AUC against 0.001.
    l2
        Ridge penalty, keeping weights of rare or collinear features tame.
    balance_classes
        Weight each label by half the inverse running frequency of its class, so a churn
        rate far from 50 % does not starve the minority class.
    min_labels
        Matured labels needed before the model may take over.
    margin
        Rolling-AUC lead over the prior the model needs to take over.
    quality_window
        Labels covered by the rolling quality figures.
    adwin_delta
        Confidence of the drift detector on the model's absolute error.
    reasons
        How many reasons a score carries.
    rank_bins, rank_window
        Resolution and generation size of the percentile sketch.
    prior
        The fixed prior's curve.
    """

    learning_rate: float = 0.001
    l2: float = 1e-5
    balance_classes: bool = False
    min_labels: int = 1000
    margin: float = 0.01
    quality_window: int = 2000
    adwin_delta: float = 0.002
    reasons: int = 3
    rank_bins: int = 1000
    rank_window: int = 100_000
    prior: PriorConfig = field(default_factory=PriorConfig)


@dataclass(frozen=True, slots=True)
class Score:
    """One churn score.

    ``percentile`` ranks ``probability`` among recent scores (0-100); ``reasons`` lists
    ``(feature, value, contribution)`` for the features that pushed the score up most;
    ``version`` identifies the scorer state that produced it.
    """

    probability: float
    percentile: float
    reasons: list[Reason]
    source: Source
    version: str


@dataclass(frozen=True, slots=True)
class Switch:
    """A change of the scorer in charge, with the evidence behind it."""

    old: Source
    new: Source
    reason: str
    n_learned: int
    quality: dict[str, float]


def _new(factory: Any, *args: Any, **params: Any) -> Any:
    return factory(*args, **params)


# ``Score(probability, percentile, reasons, source, version)``, built fast (see
# ``stream_app.slots``).
_score: Callable[[float, float, list[Reason], Source, str], Score] = fast_constructor(Score)


class ChurnScorer:
    """Prior plus online model, with live quality, drift detection and checkpoints.

    Parameters
    ----------
    cfg
        Settings; see :class:`ScorerConfig`.
    on_switch
        Called with a :class:`Switch` whenever the scorer in charge changes. Not part of
        the checkpoint; pass it again to :meth:`from_bytes`.
    """

    def __init__(
        self, cfg: ScorerConfig | None = None, on_switch: Callable[[Switch], None] | None = None
    ) -> None:
        self.cfg = cfg if cfg is not None else ScorerConfig()
        self.on_switch = on_switch
        self.prior = Prior(self.cfg.prior)
        self._scaler: Any = _new(preprocessing.StandardScaler)
        self._linear: Any = _new(
            linear_model.LogisticRegression,
            optimizer=_new(optim.SGD, self.cfg.learning_rate),
            l2=self.cfg.l2,
            intercept_lr=self.cfg.learning_rate,
        )
        self.model: Any = _new(compose.Pipeline, self._scaler, self._linear)
        self.quality = LiveQuality(self.cfg.quality_window)
        self.ranks = RankSketch(self.cfg.rank_bins, self.cfg.rank_window)
        self._drift: Any = _new(drift.ADWIN, delta=self.cfg.adwin_delta)
        self.source: Source = "prior"
        self.n_learned = 0
        self.switches = 0
        self.drifts = 0
        self._class_counts = [0, 0]
        self._learned_ckpt: tuple[tuple[int, str, int, int], bytes] | None = None
        self._weights_cache: tuple[int, dict[str, float]] | None = None

    @property
    def version(self) -> str:
        """Identity of the scorer in charge: the prior's version, or ``m<labels learned>``."""
        return PRIOR_VERSION if self.source == "prior" else f"m{self.n_learned}"

    def predict_proba_one(self, x: dict[str, float]) -> float:
        """Churn probability from the scorer in charge, without touching any state."""
        if self.source == "prior":
            return self.prior.predict_proba_one(x)
        return self._model_proba(x)

    def _model_proba(self, x: dict[str, float]) -> float:
        return float(self.model.predict_proba_one(x).get(True, 0.0))

    def _weights(self) -> dict[str, float]:
        """The model's weights as a dict, copied out of river once per learned label (only
        :meth:`learn` changes them, and it counts every label in ``n_learned``)."""
        cached = self._weights_cache
        if cached is None or cached[0] != self.n_learned:
            cached = self._weights_cache = (self.n_learned, self._linear.weights)
        return cached[1]

    def _model_reasons(self, x: dict[str, float], z: dict[str, float]) -> list[Reason]:
        weights = self._weights()
        # Positive contributions ranked by (-contribution, name): names are unique, so plain
        # tuple order is that ranking.
        ups: list[tuple[float, str]] = []
        for k, v in z.items():
            c = weights.get(k, 0.0) * v
            if c > 0.0 and k in x:
                ups.append((-c, k))
        ups.sort()
        return [(k, x[k], -neg) for neg, k in ups[: self.cfg.reasons]]

    def score(self, x: dict[str, float], *, count: bool = True) -> Score:
        """Score one feature vector.

        Parameters
        ----------
        x
            Output of ``features``.
        count
            Add the probability to the percentile sketch; turn off for what-if scoring.
        """
        if self.source == "prior":
            p, reasons = self.prior.score(x, self.cfg.reasons)
        else:
            # The pipeline's two steps by hand, so the scaled vector serves the reasons too
            # (the same numbers as ``self.model.predict_proba_one(x)``, one scaling fewer).
            z = self._scaler.transform_one(x)
            p = float(self._linear.predict_proba_one(z).get(True, 0.0))
            reasons = self._model_reasons(x, z)
        ranks = self.ranks
        if count:
            ranks.update(p)
        return _score(p, ranks.percentile(p), reasons, self.source, self.version)

    def learn(self, x: dict[str, float], churned: bool) -> Switch | None:
        """Learn one matured label; return the switch it caused, if any.

        Both scorers are evaluated on ``x`` before the model learns it (prequential).
        """
        p_prior = self.prior.predict_proba_one(x)
        p_model = self._model_proba(x)
        self.quality.update(p_prior, p_model, churned)
        self._drift.update(abs(float(churned) - p_model))
        drifted = bool(self._drift.drift_detected)
        if drifted:
            self.drifts += 1
        w = 1.0
        if self.cfg.balance_classes:
            counts = self._class_counts
            total = counts[0] + counts[1]
            seen = counts[int(churned)]
            w = min(max(0.5 * total / seen, 0.1), 10.0) if seen and total else 1.0
            counts[int(churned)] += 1
        self.model.learn_one(x, churned, w=w)
        self.n_learned += 1
        return self._select(drifted)

    learn_one = learn

    def _select(self, drifted: bool) -> Switch | None:
        q = self.quality
        if q.n < self.cfg.min_labels:
            return None
        lead = q.auc("model") - q.auc("prior")
        new: Source = self.source
        reason = ""
        if self.source == "prior" and lead > self.cfg.margin:
            new, reason = "model", f"model AUC leads prior by {lead:.3f}"
        elif self.source == "model" and drifted and lead < 0.0:
            new, reason = "prior", f"drift; prior AUC leads model by {-lead:.3f}"
        if new == self.source:
            return None
        switch = Switch(self.source, new, reason, self.n_learned, q.summary())
        self.source = new
        self.switches += 1
        if self.on_switch is not None:
            self.on_switch(switch)
        return switch

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("on_switch", None)
        state.pop("_learned_ckpt", None)
        state.pop("_weights_cache", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.on_switch = None
        self._learned_ckpt = None
        self._weights_cache = None

    def _learned_key(self) -> tuple[int, str, int, int]:
        """Changes whenever anything but the rank sketch may have changed: only
        :meth:`learn` touches the model, its quality and the drift detector."""
        return (self.n_learned, self.source, self.switches, self.drifts)

    def to_bytes(self) -> bytes:
        """Checkpoint everything but the callback; identical histories give identical bytes.

        Two parts: the learned state (model, quality, drift detector, counters), which only
        :meth:`learn` changes, and the rank sketch, which every score changes. The learned
        part is encoded again only when a label was learned since the last checkpoint.

        Pickle output depends on which equal strings happen to be the same object, which
        differs between a live scorer and a restored one; dumping a reloaded copy fixes the
        sharing, so a restored scorer fed the same labels checkpoints to the same bytes. Only
        the small objects take that round trip: the big leaves, which hold no strings (the
        rolling ROC AUCs' native state, the rolling log losses' windows of ``(label,
        probability)``), are set apart by :class:`_Splitter`, stored once in a compact form
        and stand in the round trip as placeholders, because reloading them (rebuilding the
        ROC AUCs' trees) cost more than everything else together. The learned part (about
        170 KB with full quality windows) is stored compressed, once per change, so the
        partition snapshot needs no compression.
        """
        key = self._learned_key()
        cached = self._learned_ckpt
        if cached is None or cached[0] != key:
            learned = self.__getstate__()
            del learned["ranks"]
            buf = io.BytesIO()
            splitter = _Splitter(buf)
            splitter.dump(learned)
            placeholders = [_Leaf(i) for i in range(len(splitter.leaves))]
            canonical = _dumps_light(_LightLoader(buf.getvalue(), placeholders).load())
            packed = (zlib.compress(canonical, 1), splitter.leaves)
            cached = (key, pickle.dumps(packed, protocol=5))
            self._learned_ckpt = cached
        return pickle.dumps((_CHECKPOINT, cached[1], self.ranks), protocol=5)

    @classmethod
    def from_bytes(
        cls, data: bytes, on_switch: Callable[[Switch], None] | None = None
    ) -> ChurnScorer:
        """Restore a scorer written by :meth:`to_bytes` (this or the previous version); it
        scores exactly like the original."""
        loaded = pickle.loads(data)
        if not (
            isinstance(loaded, tuple)
            and len(loaded) == 3
            and loaded[0] in (_CHECKPOINT, _CHECKPOINT_V2)
        ):
            raise TypeError(f"not a {cls.__name__} checkpoint")
        marker, learned, ranks = loaded
        if marker == _CHECKPOINT_V2:
            state = pickle.loads(zlib.decompress(learned))
        else:
            light, leaves = pickle.loads(learned)
            state = _LightLoader(
                zlib.decompress(light), [_unpack_leaf(leaf) for leaf in leaves]
            ).load()
        scorer = cls.__new__(cls)
        scorer.__setstate__({**state, "ranks": ranks})
        scorer.on_switch = on_switch
        return scorer


# -- learned-state checkpoint helpers ----------------------------------------------------------

_first = itemgetter(0)
_second = itemgetter(1)


class _Leaf:
    """Stands in for the ``index``-th big leaf while the small objects are canonicalised."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _pack_window(window: deque[Any]) -> tuple[str, int, bytes, bytes] | None:
    """A bounded window of ``((label, probability), {})`` (river's ``utils.Rolling`` of a
    metric) as ``("window", maxlen, labels, probabilities)``; None for any other deque.

    >>> w = deque([((True, 0.25), {}), ((False, 0.5), {})], maxlen=3)
    >>> packed = _pack_window(w)
    >>> twin = _unpack_leaf(packed)
    >>> twin == w and twin.maxlen == 3 and [type(a[0]) for a, _ in twin] == [bool, bool]
    True
    >>> _pack_window(deque([((1, 0.25), {})], maxlen=3)) is None  # not a bool: left alone
    True
    """
    maxlen = window.maxlen
    if maxlen is None or set(map(type, window)) - {tuple} or set(map(len, window)) - {2}:
        return None
    args = list(map(_first, window))
    kwargs = list(map(_second, window))
    if set(map(type, args)) - {tuple} or set(map(len, args)) - {2}:
        return None
    if set(map(type, kwargs)) - {dict} or any(kwargs):
        return None
    labels = list(map(_first, args))
    probabilities = list(map(_second, args))
    if set(map(type, labels)) - {bool} or set(map(type, probabilities)) - {float}:
        return None
    return ("window", maxlen, bytes(labels), array("d", probabilities).tobytes())


def _unpack_leaf(leaf: Any) -> Any:
    """Inverse of the packing in :class:`_Splitter`."""
    if leaf[0] == "zpickle":
        return pickle.loads(zlib.decompress(leaf[1]))
    if leaf[0] == "window":
        _, maxlen, labels, raw = leaf
        probabilities = array("d")
        probabilities.frombytes(raw)
        return deque(
            [((y, p), {}) for y, p in zip(map(bool, labels), probabilities, strict=True)],
            maxlen,
        )
    raise ValueError(f"unknown checkpoint leaf {leaf[0]!r}")


def _leaf(index: int) -> Any:
    """What a set-apart leaf is pickled as (a call of this function with its index); only
    :class:`_LightLoader` resolves it."""
    raise pickle.UnpicklingError(f"checkpoint leaf {index} outside its checkpoint")


class _Splitter(pickle.Pickler):
    """Pickles the learned state with its big string-free leaves set apart in ``leaves``
    (packed, in the order met) and written as ``_leaf(index)``; the pickle memo makes a
    leaf met twice the same object again.

    ``reducer_override`` is consulted only for objects that are not plain ints, floats,
    strings, tuples, lists or dicts, so the split costs next to nothing on the rest.
    """

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=5)
        self.leaves: list[Any] = []

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is RsRollingROCAUC:
            # Its native state (scores and their order) halves under zlib; a packed window
            # (see :func:`_pack_window`) shrinks by a tenth, not worth compressing.
            packed: Any = ("zpickle", zlib.compress(pickle.dumps(obj, protocol=5), 1))
        elif kind is deque:
            packed = _pack_window(obj)
            if packed is None:
                return NotImplemented
        else:
            return NotImplemented
        self.leaves.append(packed)
        return _leaf, (len(self.leaves) - 1,)


class _LightPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        return (_leaf, (obj.index,)) if type(obj) is _Leaf else NotImplemented


def _dumps_light(obj: Any) -> bytes:
    buf = io.BytesIO()
    _LightPickler(buf, protocol=5).dump(obj)
    return buf.getvalue()


class _LightLoader(pickle.Unpickler):
    """Loads the small objects, putting ``leaves[i]`` where leaf ``i`` was set apart."""

    def __init__(self, data: bytes, leaves: list[Any]) -> None:
        super().__init__(io.BytesIO(data))
        self._leaves = leaves

    def find_class(self, module_name: str, global_name: str) -> Any:
        if module_name == __name__ and global_name == "_leaf":
            return self._leaves.__getitem__
        return super().find_class(module_name, global_name)
