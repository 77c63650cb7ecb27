"""The fast message drain (:mod:`stream_app.faust_fastpath`) against real asyncio.

The drain under test is the real replacement method, run on a small stand-in consumer (the
attributes ``Consumer._drain_messages`` touches, on a real :class:`mode.Service`) with a
stand-in of the conductor's ``on_message`` (flow control, then a bounded queue). Where the
stock method has a defined outcome, it runs on the same stand-in and the two must agree.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import types
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import faust
import pytest
from faust.transport.consumer import Consumer, Fetcher
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mode import Service

from stream_app import faust_fastpath
from stream_app.faust_fastpath import (
    bind_fast_drain,
    fast_drain_messages,
    install_fast_drain,
    is_fast_drain,
    resume,
)

TP = ("t", 0)


class Msg:
    """A fetched record: what the drain and the callback read of it."""

    def __init__(self, offset: int, tp: tuple[str, int] = TP) -> None:
        self.tp = tp
        self.topic = tp[0]
        self.offset = offset
        self.key = None
        self.value = offset


class FakeConsumer(Service):
    """What ``Consumer._drain_messages`` touches, nothing more."""

    consumer_stopped_errors: tuple[type[BaseException], ...] = ()

    def __init__(
        self,
        callback: Callable[[Any], Awaitable[Any]],
        batches: Iterable[list[Msg]] = (),
        stop_when_empty: bool = True,
    ) -> None:
        super().__init__()
        self.callback = callback
        self.batches = [list(b) for b in batches]
        self.stop_when_empty = stop_when_empty
        self._read_offset: dict[Any, int | None] = defaultdict(lambda: None)
        self._commit_every = None
        self._n_acked = 0
        self.suspend_flow = asyncio.Event()
        self.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: False))
        self.transport = SimpleNamespace(app=SimpleNamespace(should_stop=False))
        self.fetcher = Service()

    def stop_flow(self) -> None:
        self.suspend_flow.set()

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[Any, Msg]]:
        if self.batches:
            for message in self.batches.pop(0):
                yield message.tp, message
        elif self.stop_when_empty:
            self.fetcher._stopped.set()
        else:
            await asyncio.sleep(0.005)

    async def commit(self) -> bool:
        return True


def batches(n: int, size: int = 7) -> list[list[Msg]]:
    return [[Msg(i) for i in range(j, min(j + size, n))] for j in range(0, n, size)]


def stock(consumer: FakeConsumer) -> Coroutine[Any, Any, None]:
    return Consumer._drain_messages(consumer, consumer.fetcher)  # type: ignore[arg-type]


def fast(consumer: FakeConsumer) -> Coroutine[Any, Any, None]:
    return fast_drain_messages(consumer, consumer.fetcher)


DRAINS = pytest.mark.parametrize("drain", [stock, fast], ids=["stock", "fast"])


class Stream:
    """A stand-in of the conductor's ``on_message``: wait for flow control, then put the
    offset on a bounded queue (the agent's stream buffer); it notes what happened."""

    def __init__(self, maxsize: int = 0) -> None:
        self.flow = asyncio.Event()
        self.flow.set()
        self.queue: asyncio.Queue[int] = asyncio.Queue(maxsize)
        self.started: list[int] = []
        self.delivered: list[int] = []
        self.cancelled: list[int] = []
        self.finished: list[int] = []

    async def on_message(self, message: Msg) -> None:
        self.started.append(message.offset)
        try:
            await self.flow.wait()
            await self.queue.put(message.offset)
            self.delivered.append(message.offset)
        except asyncio.CancelledError:
            self.cancelled.append(message.offset)
            raise
        finally:
            self.finished.append(message.offset)


class TaskCount:
    """Names the coroutine of every task the loop creates."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[Any]:
        self.names.append(getattr(coro, "__qualname__", repr(coro)))
        return asyncio.Task(coro, loop=loop, context=context)

    def of(self, *names: str) -> int:
        return sum(1 for n in self.names if n in names)


T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` with a time limit: a drain that hangs fails the test."""

    async def limited() -> T:
        async with asyncio.timeout(30):
            return await main

    return asyncio.run(limited())


async def turns(n: int = 10) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0)


# -- (a) callbacks that finish in one step: no task ------------------------------------------


