"""The naive Faust pipeline: the straightforward per-event implementation the goal's 3x is against.

The performance goal compares the service with "a straightforward Faust implementation of our
pipeline (per event: Redis ZADD + trim + count round trip, a river prediction, a send)". This
agent is that implementation, written the way a competent developer would write it first:
neither sandbagged nor optimised. Per event, with stock Faust (no fast drain, no batching):

1. ``async for value in stream`` hands over the raw bytes; ``orjson.loads`` decodes them
   (orjson rather than the stdlib ``json``: the project depends on it already);
2. one Redis round trip (redis.asyncio, a non-transactional pipeline) on the user's sorted set
   ``{BENCH_REDIS_PREFIX}{user_id}``: ``ZADD event_id -> occurred_at`` (event time, unix
   seconds), ``ZREMRANGEBYSCORE`` of what is older than 30 days before this event, ``ZCARD``
   (events in 30 days) and ``ZCOUNT`` of the last 7 days;
3. features ``events_30d``, ``events_7d`` and their ratio into a river
   ``StandardScaler | LogisticRegression``: ``predict_proba_one``, then ``learn_one`` with a
   deterministic proxy label, "slowing down": fewer than a quarter of the user's 30-day events
   fell in the last 7 days (no real labels exist at this point; this only keeps the model
   learning, so its weights and probabilities are not all zero);
4. one ``await output_topic.send(...)`` of a small warning-like JSON record (user, probability,
   counts) keyed by user id to ``BENCH_OUTPUT_TOPIC`` (Faust's default: handed to the producer
   at once, not held until commit).

No validation, deduplication, state snapshots or exactly-once outputs: it does less than the
service, which is the point of a naive reference. Broker settings, uvloop, ``/stats``
(counted per event) and start-up are those of :mod:`bench.passthrough_app`
(:mod:`bench.agent_app`). Configured from the environment (the benchmark sets it)::

    BENCH_BOOTSTRAP=127.0.0.1:19092 BENCH_TOPIC=app.events BENCH_GROUP=naive-1 \\
    BENCH_WEB_PORT=6068 BENCH_PARTITIONS=4 BENCH_REDIS_URL=redis://127.0.0.1:6379/0 \\
    BENCH_REDIS_PREFIX=naive-1: BENCH_OUTPUT_TOPIC=naive-1.warnings python -m bench.naive_app

``BENCH_DATADIR`` is where Faust keeps its folder (a temp dir).
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from river import linear_model, preprocessing

from bench.agent_app import bench_app, run_app

app, events, stats = bench_app("bench-naive", 6068)
GROUP = app.conf.id
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_PREFIX = os.environ.get("BENCH_REDIS_PREFIX", f"{GROUP}:")
OUTPUT_TOPIC = os.environ.get("BENCH_OUTPUT_TOPIC", f"{GROUP}.warnings")
DAY = 86_400.0

output_topic = app.topic(OUTPUT_TOPIC, value_type=bytes, key_type=bytes)
model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
stats.extra["fast_drain"] = False


@app.agent(events, name="naive")
async def naive(stream: Any) -> None:
    """Per event: decode, one Redis round trip, predict and learn, send; count."""
    client = aioredis.Redis.from_url(REDIS_URL)
    async for value in stream:
        event = orjson.loads(value)
        user_id = event["user_id"]
        ts = datetime.fromisoformat(event["occurred_at"]).timestamp()
        key = f"{REDIS_PREFIX}{user_id}"
        pipe = client.pipeline(transaction=False)
        pipe.zadd(key, {event["event_id"]: ts})
        pipe.zremrangebyscore(key, "-inf", f"({ts - 30 * DAY}")
        pipe.zcard(key)
        pipe.zcount(key, ts - 7 * DAY, "+inf")
        _, _, events_30d, events_7d = await pipe.execute()

        features = {
            "events_30d": float(events_30d),
            "events_7d": float(events_7d),
            "ratio_7d_30d": events_7d / events_30d if events_30d else 0.0,
        }
        probability = model.predict_proba_one(features).get(True, 0.0)
        model.learn_one(features, events_7d * 4 < events_30d)

        record = {
            "user_id": user_id,
            "event_id": event["event_id"],
            "probability": round(probability, 4),
            "events_30d": events_30d,
            "events_7d": events_7d,
        }
        await output_topic.send(key=user_id.encode(), value=orjson.dumps(record))
        stats.add(1)


def main() -> None:
    """Run the worker on uvloop."""
    run_app(app, "naive")


if __name__ == "__main__":
    main()
