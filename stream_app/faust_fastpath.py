"""A cheaper hand-off from Faust's fetch loop to its topic conductor (faust-streaming 0.15.3).

Stock ``Consumer._drain_messages`` passes every fetched message on with
``await self.wait_first(callback(message), self.suspend_flow.wait())``: four tasks, an
``asyncio.wait`` and three cancellations per message, which is most of what a bare Faust
agent spends per message. The callback (the conductor's ``on_message``) almost always
finishes without waiting: the stream queue has room, flow control is open, the producer
buffer is low. :func:`fast_drain_messages` is the stock method with that one call changed:

* when ``suspend_flow`` is set (a rebalance is under way), exactly the stock call;
* otherwise the callback coroutine is created and driven one step right here, in the
  context copy a task would have run it in. If it finishes, that was all: no task at all;
* if it waits (it yielded a future, or ``None`` for a bare yield), the already started
  coroutine goes on in a task (:func:`resume`) that continues it as an asyncio task would,
  and the fetch loop waits for that task with the stock semantics,
  ``await self.wait_first(task, self.suspend_flow.wait())``: when ``consumer.stop_flow()``
  sets ``suspend_flow`` first, the task is cancelled, which cancels the future the callback
  waits for and throws ``CancelledError`` into it; a callback that swallows that is closed.
  Either way it is abandoned, never delivered after the partitions moved.

Read offsets, gaps, ``commit_every``, the ``sleep(0)`` every 100 messages, the ``except``
clauses and the ``finally`` are the stock method's, line for line.

One difference stays: the callback's first step runs inside the fetch task, so
``asyncio.current_task()`` there is the fetch task rather than a task of its own. The
conductor's ``on_message`` does not look (it takes a lock, waits for flow control and the
producer buffer, decodes and puts on queues); a callback that captures the current task in
its first step, as ``asyncio.timeout()`` or a ``TaskGroup`` do, needs the stock method.

:func:`install_fast_drain` binds the method on one app's consumer, for faust-streaming
0.15.3 only (the method is a copy of that version's); any other version keeps the stock
method and logs a warning once.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import types
from collections.abc import AsyncIterator, Coroutine, Generator
from contextvars import Context, copy_context
from typing import Any, cast

import faust
from faust.transport.consumer import CONSUMER_FETCHING

log = logging.getLogger(__name__)

#: The faust-streaming version whose ``Consumer._drain_messages`` is copied here.
PINNED_FAUST_VERSION = "0.15.3"

_warned_version = False


@types.coroutine
def _wait_like_a_task(yielded: Any) -> Generator[Any, None, None]:
    """Yield what the callback yielded to the task running us.

    That task then does what the callback's own task would have done with it: for a future,
    clear ``_asyncio_future_blocking``, wait for it, and resume us (throwing in its exception,
    or ``CancelledError`` when the task is cancelled, after cancelling the future); for
    ``None``, give the loop one turn; for anything else, throw in the same ``RuntimeError``.
    """
    yield yielded


class _Resumption:
    """A callback coroutine that has been driven one step and waits for ``yielded``."""

    __slots__ = ("coro", "started", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self.coro = coro
        self.yielded = yielded
        self.started = False

    async def run(self) -> Any:
        self.started = True
        coro, task = self.coro, asyncio.current_task()
        yielded = self.yielded
        while True:
            try:
                await _wait_like_a_task(yielded)
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                # This task was cancelled, the awaited future failed or was cancelled, or the
                # task rejected the yield: the callback sees it where it waits.
                we_are_cancelled = (
                    isinstance(exc, asyncio.CancelledError)
                    and task is not None
                    and task.cancelling() > 0
                )
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                if we_are_cancelled:
                    coro.close()  # it swallowed its cancellation: it is not resumed again
                    raise
                continue
            try:
                yielded = coro.send(None)
            except StopIteration as stop:
                return stop.value

    def on_done(self, task: asyncio.Task[Any]) -> None:
        """A task cancelled before its first step never ran :meth:`run`: cancel the
        callback here, as :meth:`run` would have."""
        if not self.started:
            abandon(self.coro, self.yielded)


def abandon(coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
    """Cancel a started coroutine that waits for ``yielded`` as a cancelled task would:
    cancel the future, throw ``CancelledError`` in; close it if it goes on waiting."""
    cancel = getattr(yielded, "cancel", None)
    if cancel is not None:
        cancel()
    try:
        coro.throw(asyncio.CancelledError())
    except (StopIteration, asyncio.CancelledError):
        return
    coro.close()


def resume(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, Any],
    yielded: Any,
    context: Context,
) -> asyncio.Task[Any]:
    """A task that continues ``coro`` (driven one step, it yielded ``yielded``) in
    ``context``, as the task ``coro`` would have had from the start."""
    resumption = _Resumption(coro, yielded)
    task = loop.create_task(resumption.run(), context=context)
    task.add_done_callback(resumption.on_done, context=context)
    return task


async def fast_drain_messages(self: Any, fetcher: Any) -> None:
    """``Consumer._drain_messages`` of faust-streaming 0.15.3 with the per-message
    ``wait_first`` replaced by the fast path described in the module docstring.

    Bound on a consumer instance by :func:`install_fast_drain` (``self`` is the consumer).
    """
    callback = self.callback
    if not inspect.iscoroutinefunction(callback):
        # The fast path needs a coroutine to drive; anything else gets the stock method.
        await type(self)._drain_messages(self, fetcher)
        return
    # This is the background thread started by Fetcher, used to
    # constantly read messages using Consumer.getmany.
    # It takes Fetcher as argument, because we must be able to
    # stop it using `await Fetcher.stop()`.
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set

    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    flag_consumer_fetching = CONSUMER_FETCHING
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    # The fast path's locals.
    suspend_flow = self.suspend_flow
    flow_suspended = suspend_flow.is_set
    loop = self.loop

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(flag_consumer_fetching)
            ait = cast(AsyncIterator[Any], getmany(timeout=1.0))

            # Sleeping because sometimes getmany is called in a loop
            # never releasing to the event loop
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0

                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        # We have a gap in income messages
                        if gap > 1 and r_offset:
                            acks_enabled = acks_enabled_for(message.topic)
                            if acks_enabled:
                                await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None:  # noqa: SIM102 (as in Faust)
                            if self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                        # -- the one change: stock is always the first branch --
                        if flow_suspended():
                            await self.wait_first(callback(message), suspend_flow.wait())
                        else:
                            coro = callback(message)
                            context = copy_context()
                            try:
                                yielded = context.run(coro.send, None)
                            except StopIteration:
                                pass
                            else:
                                await self.wait_first(
                                    resume(loop, coro, yielded, context), suspend_flow.wait()
                                )
                        # -- end of the change --
                        set_read_offset(tp, offset)
                    else:
                        self.log.dev(
                            "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                            offset,
                            message.key,
                            message.value,
                        )
                unset_flag(flag_consumer_fetching)

    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(flag_consumer_fetching)


def bind_fast_drain(consumer: Any) -> None:
    """Make ``consumer`` drain with :func:`fast_drain_messages` (this instance only)."""
    consumer._drain_messages = types.MethodType(fast_drain_messages, consumer)
    log.info("Faust consumer drains messages with the fast path")


def install_fast_drain(app: faust.App) -> bool:
    """Give ``app``'s consumer the fast drain; False (and a warning, once) on another Faust.

    The Fetcher service looks ``app.consumer._drain_messages`` up each time it starts,
    and it is stopped and started again on every rebalance while the consumer object stays,
    so a method bound on the consumer instance serves every fetcher run. The consumer is
    created lazily, inside the worker's event loop, so when it does not exist yet the app's
    factory for it is wrapped (on this app instance) to bind the method as it is made.
    """
    global _warned_version
    if faust.__version__ != PINNED_FAUST_VERSION:
        if not _warned_version:
            _warned_version = True
            log.warning(
                "Faust %s is not %s: the fast message drain is off, Faust's own is used",
                faust.__version__,
                PINNED_FAUST_VERSION,
            )
        return False
    target: Any = app
    if target._consumer is not None:
        bind_fast_drain(target._consumer)
        return True
    new_consumer = target._new_consumer

    def _new_consumer() -> Any:
        consumer = new_consumer()
        bind_fast_drain(consumer)
        return consumer

    target._new_consumer = _new_consumer
    return True


def is_fast_drain(consumer: Any) -> bool:
    """True when ``consumer`` drains with :func:`fast_drain_messages`."""
    method = getattr(consumer, "_drain_messages", None)
    return getattr(method, "__func__", None) is fast_drain_messages
