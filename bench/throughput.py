"""Throughput of the full pipeline in one worker, side by side with a bare Faust pass-through
and the naive Faust pipeline.

Run from a checkout::

    python -m bench.throughput --events 250000

What it does, in one run:

1. starts a private embedded stack (broker and Redis on free loopback ports, files in a temp
   dir) and simulates the social app (``stream-app simulate``'s generator) once into the temp
   dir, with enough users that ``--events`` events fit in ~30 days;
2. replays the first ``--events`` events into a fresh events topic of ``--partitions``
   partitions (as fast as the producer goes), *before* any consumer starts;
3. runs the naive Faust pipeline (``bench/naive_app.py``: stock Faust, per event a decode, one
   Redis ZADD + trim + count round trip, a river prediction and a send) on that pre-filled
   topic in its own consumer group, with its own Redis key prefix and output topic, until it
   has handled every event; stops it. The goal's 3x is against this one;
4. runs a bare Faust pass-through agent (``bench/passthrough_app.py``: same broker settings
   and batching as the worker, only counts) on that pre-filled topic in its own consumer
   group, until it has seen every event; stops it; then the same agent again with the
   worker's Faust fast path (``CHURN_FAUST_FAST_DRAIN``; ``BENCH_FAST_DRAIN=1``) in another
   fresh group. The 0.8x goal's ratio is against stock Faust; the one against the fast-path
   pass-through says what the service's own work costs on top of the Faust it runs on;
5. runs one ``stream-app worker`` (event clock, fresh consumer group and Redis key prefix, so
   it starts from offset 0 with no state) on the same topic until it has committed every
   event; stops it.

``--no-naive`` skips step 3. The consumers run one after the other, never together (the
machine may have two cores). All are measured from the consumer side, "first to last event":
for the worker, the offsets it commits to Redis are polled every ``--poll`` seconds and the
rate is events committed after the first observed progress divided by the time from that
first progress to completion; the pass-through and the naive pipeline report the same (time
and count after their first batch or event, time of their last) on their web port. Consumer
group join and start-up are therefore excluded from all. The CPU seconds the consumer process
used over that span are read from /proc and reported too (events per CPU second is steadier
than events per second on a shared machine).

Prints one JSON object on stdout; progress goes to stderr. Everything started (broker, Redis,
the consumer processes) is stopped by PID on exit, also on failure or Ctrl-C. The helpers here
are shared by ``bench/scaleout.py`` and ``bench/latency.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stream_app import stack  # noqa: E402
from stream_app.settings import Settings, load_settings  # noqa: E402
from stream_app.tools import session  # noqa: E402
from stream_app.tools.replay import run_replay  # noqa: E402
from stream_app.tools.simulate import run_simulate  # noqa: E402

CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    """Progress for the person running the benchmark (stderr, never the JSON)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def terminate_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop what was started."""

    def _raise(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


@contextlib.contextmanager
def bench_stack(work: Path, partitions: int, **overrides: Any) -> Iterator[Settings]:
    """A private broker and Redis on free ports; yields the base settings for the run."""
    settings = session.run_settings(
        load_settings(),
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        embedded_redis="start",
        embedded_run_dir=work / "run",
        partitions=partitions,
        log_level="warning",
        **overrides,
    )
    log(f"starting broker {settings.kafka_bootstrap} and Redis {settings.redis_url}")
    with session.running_stack(settings):
        yield settings


def fresh(settings: Settings, name: str, **overrides: Any) -> Settings:
    """Settings for one consumer run: its own consumer group, Redis prefix and web port."""
    token = f"{name}-{uuid.uuid4().hex[:6]}"
    return session.run_settings(
        settings, app_id=token, key_prefix=f"{token}:", web_port=free_port(), **overrides
    )


def simulate_events(work: Path, events: int, seed: int = 7) -> Path:
    """Simulate the social app once into ``work``: at least ``events`` events in 30 days."""
    path = work / "sim-events.jsonl"
    users = max(100, -(-events // 240))
    log(f"simulating {users} users x 30 days")
    summary = run_simulate(path, work / "sim-truth.csv", users=users, days=30, seed=seed)
    if summary["events"] < events:
        summary = run_simulate(path, work / "sim-truth.csv", users=users * 2, days=30, seed=seed)
    log(f"simulated {summary['events']} events in {summary['seconds']} s")
    return path


def prefilled_topic(
    base: Settings, work: Path, events: int, seed: int
) -> tuple[str, dict[str, Any]]:
    """A fresh events topic holding the first ``events`` simulated events; its name and the
    replay's figures."""
    path = simulate_events(work, events, seed)
    topic = f"bench-{uuid.uuid4().hex[:6]}.app.events"
    return topic, fill_topic(base, path, topic, events)


