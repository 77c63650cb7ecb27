"""What the benchmark's reference agents share (:mod:`bench.passthrough_app`,
:mod:`bench.naive_app`).

Importing this module first chooses uvloop: Faust applies ``--loop`` only when ``faust`` is
first imported, so the loop policy is set before that. :func:`bench_app` makes the Faust
app with the same broker settings as the service's worker (``broker_rebalance_timeout=8``,
``broker_session_timeout=10``, ``broker_heartbeat_interval=1``, raw serialisers, earliest
offsets), the input topic and a ``GET /stats`` page with the counters a benchmark measures
first-to-last event with: ``count``, and as unix seconds when the first counted events and
the latest ones had been handled (``first_at`` with ``first_count`` events, ``last_at``),
plus the event loop that runs.

Configured from the environment (the benchmarks set it)::

    BENCH_BOOTSTRAP=127.0.0.1:19092 BENCH_TOPIC=app.events BENCH_GROUP=passthrough-1 \\
    BENCH_WEB_PORT=6067 BENCH_PARTITIONS=4 python -m bench.passthrough_app

``BENCH_DATADIR`` is where Faust keeps its folder (a temp dir).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import mode.loop

mode.loop.use("uvloop")

import faust  # noqa: E402
from faust.web import Request, Response, View  # noqa: E402

from stream_app.web import event_loop_name  # noqa: E402


@dataclass
class Stats:
    """Events handled so far, and when."""

    count: int = 0
    first_at: float | None = None
    first_count: int | None = None
    last_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, n: int) -> None:
        """Count ``n`` more events handled now."""
        self.count += n
        now = time.time()
        if self.first_at is None:
            self.first_at, self.first_count = now, self.count
        self.last_at = now

    def as_json(self) -> dict[str, Any]:
        """The counters, ``extra`` and the running event loop's class."""
        return {
            **self.extra,
            "count": self.count,
            "first_at": self.first_at,
            "first_count": self.first_count,
            "last_at": self.last_at,
            "event_loop": event_loop_name(),
        }


def bench_app(default_group: str, default_port: int) -> tuple[faust.App, Any, Stats]:
    """The app, its input topic (raw bytes) and its /stats counters, from ``BENCH_*``."""
    bootstrap = os.environ.get("BENCH_BOOTSTRAP", "127.0.0.1:19092")
    group = os.environ.get("BENCH_GROUP", default_group)
    datadir = os.environ.get("BENCH_DATADIR") or tempfile.mkdtemp(prefix=f"{default_group}-")
    os.makedirs(datadir, exist_ok=True)
    app = faust.App(
        group,
        broker=[f"kafka://{s.strip()}" for s in bootstrap.split(",")],
        value_serializer="raw",
        key_serializer="raw",
        web_host="127.0.0.1",
        web_port=int(os.environ.get("BENCH_WEB_PORT", str(default_port))),
        web_bind="127.0.0.1",
        topic_disable_leader=True,
        topic_partitions=int(os.environ.get("BENCH_PARTITIONS", "4")),
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=8,
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        autodiscover=False,
        datadir=datadir,
    )
    topic = app.topic(os.environ.get("BENCH_TOPIC", "app.events"), value_type=bytes, key_type=bytes)
    stats = Stats()

    @app.page("/stats")
    class StatsView(View):
        """The counters as JSON."""

        async def get(self, request: Request) -> Response:
            return self.json(stats.as_json())

    return app, topic, stats


def run_app(app: faust.App, name: str) -> None:
    """Run the app's worker (``worker -l warn``) on uvloop."""
    sys.argv = [sys.argv[0] or name, "worker", "-l", "warn"]
    app.main()
