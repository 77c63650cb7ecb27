"""A bare Faust pass-through agent: the ceiling the full pipeline is compared with.

It reads the events topic with the same broker settings as the service's worker
(``broker_rebalance_timeout=8``, ``broker_session_timeout=10``, ``broker_heartbeat_interval=1``,
raw serialisers, earliest offsets, uvloop) and the same batching
(``stream.take_events(BENCH_TAKE, within=BENCH_WITHIN)``, by default 1000 and 0.05 s; the
throughput benchmark passes the worker's batch size and backlog window), and only counts: no
decoding, no Redis, no output.

``GET /stats`` on its web port returns the count and, as unix seconds, when the first batch
and the latest batch had been counted (``first_at`` with ``first_count`` events, ``last_at``),
so a benchmark measures first-to-last event on the consumer side, as it does for the worker.

Configured from the environment (the benchmarks set it)::

    BENCH_BOOTSTRAP=127.0.0.1:19092 BENCH_TOPIC=app.events BENCH_GROUP=passthrough-1 \\
    BENCH_WEB_PORT=6067 BENCH_PARTITIONS=4 python -m bench.passthrough_app

which is ``python -m faust -A bench.passthrough_app worker`` on uvloop with the log level
and web port filled in. ``BENCH_DATADIR`` is where Faust keeps its folder (a temp dir).

``BENCH_FAST_DRAIN=1`` gives the agent the worker's fast message drain
(:mod:`stream_app.faust_fastpath`, the worker's ``CHURN_FAUST_FAST_DRAIN``); unset or any
other value keeps stock Faust. ``/stats`` says which one ran (``fast_drain``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from typing import Any

import mode.loop

# Faust applies ``--loop`` only when first imported, so the loop policy is set first.
mode.loop.use("uvloop")

import faust  # noqa: E402
from faust.web import Request, Response, View  # noqa: E402

from stream_app.faust_fastpath import install_fast_drain  # noqa: E402

BOOTSTRAP = os.environ.get("BENCH_BOOTSTRAP", "127.0.0.1:19092")
TOPIC = os.environ.get("BENCH_TOPIC", "app.events")
GROUP = os.environ.get("BENCH_GROUP", "bench-passthrough")
WEB_PORT = int(os.environ.get("BENCH_WEB_PORT", "6067"))
PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "4"))
DATADIR = os.environ.get("BENCH_DATADIR") or tempfile.mkdtemp(prefix="passthrough-")
TAKE = int(os.environ.get("BENCH_TAKE", "1000"))
WITHIN = float(os.environ.get("BENCH_WITHIN", "0.05"))
FAST_DRAIN = os.environ.get("BENCH_FAST_DRAIN", "") == "1"
os.makedirs(DATADIR, exist_ok=True)

app = faust.App(
    GROUP,
    broker=[f"kafka://{s.strip()}" for s in BOOTSTRAP.split(",")],
    value_serializer="raw",
    key_serializer="raw",
    web_host="127.0.0.1",
    web_port=WEB_PORT,
    web_bind="127.0.0.1",
    topic_disable_leader=True,
    topic_partitions=PARTITIONS,
    consumer_auto_offset_reset="earliest",
    broker_rebalance_timeout=8,
    broker_session_timeout=10,
    broker_heartbeat_interval=1,
    autodiscover=False,
    datadir=DATADIR,
)
fast_drain = install_fast_drain(app) if FAST_DRAIN else False
events = app.topic(TOPIC, value_type=bytes, key_type=bytes)
stats: dict[str, float | int | None] = {
    "fast_drain": fast_drain,
    "count": 0,
    "first_at": None,
    "first_count": None,
    "last_at": None,
}


@app.agent(events, name="passthrough")
async def passthrough(stream: Any) -> None:
    """Count records, batch by batch, and note when."""
    async for batch in stream.take_events(TAKE, within=WITHIN):
        stats["count"] = int(stats["count"] or 0) + len(batch)
        now = time.time()
        if stats["first_at"] is None:
            stats["first_at"], stats["first_count"] = now, stats["count"]
        stats["last_at"] = now


@app.page("/stats")
class StatsView(View):
    """The counters as JSON."""

    async def get(self, request: Request) -> Response:
        loop = type(asyncio.get_running_loop())
        return self.json({**stats, "event_loop": f"{loop.__module__}.{loop.__qualname__}"})


def main() -> None:
    """Run the worker (``worker -l warn``) on uvloop, chosen at import."""
    sys.argv = [sys.argv[0] or "passthrough", "worker", "-l", "warn"]
    app.main()


if __name__ == "__main__":
    main()