def fill_topic(settings: Settings, path: Path, topic: str, events: int) -> dict[str, Any]:
    """Create ``topic`` and replay the first ``events`` events of ``path`` into it."""
    stack.create_topics(settings, [topic])
    with open(os.devnull, "w") as quiet:
        summary = run_replay(
            path,
            topic,
            settings.kafka_bootstrap,
            limit=events,
            out=quiet,
            interactive=False,
            settings=settings,
        )
    log(f"topic {topic}: {summary.sent} events produced at {summary.rate:,.0f}/s")
    if summary.sent < events:
        raise RuntimeError(f"only {summary.sent} of {events} events produced")
    return summary.to_dict()


@dataclass
class Proc:
    """A started consumer process and what it serves."""

    pid: int
    url: str
    log_path: Path


@contextlib.contextmanager
def spawn(argv: list[str], env: dict[str, str], url: str, log_path: Path) -> Iterator[Proc]:
    """Start a process, wait until ``url``/health or /stats answers, stop it by PID."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        yield Proc(proc.pid, url, log_path)
    finally:
        stack.stop_pid(proc.pid, timeout=30)


@contextlib.contextmanager
def worker(settings: Settings, log_path: Path) -> Iterator[Proc]:
    """``stream-app worker`` with these settings (a child process, stopped by PID)."""
    env = {**os.environ, **session.settings_env(settings)}
    url = f"http://{settings.web_host}:{settings.web_port}"
    argv = [sys.executable, "-m", "stream_app", "worker"]
    with spawn(argv, env, url, log_path) as proc:
        yield proc


@contextlib.contextmanager
def agent(
    module: str, settings: Settings, topic: str, work: Path, group: str, extra: dict[str, str]
) -> Iterator[Proc]:
    """A benchmark agent (``python -m {module}``, see :mod:`bench.agent_app`) on ``topic`` in
    consumer group ``group``; ``extra`` are more ``BENCH_*`` variables (names without it)."""
    port = free_port()
    env = {
        **os.environ,
        "BENCH_BOOTSTRAP": settings.kafka_bootstrap,
        "BENCH_TOPIC": topic,
        "BENCH_GROUP": group,
        "BENCH_WEB_PORT": str(port),
        "BENCH_PARTITIONS": str(settings.partitions),
        "BENCH_DATADIR": str(work / "faust" / group),
        **{f"BENCH_{name}": value for name, value in extra.items()},
    }
    argv = [sys.executable, "-m", module]
    with spawn(argv, env, f"http://127.0.0.1:{port}", work / f"{group}.log") as proc:
        yield proc


def passthrough(
    settings: Settings, topic: str, work: Path, *, fast_drain: bool = False
) -> contextlib.AbstractContextManager[Proc]:
    """The bare pass-through agent in a fresh group; with ``fast_drain`` it gets the worker's
    Faust fast path too. Batched like the worker under a backlog (a pre-filled topic is)."""
    extra = {
        "FAST_DRAIN": "1" if fast_drain else "0",
        "TAKE": str(settings.batch_size),
        "WITHIN": str(settings.batch_backlog_window_s),
    }
    group = f"passthrough-{uuid.uuid4().hex[:6]}"
    return agent("bench.passthrough_app", settings, topic, work, group, extra)


def naive(
    settings: Settings, topic: str, output_topic: str, work: Path
) -> contextlib.AbstractContextManager[Proc]:
    """The naive Faust pipeline in a fresh group, with its own Redis key prefix on the run's
    Redis and its own ``output_topic`` (created here)."""
    stack.create_topics(settings, [output_topic])
    group = f"naive-{uuid.uuid4().hex[:6]}"
    extra = {
        "REDIS_URL": settings.redis_url,
        "REDIS_PREFIX": f"{group}:",
        "OUTPUT_TOPIC": output_topic,
    }
    return agent("bench.naive_app", settings, topic, work, group, extra)


def topic_records(settings: Settings, topic: str) -> int:
    """How many records ``topic`` holds: the highest offset read + 1, summed over partitions.

    Read rather than asked for: the embedded broker's ListOffsets answers with the base offset
    of a partition's last stored batch, not the offset after its last record, so only the tail
    from there on is read (from one record before it, so a real Kafka's end works too).
    """
    from kafka import KafkaConsumer, TopicPartition

    from stream_app.kafka_clients import kafka_python_config

    consumer = KafkaConsumer(
        **kafka_python_config(settings), enable_auto_commit=False, consumer_timeout_ms=2000
    )
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        for tp, end in consumer.end_offsets(tps).items():
            consumer.seek(tp, max(end - 1, 0))
        last = {tp.partition: -1 for tp in tps}
        for record in consumer:
            last[record.partition] = max(last[record.partition], record.offset)
        return sum(offset + 1 for offset in last.values())
    finally:
        consumer.close()


def get_json(url: str) -> Any:
    """GET a JSON document (None while the server does not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def check_alive(procs: list[Proc]) -> None:
    """Fail with the log tail when a consumer process died."""
    for p in procs:
        try:
            os.kill(p.pid, 0)
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(p.pid, os.WNOHANG)[0] == p.pid:
                    raise ProcessLookupError
        except ProcessLookupError:
            tail = p.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"process {p.pid} exited:\n{tail}") from None


def offsets_reader(settings: Settings, topic: str) -> Callable[[], int]:
    """A cheap reader of how many records of ``topic`` the worker(s) committed to Redis.

    Reads only the ``offset`` field of each partition hash (the same value
    ``session.committed_offsets`` returns, without fetching the partition blob).
    """
    client = redis.Redis.from_url(settings.redis_url)
    keys = [
        f"{settings.key_prefix}p:{{{topic}:{p}}}" for p in session.partitions_of(settings, topic)
    ]

    def done() -> int:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "offset")
        return sum(int(v) + 1 for v in pipe.execute() if v is not None)

    return done