def test_callbacks_that_finish_at_once_create_no_task() -> None:
    async def go() -> tuple[TaskCount, Stream]:
        count = TaskCount()
        asyncio.get_running_loop().set_task_factory(count)
        stream = Stream()
        await fast(FakeConsumer(stream.on_message, batches(500)))
        return count, stream

    count, stream = run(go())
    assert stream.delivered == list(range(500))
    assert stream.queue.qsize() == 500
    assert count.of("Stream.on_message", "_Resumption.run") == 0
    # what is left are the drain's own per-fetch sleeps, not per message
    assert len(count.names) < 500 // 7 + 5, count.names[:10]


def test_the_stock_drain_makes_tasks_per_message() -> None:
    """The contrast the fast path is for (same stand-in)."""

    async def go() -> TaskCount:
        count = TaskCount()
        asyncio.get_running_loop().set_task_factory(count)
        await stock(FakeConsumer(Stream().on_message, batches(100)))
        return count

    count = run(go())
    assert count.of("Stream.on_message") == 100
    assert len(count.names) >= 4 * 100


# -- (b) callbacks that wait, then finish -----------------------------------------------------


@DRAINS
def test_waiting_callbacks_deliver_once_and_in_order(drain: Any) -> None:
    async def go() -> tuple[Stream, list[int], TaskCount]:
        count = TaskCount()
        asyncio.get_running_loop().set_task_factory(count)
        stream = Stream(maxsize=3)
        read: list[int] = []

        async def agent() -> None:
            while True:
                read.append(await stream.queue.get())
                await asyncio.sleep(0.0005 if len(read) % 5 else 0.003)

        reader = asyncio.ensure_future(agent())
        await drain(FakeConsumer(stream.on_message, batches(120)))
        await until(lambda: len(read) == 120)
        reader.cancel()
        return stream, read, count

    stream, read, count = run(go())
    assert read == list(range(120))
    assert stream.delivered == stream.started == stream.finished == list(range(120))
    assert stream.cancelled == []
    if drain is fast:
        resumed = count.of("_Resumption.run")
        assert 0 < resumed < 120  # some waited for room, the others went straight in


def test_a_callback_waiting_on_a_future_holds_back_later_messages() -> None:
    async def go() -> tuple[list[str], list[int]]:
        loop = asyncio.get_running_loop()
        order: list[str] = []
        gates = {3: loop.create_future(), 4: loop.create_future()}
        seen: list[int] = []

        async def on_message(message: Msg) -> None:
            seen.append(message.offset)
            gate = gates.get(message.offset)
            if gate is not None:
                order.append(f"wait {message.offset}")
                order.append(f"got {await gate}")
            order.append(f"done {message.offset}")

        drain = asyncio.ensure_future(fast(FakeConsumer(on_message, batches(7, size=10))))
        await until(lambda: seen == [0, 1, 2, 3])
        await turns()
        assert seen == [0, 1, 2, 3]  # 4 waits for 3
        gates[3].set_result("three")
        await until(lambda: seen[-1] == 4)
        await turns()
        assert seen == [0, 1, 2, 3, 4]
        gates[4].set_result("four")
        await drain
        return order, seen

    order, seen = run(go())
    assert seen == list(range(7))
    assert order == [
        "done 0",
        "done 1",
        "done 2",
        "wait 3",
        "got three",
        "done 3",
        "wait 4",
        "got four",
        "done 4",
        "done 5",
        "done 6",
    ]


# -- (c) a rebalance while a callback waits ---------------------------------------------------


@DRAINS
def test_a_callback_waiting_when_the_flow_stops_is_cancelled_and_never_delivered(
    drain: Any,
) -> None:
    async def go() -> tuple[Stream, list[int]]:
        stream = Stream(maxsize=1)
        consumer = FakeConsumer(stream.on_message, batches(6, size=10))
        task = asyncio.ensure_future(drain(consumer))
        await until(lambda: stream.started == [0, 1])
        await turns()
        assert stream.finished == [0]  # 1 waits for room in the queue
        # a rebalance: Faust's app stops the flow, suspends flow control, clears the buffers
        consumer.stop_flow()
        stream.flow.clear()
        await task
        # the partitions moved; then the old buffer is read and flow control opens again
        read = [stream.queue.get_nowait()]
        stream.flow.set()
        await turns(20)
        assert stream.queue.empty()
        return stream, read

    stream, read = run(go())
    assert read == [0]
    assert stream.delivered == [0]
    assert stream.cancelled == [1, 2, 3, 4, 5]
    assert sorted(stream.finished) == stream.started == list(range(6))


