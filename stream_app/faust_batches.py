"""Batches that grow with the backlog: Faust's ``Stream.take_events`` with an adaptive wait.

``stream.take_events(n, within=w)`` waits ``w`` for ``n`` events, then yields what it has.
A short ``w`` keeps a slow stream's latency low but, when the consumer is behind, cuts the
backlog into small batches, and every batch pays for a Redis commit, a partition snapshot and
a produce round trip. :func:`take_events_adaptive` is the stock generator (faust-streaming
0.15.3, line for line: the buffering processor, the same cleanup) with two changes:

* its wait: after ``within`` without a full buffer it asks ``backlogged(events)``, and while
  that says the consumer is behind it waits up to ``backlog_within`` in all for the buffer to
  fill. A stream that keeps up is batched exactly as before;
* its acks: a batch's events are acked only when the caller asks for the next batch, that is
  once it has processed this one. Stock Faust also acks them when the generator is closed
  with the caller failed or cancelled mid-batch, so a shutdown during a Redis outage would
  commit the offsets of a batch that was never processed.

On any other Faust version it is the stock ``take_events(max_, within)``, with a warning once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import faust
from mode.utils.futures import notify

log = logging.getLogger(__name__)

#: The faust-streaming version whose ``Stream.take_events`` is copied here.
PINNED_FAUST_VERSION = "0.15.3"

_warned_version = False


def take_events_adaptive(
    stream: Any,
    max_: int,
    within: float,
    backlog_within: float,
    backlogged: Callable[[Sequence[Any]], bool],
) -> AsyncGenerator[Sequence[Any], None]:
    """Like ``stream.take_events(max_, within)``, waiting up to ``backlog_within`` for a full
    batch while ``backlogged(events buffered so far)`` is true."""
    global _warned_version
    if faust.__version__ != PINNED_FAUST_VERSION or backlog_within <= within:
        if faust.__version__ != PINNED_FAUST_VERSION and not _warned_version:
            _warned_version = True
            log.warning(
                "adaptive batches need faust-streaming %s, found %s; batching with a fixed wait",
                PINNED_FAUST_VERSION,
                faust.__version__,
            )
        agen: AsyncGenerator[Sequence[Any], None] = stream.take_events(max_, within=within)
        return agen
    agen = _take_events_adaptive(stream, max_, within, backlog_within, backlogged)
    # As Faust's ``_tracks_buffer_agen`` does for its own buffering generators: the stream
    # closes generators left over when it stops.
    stream._active_agens.add(agen)
    return agen


async def _take_events_adaptive(
    self: Any,
    max_: int,
    within: float,
    backlog_within: float,
    backlogged: Callable[[Sequence[Any]], bool],
) -> AsyncGenerator[Sequence[Any], None]:
    buffer: list[Any] = []
    events: list[Any] = []
    buffer_add = buffer.append
    event_add = events.append
    buffer_size = buffer.__len__
    buffer_full = asyncio.Event()
    buffer_consumed = asyncio.Event()
    timeout = within
    extra = backlog_within - within
    stream_enable_acks: bool = self.enable_acks

    buffer_consuming: asyncio.Future[Any] | None = None

    channel_it = aiter(self.channel)

    async def add_to_buffer(value: Any) -> Any:
        try:
            nonlocal buffer_consuming
            if buffer_consuming is not None:
                try:
                    await buffer_consuming
                finally:
                    buffer_consuming = None
            buffer_add(value)
            event = self.current_event
            if event is None:
                raise RuntimeError("Take buffer found current_event is None")
            event_add(event)
            if buffer_size() >= max_:
                buffer_full.set()
                buffer_consumed.clear()
                await self.wait(buffer_consumed)
        except asyncio.CancelledError:  # pragma: no cover
            raise
        except Exception as exc:
            self.log.exception("Error adding to take buffer: %r", exc)
            await self.crash(exc)
        return value

    self.enable_acks = False

    self.add_processor(add_to_buffer)
    self._enable_passive(channel_it)
    try:
        while not self.should_stop:
            await self.wait_for_stopped(buffer_full, timeout=timeout)
            # The first change: a consumer that is behind waits longer for a full batch.
            if buffer and not buffer_full.is_set() and not self.should_stop and backlogged(events):
                await self.wait_for_stopped(buffer_full, timeout=extra)
            if buffer:
                buffer_consuming = self.loop.create_future()
                # The second change: acks only once the caller asks for the next batch. Stock
                # Faust acks in the ``finally`` below also when the generator is closed
                # because the caller failed or was cancelled mid-batch (a shutdown during an
                # outage), and the offsets of a batch never processed would be committed.
                processed = False
                try:
                    yield list(events)
                    processed = True
                finally:
                    buffer.clear()
                    if processed:
                        for event in events:
                            await self.ack(event)
                    events.clear()
                    notify(buffer_consuming)
                    buffer_full.clear()
                    buffer_consumed.set()
    finally:
        self.enable_acks = stream_enable_acks
        self._processors.remove(add_to_buffer)


def lag_exceeds(consumer: Any, events: Sequence[Any], limit: int) -> bool:
    """Whether, for some partition of ``events``, more than ``limit`` records follow the
    last buffered one in the log (the consumer's high-water mark; unknown counts as not)."""
    last: dict[Any, int] = {}
    for event in events:
        message = event.message
        last[message.tp] = message.offset
    for tp, offset in last.items():
        highwater = consumer.highwater(tp)
        if highwater is not None and int(highwater) - offset - 1 > limit:
            return True
    return False