def measure_worker(
    settings: Settings, topic: str, expected: int, procs: list[Proc], poll: float, timeout: float
) -> dict[str, Any]:
    """Poll committed offsets until ``expected``; rate from first progress to completion."""
    read = offsets_reader(settings, topic)
    deadline = time.monotonic() + timeout
    first: tuple[float, int] | None = None
    cpu_first = 0.0
    marks: list[tuple[float, int]] = []
    last_log = time.monotonic()
    while True:
        done, now = read(), time.time()
        if done and first is None:
            first = (now, done)
            cpu_first = sum(cpu_seconds(p.pid) for p in procs)
        if first is not None:
            marks.append((now, done))
        if done >= expected:
            cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu_first
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker committed {done}/{expected} in {timeout:.0f} s")
        if time.monotonic() - last_log > 10:
            check_alive(procs)
            log(f"worker: {done}/{expected} committed")
            last_log = time.monotonic()
        time.sleep(poll)
    assert first is not None
    return rates(first, (now, done), cpu, marks, expected)


def measure_passthrough(
    proc: Proc, expected: int, poll: float, timeout: float, name: str = "pass-through"
) -> dict[str, Any]:
    """Poll the pass-through's (or the naive pipeline's) /stats until it has counted
    ``expected`` records."""
    deadline = time.monotonic() + timeout
    marks: list[tuple[float, int]] = []
    cpu_first: float | None = None
    last_log = time.monotonic()
    while True:
        stats = get_json(f"{proc.url}/stats") or {}
        count = int(stats.get("count") or 0)
        if count and cpu_first is None:
            cpu_first = cpu_seconds(proc.pid)
        if count:
            marks.append((time.time(), count))
        if count >= expected:
            cpu = cpu_seconds(proc.pid) - (cpu_first or 0.0)
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} counted {count}/{expected} in {timeout:.0f} s")
        if time.monotonic() - last_log > 10:
            check_alive([proc])
            log(f"{name}: {count}/{expected} counted")
            last_log = time.monotonic()
        time.sleep(poll)
    first = (float(stats["first_at"]), int(stats["first_count"]))
    result = rates(first, (float(stats["last_at"]), count), cpu, marks, expected)
    result["event_loop"] = stats.get("event_loop")
    return result