def test_a_callback_that_swallows_its_cancellation_is_closed_not_resumed() -> None:
    async def go() -> list[str]:
        loop = asyncio.get_running_loop()
        events: list[str] = []
        gate, later = loop.create_future(), loop.create_future()

        async def on_message(message: Msg) -> None:
            try:
                await gate
            except asyncio.CancelledError:
                events.append("cancelled")
            try:
                await later
                events.append("resumed")
            except GeneratorExit:
                events.append("closed")
                raise

        consumer = FakeConsumer(on_message, [[Msg(0)]])
        task = asyncio.ensure_future(fast(consumer))
        await turns()
        consumer.stop_flow()
        await task
        await turns()
        later.set_result(None)
        await turns()
        return events

    assert run(go()) == ["cancelled", "closed"]


# -- (d) a callback that raises ---------------------------------------------------------------


@DRAINS
@pytest.mark.parametrize("waits_first", [False, True], ids=["at-once", "after-waiting"])
def test_an_error_in_a_callback_leaves_the_drain(
    drain: Any, waits_first: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> list[int]:
        seen: list[int] = []

        async def on_message(message: Msg) -> None:
            seen.append(message.offset)
            if message.offset == 3:
                if waits_first:
                    await asyncio.sleep(0.001)
                raise ValueError("bad record 3")

        with pytest.raises(ValueError, match="bad record 3"):
            await drain(FakeConsumer(on_message, batches(10)))
        return seen

    with caplog.at_level(logging.ERROR):
        assert run(go()) == [0, 1, 2, 3]
    assert "Drain messages raised" in caplog.text


# -- (e) a bare yield -------------------------------------------------------------------------


@DRAINS
def test_callbacks_with_a_bare_yield_run_in_order_and_let_others_run(drain: Any) -> None:
    async def go() -> list[str]:
        log: list[str] = []

        async def other() -> None:
            while True:
                log.append("other")
                await asyncio.sleep(0)

        async def on_message(message: Msg) -> None:
            log.append(f"start {message.offset}")
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            log.append(f"end {message.offset}")

        ticker = asyncio.ensure_future(other())
        await drain(FakeConsumer(on_message, batches(5)))
        ticker.cancel()
        return log

    log = run(go())
    mine = [e for e in log if e != "other"]
    assert mine == [f"{w} {i}" for i in range(5) for w in ("start", "end")]
    first, last = log.index("start 0"), log.index("end 0")
    assert "other" in log[first:last]


# -- (f) the drain task is cancelled while a callback waits -----------------------------------


@DRAINS
@pytest.mark.parametrize("app_stopping", [False, True])
def test_cancelling_the_drain_cancels_the_waiting_callback(drain: Any, app_stopping: bool) -> None:
    async def go() -> tuple[Stream, bool]:
        stream = Stream(maxsize=1)
        consumer = FakeConsumer(stream.on_message, batches(5, size=10))
        consumer.transport.app.should_stop = app_stopping
        task = asyncio.ensure_future(drain(consumer))
        await until(lambda: stream.started == [0, 1])
        await turns()
        task.cancel()
        if app_stopping:
            await task  # the drain returns quietly when the app is stopping
        else:
            with pytest.raises(asyncio.CancelledError):
                await task
        await turns()
        stream.queue.get_nowait()
        await turns()
        return stream, stream.queue.empty()

    stream, empty = run(go())
    assert empty
    assert stream.delivered == [0]
    assert stream.cancelled == [1]
    assert stream.finished == [0, 1]


# -- the task that continues a started callback -----------------------------------------------


def started(coro: Coroutine[Any, Any, Any]) -> Any:
    """Drive ``coro`` one step, as the drain does; what it yielded."""
    return coro.send(None)


def test_resume_continues_the_coroutine_to_its_result() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()

        async def callback() -> int:
            return (await fut) * 2

        coro = callback()
        yielded = started(coro)
        assert yielded is fut and fut._asyncio_future_blocking
        task = resume(loop, coro, yielded, contextvars.copy_context())
        await turns(2)
        assert not fut._asyncio_future_blocking  # the task took it over
        fut.set_result(21)
        assert await task == 42

    run(go())


def test_resume_throws_the_futures_exception_in_where_the_coroutine_waits() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()

        async def callback() -> str:
            try:
                await fut
            except KeyError as exc:
                return f"caught {exc}"
            return "no"

        coro = callback()
        task = resume(loop, coro, started(coro), contextvars.copy_context())
        loop.call_soon(fut.set_exception, KeyError("k"))
        assert await task == "caught 'k'"

    run(go())


def test_resume_cancelled_before_its_first_step_still_cancels_the_callback() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        events: list[str] = []

        async def callback() -> None:
            try:
                await fut
            except asyncio.CancelledError:
                events.append("cancelled")
                raise
            finally:
                events.append("finally")

        coro = callback()
        task = resume(loop, coro, started(coro), contextvars.copy_context())
        task.cancel()  # before the loop ever ran it
        with pytest.raises(asyncio.CancelledError):
            await task
        await turns()
        assert events == ["cancelled", "finally"]
        assert fut.cancelled()
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED

    run(go())


@pytest.mark.parametrize("swallows", ["and-returns", "and-waits-again"])
def test_a_cancelled_resume_ends_the_coroutine(swallows: str) -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        again: asyncio.Future[None] = loop.create_future()
        events: list[str] = []

        async def callback() -> str:
            try:
                await fut
            except asyncio.CancelledError:
                events.append("cancelled")
            if swallows == "and-waits-again":
                try:
                    await again
                except GeneratorExit:
                    events.append("closed")
                    raise
            return "returned"

        coro = callback()
        task = resume(loop, coro, started(coro), contextvars.copy_context())
        await turns(2)
        task.cancel()
        await turns(2)
        assert fut.cancelled()
        if swallows == "and-returns":
            assert await task == "returned"  # as an asyncio task would
            assert events == ["cancelled"]
        else:
            assert task.cancelled()
            assert events == ["cancelled", "closed"]
            again.set_result(None)
            await turns()
            assert events == ["cancelled", "closed"]
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED

    run(go())


def test_a_future_cancelled_by_someone_else_is_handled_as_in_a_task() -> None:
    """Only cancelling the resume task abandons the callback; a cancelled inner future is the
    callback's business, exactly as when it runs in a task of its own."""

    async def outcome(in_own_task: bool) -> list[str]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        again: asyncio.Future[str] = loop.create_future()
        events: list[str] = []

        async def callback() -> None:
            try:
                await fut
            except asyncio.CancelledError:
                events.append("inner cancelled")
            events.append(await again)

        coro = callback()
        if in_own_task:
            task = asyncio.ensure_future(coro)
            await turns(1)
        else:
            task = resume(loop, coro, started(coro), contextvars.copy_context())
        await turns(2)
        fut.cancel()
        await turns(2)
        again.set_result("went on")
        await task
        return events

    async def go() -> None:
        assert await outcome(False) == await outcome(True) == ["inner cancelled", "went on"]

    run(go())


def test_a_bad_yield_gets_the_same_error_as_in_a_task() -> None:
    @types.coroutine
    def bad() -> Generator[Any, None, None]:
        yield "not a future"

    async def outcome(in_own_task: bool) -> str:
        async def callback() -> str:
            try:
                await bad()
            except RuntimeError as exc:
                return str(exc)
            return "no error"

        coro = callback()
        if in_own_task:
            return await asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        return str(await resume(loop, coro, started(coro), contextvars.copy_context()))

    async def go() -> None:
        own, resumed = await outcome(True), await outcome(False)
        assert "bad yield" in own
        assert resumed == own

    run(go())


def test_context_variables_stay_with_the_callback() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="drain")

    async def go() -> tuple[list[str], str]:
        seen: list[str] = []

        async def on_message(message: Msg) -> None:
            var.set(f"message {message.offset}")
            await asyncio.sleep(0)
            seen.append(var.get())

        await fast(FakeConsumer(on_message, batches(3)))
        return seen, var.get()

    seen, after = run(go())
    assert seen == ["message 0", "message 1", "message 2"]
    assert after == "drain"  # nothing leaked into the drain's own context


