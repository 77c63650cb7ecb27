"""Delayed labels, the prior, the scorer's switch and its checkpoints."""

from __future__ import annotations

import pickle
import random
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.model.labels import DAY, ChurnConfig, LabelBook, LabelConfig
from stream_app.model.learner import ChurnScorer, ScorerConfig, Switch
from stream_app.model.prior import Prior
from stream_app.model.quantiles import RankSketch

H = 14.0


def _book(**kw: float) -> LabelBook:
    return LabelBook(LabelConfig(churn=ChurnConfig(horizon_days=H), **kw))  # type: ignore[arg-type]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["score", "act", "mature"]),
            st.sampled_from(["a", "b", "c"]),
            st.floats(0, 60),
        ),
        max_size=60,
    )
)
def test_label_never_before_horizon(ops: list[tuple[str, str, float]]) -> None:
    book = _book()
    scored: dict[int, tuple[str, float]] = {}
    acts: list[tuple[str, float]] = []
    clock = 0.0
    for op, user, day in sorted(ops, key=lambda o: o[2]):
        t = day * DAY
        clock = max(clock, t)
        if op == "score":
            if book.on_score(user, t, {"id": float(len(scored))}):
                scored[len(scored)] = (user, t)
        elif op == "act":
            book.on_activity(user, t)
            acts.append((user, t))
        else:
            for x, churned in book.mature(clock):
                user_s, t_s = scored[int(x["id"])]
                assert t_s + H * DAY <= clock
                back = any(u == user_s and t_s < ta <= t_s + H * DAY for u, ta in acts)
                assert churned is not back


def test_label_book_bounds_sampling_and_roundtrip() -> None:
    book = _book(sample_rate=0.5, max_pending=50)
    for i in range(400):
        book.on_score(f"u{i % 40}", (i // 40) * DAY, {"v": float(i)})
    assert book.pending <= 50 and book.dropped > 0
    again = _book(sample_rate=0.5, max_pending=50)
    for i in range(400):
        again.on_score(f"u{i % 40}", (i // 40) * DAY, {"v": float(i)})
    assert again.to_bytes() == book.to_bytes()
    restored = LabelBook.from_bytes(book.to_bytes())
    assert restored.mature(1e9) == book.mature(1e9)


def test_prior_reasons_explain_the_score() -> None:
    p, reasons = Prior().score({"recency_log": 3.0, "activity_trend": 1.0})
    assert p > 0.8
    assert [r[0] for r in reasons] == ["recency_log", "activity_trend"]
    assert reasons[0][2] == 3.0


def _stream(n: int, seed: int) -> list[tuple[dict[str, float], bool]]:
    """Churn driven by ``signal``; the prior only sees noise in ``recency_log``."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        signal = rng.gauss(0.0, 1.0)
        x = {"signal": signal, "recency_log": rng.uniform(0.0, 3.0)}
        out.append((x, rng.random() < 1.0 / (1.0 + 2.718 ** (-3.0 * signal))))
    return out


def test_switch_only_when_model_beats_prior() -> None:
    seen: list[Switch] = []
    scorer = ChurnScorer(ScorerConfig(min_labels=300, learning_rate=0.05), on_switch=seen.append)
    for i, (x, y) in enumerate(_stream(1500, 1)):
        scorer.learn(x, y)
        if i < 299:
            assert scorer.source == "prior"
    assert scorer.source == "model" and len(seen) == scorer.switches >= 1
    assert seen[0].new == "model" and seen[0].quality["model_auc"] > seen[0].quality["prior_auc"]
    assert scorer.score({"signal": 2.0, "recency_log": 0.0}).reasons[0][0] == "signal"


def test_no_switch_when_model_has_nothing_to_learn() -> None:
    rng = random.Random(2)
    scorer = ChurnScorer(ScorerConfig(min_labels=300, margin=0.02))
    for _ in range(1500):
        r = rng.uniform(0.0, 4.0)
        scorer.learn({"recency_log": r, "noise": rng.random()}, rng.random() < r / 4.0)
    assert scorer.source == "prior" and scorer.switches == 0


def test_checkpoint_roundtrip_and_determinism() -> None:
    stream = _stream(1200, 3)
    a, b = ChurnScorer(ScorerConfig(min_labels=200)), ChurnScorer(ScorerConfig(min_labels=200))
    for x, y in stream[:600]:
        a.learn(x, y)
        b.learn(x, y)
        a.score(x)
        b.score(x)
    assert a.to_bytes() == b.to_bytes()
    _assert_continues_alike(ChurnScorer.from_bytes(a.to_bytes()), a, stream[600:])


def _assert_continues_alike(
    restored: ChurnScorer, live: ChurnScorer, rest: list[tuple[dict[str, float], bool]]
) -> None:
    """A restored scorer has the live one's version, scores ``rest`` alike while both learn
    it, and ends with the same checkpoint bytes."""
    assert restored.version == live.version
    for x, y in rest:
        assert restored.score(x) == live.score(x)
        restored.learn(x, y)
        live.learn(x, y)
    assert restored.to_bytes() == live.to_bytes()


def _v2_checkpoint(scorer: ChurnScorer) -> bytes:
    """What ``ChurnScorer.to_bytes`` wrote before version 3: one canonical pickle of the
    learned state, compressed."""
    learned = scorer.__getstate__()
    del learned["ranks"]
    canonical = pickle.dumps(pickle.loads(pickle.dumps(learned, protocol=5)), protocol=5)
    return pickle.dumps(("churn-scorer/2", zlib.compress(canonical, 1), scorer.ranks), protocol=5)


def test_checkpoint_of_the_previous_version_still_loads() -> None:
    stream = _stream(900, 5)
    cfg = ScorerConfig(min_labels=200, quality_window=150)
    live = ChurnScorer(cfg)
    for x, y in stream[:500]:
        live.score(x)
        live.learn(x, y)
    _assert_continues_alike(ChurnScorer.from_bytes(_v2_checkpoint(live)), live, stream[500:])


def test_checkpoint_with_full_quality_windows_restores_exactly() -> None:
    """Windows that filled and rolled over go into the checkpoint packed, apart from the
    canonical pickle; a chain of restores checkpoints to the bytes of the live scorer.

    The scorer never switches here: a switch sets ``source`` to a literal that a live scorer
    shares with its quality's keys and a restored one does not, which changes the string
    sharing in the pickle (not a value; the reliability tests compare checkpoints with string
    sharing undone)."""
    stream = _stream(1500, 6)
    cfg = ScorerConfig(min_labels=10**6, quality_window=120)
    live = ChurnScorer(cfg)
    chain = ChurnScorer(cfg)
    for i, (x, y) in enumerate(stream):
        assert chain.score(x) == live.score(x)
        chain.learn(x, y)
        live.learn(x, y)
        if i % 97 == 0:
            for s in (live, chain):
                s.quality.auc("prior"), s.quality.auc("model")
            data = chain.to_bytes()
            assert data == live.to_bytes()
            chain = ChurnScorer.from_bytes(data)
    _, learned, _ = pickle.loads(live.to_bytes())
    _, leaves = pickle.loads(learned)
    assert sorted(leaf[0] for leaf in leaves) == ["window"] * 2 + ["zpickle"] * 2
    assert live.quality.summary() == chain.quality.summary()


def test_rank_sketch_window_follows_recent_scores() -> None:
    ranks = RankSketch(bins=100, window=100)
    for _ in range(300):
        ranks.update(0.9)
    assert ranks.percentile(0.5) == 0.0
    for _ in range(200):
        ranks.update(0.1)
    assert ranks.percentile(0.5) == 100.0
