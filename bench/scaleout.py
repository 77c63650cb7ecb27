"""Scale-out: two workers in one consumer group against one worker, on the same topic.

Run from a checkout::

    python -m bench.scaleout --events 250000

One private embedded stack, one simulated event stream, one events topic of ``--partitions``
(at least 4) partitions filled *before* any consumer starts. Then, one after the other:

1. one ``stream-app worker`` in a fresh consumer group (and fresh Redis key prefix) consumes
   the whole topic;
2. two ``stream-app worker`` processes sharing another fresh consumer group (and prefix)
   consume it again; they are started together, so the group's first rebalance(s) happen
   while the topic is being consumed and are part of the measured time.

Each run is measured as in ``bench/throughput.py``: committed offsets in Redis are polled and
the rate is taken from the first observed progress to the last committed event; the rate over
the 10-90 % stretch (after start-up and rebalancing) is reported as well, with the partitions
each worker owned at the end. The ratio is two-worker events/s over one-worker events/s. On a
2-core machine two workers compete with the broker and Redis for the same cores, so a ratio
well below 2 says as much about the machine as about the service.

Prints one JSON object on stdout; everything started is stopped by PID on exit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throughput import (
    bench_stack,
    common_arguments,
    machine,
    prefilled_topic,
    run_worker_phase,
    terminate_on_sigterm,
    workdir,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    common_arguments(parser, 250_000)
    args = parser.parse_args()
    if args.partitions < 4:
        parser.error("--partitions must be at least 4")
    terminate_on_sigterm()
    result: dict[str, Any] = {"benchmark": "scaleout", "machine": machine()}
    with workdir(args.keep) as work, bench_stack(work, args.partitions, clock="event") as base:
        topic, result["produce"] = prefilled_topic(base, work, args.events, args.seed)
        for workers, name in ((1, "one_worker"), (2, "two_workers")):
            result[name] = run_worker_phase(
                base,
                topic,
                args.events,
                work,
                workers=workers,
                poll=args.poll,
                timeout=args.timeout,
                name=name,
            )
    one, two = result["one_worker"], result["two_workers"]
    ratio = two["events_per_s"] / one["events_per_s"]
    steady = None
    if "events_per_s_10_to_90pct" in one and "events_per_s_10_to_90pct" in two:
        steady = two["events_per_s_10_to_90pct"] / one["events_per_s_10_to_90pct"]
    result.update(
        events=args.events,
        partitions=args.partitions,
        order="one worker first, then two; never concurrently; same pre-filled topic",
        ratio_two_to_one=round(ratio, 3),
        ratio_two_to_one_10_to_90pct=round(steady, 3) if steady else None,
        goal="two workers >= 1.7x one",
        goal_met=ratio >= 1.7,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