# -- any mix of callbacks: the same as the stock drain ----------------------------------------

PLANS = st.lists(st.sampled_from(["now", "yield", "future", "queue"]), min_size=1, max_size=40)


async def run_plans(drain: Any, plans: list[str], batch: int) -> tuple[list[int], list[int]]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[int] = asyncio.Queue(2)
    done: list[int] = []
    read: list[int] = []

    async def agent() -> None:
        while True:
            read.append(await queue.get())
            await asyncio.sleep(0)

    async def on_message(message: Msg) -> None:
        plan = plans[message.offset]
        if plan == "yield":
            await asyncio.sleep(0)
        elif plan == "future":
            fut = loop.create_future()
            loop.call_soon(fut.set_result, None)
            await fut
        elif plan == "queue":
            await queue.put(message.offset)
        done.append(message.offset)

    reader = asyncio.ensure_future(agent())
    await drain(FakeConsumer(on_message, batches(len(plans), size=batch)))
    await until(lambda: len(read) == plans.count("queue"))
    reader.cancel()
    return done, read


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans=PLANS, batch=st.integers(1, 10))
def test_any_mix_of_callbacks_gives_what_the_stock_drain_gives(
    plans: list[str], batch: int
) -> None:
    async def go() -> None:
        expected = await run_plans(stock, plans, batch)
        got = await run_plans(fast, plans, batch)
        assert got == expected
        assert got[0] == list(range(len(plans)))
        assert got[1] == [i for i, p in enumerate(plans) if p == "queue"]

    run(go())


