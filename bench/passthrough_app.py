"""A bare Faust pass-through agent: the ceiling the full pipeline is compared with.

It reads the events topic with the same broker settings as the service's worker (see
:mod:`bench.agent_app`; uvloop) and the same batching
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

import os
from typing import Any

from bench.agent_app import bench_app, run_app
from stream_app.faust_fastpath import install_fast_drain

TAKE = int(os.environ.get("BENCH_TAKE", "1000"))
WITHIN = float(os.environ.get("BENCH_WITHIN", "0.05"))
FAST_DRAIN = os.environ.get("BENCH_FAST_DRAIN", "") == "1"

app, events, stats = bench_app("bench-passthrough", 6067)
stats.extra["fast_drain"] = install_fast_drain(app) if FAST_DRAIN else False


@app.agent(events, name="passthrough")
async def passthrough(stream: Any) -> None:
    """Count records, batch by batch, and note when."""
    async for batch in stream.take_events(TAKE, within=WITHIN):
        stats.add(len(batch))


def main() -> None:
    """Run the worker on uvloop."""
    run_app(app, "passthrough")


if __name__ == "__main__":
    main()
