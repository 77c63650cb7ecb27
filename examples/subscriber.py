"""A minimal push/CRM subscriber: read churn warnings and say what a push system would do.

Env: BOOTSTRAP (default localhost:9092), TOPIC (churn.warnings), MAX_MESSAGES (0 = forever),
and for a secured cluster the service's CHURN_KAFKA_* variables. No group, no commits."""

import json
import os

from kafka import KafkaConsumer, TopicPartition

env = os.environ.get
limit = int(env("MAX_MESSAGES", "0"))
names = "security_protocol sasl_mechanism sasl_plain_username sasl_plain_password ssl_cafile"
given = [
    env(f"CHURN_KAFKA_{v}")
    for v in ("SECURITY_PROTOCOL", "SASL_MECHANISM", "SASL_USERNAME", "SASL_PASSWORD", "SSL_CAFILE")
]
security = {n: v for n, v in zip(names.split(), given, strict=True) if v}
consumer = KafkaConsumer(bootstrap_servers=env("BOOTSTRAP", "localhost:9092"), **security)
topic = env("TOPIC", "churn.warnings")
partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
consumer.assign(partitions)
consumer.seek_to_beginning(*partitions)

for seen, message in enumerate(consumer, start=1):
    kind = dict(message.headers or []).get("ce_type", b"").decode()
    event = json.loads(message.value)
    if kind == "dev.churnwarnings.warning.v1":
        action = event["suggested_action"]
        what = "hold (holdout)" if event["holdout"] else f"{action['channel']} {action['code']}"
        print(
            f"level {event['level']} ({event['level_name']}) user {event['user_id']}: "
            f"{what} - {action['text']}"
        )
    elif kind == "dev.churnwarnings.recovered.v1":
        print(f"cancel: user {event['user_id']} recovered")
    if limit and seen >= limit:
        break
consumer.close()