def rates(
    first: tuple[float, int],
    last: tuple[float, int],
    cpu: float,
    marks: list[tuple[float, int]],
    expected: int,
) -> dict[str, Any]:
    """Events/s from first progress to the last event, and over the 10-90 % stretch."""
    span = max(last[0] - first[0], 1e-9)
    counted = last[1] - first[1]
    out: dict[str, Any] = {
        "events": last[1],
        "events_after_first_progress": counted,
        "seconds_first_to_last": round(span, 3),
        "events_per_s": round(counted / span, 1),
        "cpu_seconds": round(cpu, 2),
        "events_per_cpu_s": round(counted / cpu, 1) if cpu > 0 else None,
    }
    lo = next((m for m in marks if m[1] >= 0.1 * expected), None)
    hi = next((m for m in marks if m[1] >= 0.9 * expected), None)
    if lo and hi and hi[0] > lo[0]:
        out["events_per_s_10_to_90pct"] = round((hi[1] - lo[1]) / (hi[0] - lo[0]), 1)
    return out


def run_worker_phase(
    settings: Settings,
    topic: str,
    expected: int,
    work: Path,
    *,
    workers: int,
    poll: float,
    timeout: float,
    name: str,
) -> dict[str, Any]:
    """Run ``workers`` worker processes in one fresh consumer group until all is committed."""
    run = fresh(settings, name, topic_events=topic)
    with contextlib.ExitStack() as procs_stack:
        procs: list[Proc] = []
        for i in range(workers):
            s = run if i == 0 else session.run_settings(run, web_port=free_port())
            procs.append(procs_stack.enter_context(worker(s, work / f"{run.app_id}-{i}.log")))
        log(f"{name}: {workers} worker(s) started, group {run.app_id}")
        result = measure_worker(run, topic, expected, procs, poll, timeout)
        health = [get_json(f"{p.url}/health") or {} for p in procs]
    result["partitions_owned_at_end"] = [h.get("partitions") for h in health]
    result["event_loop"] = sorted({str(h.get("event_loop")) for h in health})
    log(f"{name}: {result['events_per_s']:,.0f} events/s")
    return result


def run_passthrough_phase(
    settings: Settings,
    topic: str,
    expected: int,
    work: Path,
    *,
    poll: float,
    timeout: float,
    fast_drain: bool = False,
) -> dict[str, Any]:
    """Run the pass-through agent in a fresh group until it has counted every event."""
    name = "pass-through (fast drain)" if fast_drain else "pass-through"
    with passthrough(settings, topic, work, fast_drain=fast_drain) as proc:
        log(f"{name} started (pid {proc.pid})")
        result = measure_passthrough(proc, expected, poll, timeout)
    log(f"{name}: {result['events_per_s']:,.0f} events/s")
    return result