# -- installing it ----------------------------------------------------------------------------


def bare_app(tmp_path: Path) -> faust.App:
    return faust.App(
        f"fastpath-{tmp_path.name}",
        broker="kafka://127.0.0.1:9",
        autodiscover=False,
        datadir=str(tmp_path),
    )


def test_install_binds_on_the_consumer_when_it_is_made(tmp_path: Path) -> None:
    async def go() -> None:
        app, other = bare_app(tmp_path / "a"), bare_app(tmp_path / "b")
        assert install_fast_drain(app)
        assert app._consumer is None  # nothing made early, outside the worker's loop
        assert is_fast_drain(app.consumer)
        assert app.consumer._drain_messages.__self__ is app.consumer  # type: ignore[attr-defined]
        assert not is_fast_drain(other.consumer)  # per app, not a patch of the class
        assert Consumer._drain_messages is not fast_drain_messages

        late = bare_app(tmp_path / "c")
        consumer = late.consumer
        assert install_fast_drain(late)
        assert is_fast_drain(consumer)

    run(go())


def test_another_faust_version_keeps_the_stock_drain_and_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(faust, "__version__", "0.16.0")
    monkeypatch.setattr(faust_fastpath, "_warned_version", False)

    async def go() -> None:
        apps = [bare_app(tmp_path / "a"), bare_app(tmp_path / "b")]
        with caplog.at_level(logging.WARNING, logger="stream_app.faust_fastpath"):
            assert [install_fast_drain(app) for app in apps] == [False, False]
        assert not any(is_fast_drain(app.consumer) for app in apps)

    run(go())
    warnings = [r for r in caplog.records if r.name == "stream_app.faust_fastpath"]
    assert len(warnings) == 1
    assert "0.16.0" in warnings[0].getMessage()


def test_faust_fetcher_uses_the_bound_drain_across_restarts() -> None:
    """Faust's own Fetcher, stopped and started again as on a rebalance: every run drains
    with the method bound on the consumer."""

    async def go() -> None:
        count = TaskCount()
        asyncio.get_running_loop().set_task_factory(count)
        stream = Stream()
        consumer = FakeConsumer(stream.on_message, stop_when_empty=False)
        bind_fast_drain(consumer)
        app = SimpleNamespace(consumer=consumer, rebalancing=False)
        fetcher = Fetcher(app)  # type: ignore[arg-type]
        for run in range(3):
            consumer.batches.append([Msg(run * 10 + i) for i in range(10)])
            await fetcher.start()
            await until(lambda run=run: len(stream.delivered) == (run + 1) * 10)  # type: ignore[misc]
            await fetcher.stop()
            fetcher.service_reset()
        assert stream.delivered == list(range(30))
        assert count.of("Service._execute_task") == 3  # the fetcher's task, once per start
        # the stock drain would have made a task per message
        assert count.of("Stream.on_message") == 0
        assert is_fast_drain(consumer)

    run(go())