def run_naive_phase(
    settings: Settings, topic: str, expected: int, work: Path, *, poll: float, timeout: float
) -> dict[str, Any]:
    """Run the naive Faust pipeline in a fresh group until it has handled every event; with
    the number of records its output topic got (counted after it stopped)."""
    output_topic = f"bench-{uuid.uuid4().hex[:6]}.naive.warnings"
    with naive(settings, topic, output_topic, work) as proc:
        log(f"naive pipeline started (pid {proc.pid})")
        result = measure_passthrough(proc, expected, poll, timeout, "naive pipeline")
    result["output_topic_records"] = topic_records(settings, output_topic)
    log(f"naive pipeline: {result['events_per_s']:,.0f} events/s")
    return result


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    """A temp dir for the run (kept with ``--keep`` for the logs)."""
    path = Path(tempfile.mkdtemp(prefix="stream-app-bench-"))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            import shutil

            shutil.rmtree(path, ignore_errors=True)


def common_arguments(parser: argparse.ArgumentParser, events: int) -> None:
    """Options shared by the Kafka benchmarks."""
    parser.add_argument("--events", type=int, default=events, help="events in the topic")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the topic")
    parser.add_argument("--poll", type=float, default=0.05, help="progress poll interval, s")
    parser.add_argument("--timeout", type=float, default=900.0, help="per consumer run, s")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    common_arguments(parser, 250_000)
    parser.add_argument(
        "--no-naive", action="store_true", help="skip the naive Faust pipeline reference"
    )
    args = parser.parse_args()
    terminate_on_sigterm()
    result: dict[str, Any] = {"benchmark": "throughput", "machine": machine()}
    with workdir(args.keep) as work, bench_stack(work, args.partitions, clock="event") as base:
        topic, result["produce"] = prefilled_topic(base, work, args.events, args.seed)
        if not args.no_naive:
            result["naive"] = run_naive_phase(
                base, topic, args.events, work, poll=args.poll, timeout=args.timeout
            )
        result["passthrough"] = run_passthrough_phase(
            base, topic, args.events, work, poll=args.poll, timeout=args.timeout
        )
        result["passthrough_fast_drain"] = run_passthrough_phase(
            base, topic, args.events, work, poll=args.poll, timeout=args.timeout, fast_drain=True
        )
        result["pipeline"] = run_worker_phase(
            base,
            topic,
            args.events,
            work,
            workers=1,
            poll=args.poll,
            timeout=args.timeout,
            name="pipeline",
        )
    ratio = result["pipeline"]["events_per_s"] / result["passthrough"]["events_per_s"]
    cpu_a = result["pipeline"].get("events_per_cpu_s")
    cpu_b = result["passthrough"].get("events_per_cpu_s")
    same = result["pipeline"]["events_per_s"] / result["passthrough_fast_drain"]["events_per_s"]
    naive_order = "" if args.no_naive else "naive pipeline, "
    result.update(
        events=args.events,
        partitions=args.partitions,
        order=f"{naive_order}stock pass-through, fast-drain pass-through, then the worker; "
        "never concurrently; same pre-filled topic",
        ratio_pipeline_to_passthrough=round(ratio, 3),
        ratio_per_cpu_s=round(cpu_a / cpu_b, 3) if cpu_a and cpu_b else None,
        ratio_pipeline_to_fast_drain_passthrough=round(same, 3),
        goal="pipeline >= 0.8x pass-through",
        goal_met=ratio >= 0.8,
    )
    if "naive" in result:
        to_naive = result["pipeline"]["events_per_s"] / result["naive"]["events_per_s"]
        cpu_n = result["naive"].get("events_per_cpu_s")
        result.update(
            ratio_pipeline_to_naive=round(to_naive, 3),
            ratio_pipeline_to_naive_per_cpu_s=round(cpu_a / cpu_n, 3) if cpu_a and cpu_n else None,
            goal_3x_naive="pipeline >= 3x the naive Faust pipeline",
            goal_3x_naive_met=to_naive >= 3,
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
