"""A minimal push/CRM subscriber: read churn warnings and say what a push system would do.

Env: BOOTSTRAP (default localhost:9092), TOPIC (churn.warnings), MAX_MESSAGES (0 = forever).
A secured cluster takes the service's own variables, with the same meaning:
CHURN_KAFKA_SECURITY_PROTOCOL (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL),
CHURN_KAFKA_SASL_MECHANISM, CHURN_KAFKA_SASL_USERNAME, CHURN_KAFKA_SASL_PASSWORD and
CHURN_KAFKA_SSL_CAFILE. They are read here directly so the example needs only kafka-python.
Manual partition assignment: no consumer group to join, no offsets committed.
"""

import json
import os

from kafka import KafkaConsumer, TopicPartition

bootstrap = os.environ.get("BOOTSTRAP", "localhost:9092")
topic = os.environ.get("TOPIC", "churn.warnings")
limit = int(os.environ.get("MAX_MESSAGES", "0"))

security = {"security_protocol": os.environ.get("CHURN_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")}
if security["security_protocol"].startswith("SASL"):
    security["sasl_mechanism"] = os.environ.get("CHURN_KAFKA_SASL_MECHANISM", "PLAIN")
    security["sasl_plain_username"] = os.environ.get("CHURN_KAFKA_SASL_USERNAME")
    security["sasl_plain_password"] = os.environ.get("CHURN_KAFKA_SASL_PASSWORD")
if os.environ.get("CHURN_KAFKA_SSL_CAFILE"):
    security["ssl_cafile"] = os.environ["CHURN_KAFKA_SSL_CAFILE"]

consumer = KafkaConsumer(
    bootstrap_servers=bootstrap, group_id=None, consumer_timeout_ms=30_000, **security
)
partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
consumer.assign(partitions)
consumer.seek_to_beginning(*partitions)

for seen, message in enumerate(consumer, start=1):
    headers = {name: value.decode() for name, value in message.headers or []}
    event = json.loads(message.value)
    if headers.get("ce_type") == "dev.churnwarnings.warning.v1":
        action = event["suggested_action"]
        what = "hold (holdout)" if event["holdout"] else f"{action['channel']} {action['code']}"
        print(
            f"level {event['level']} ({event['level_name']}) user {event['user_id']}: "
            f"{what} - {action['text']}"
        )
    elif headers.get("ce_type") == "dev.churnwarnings.recovered.v1":
        print(f"cancel: user {event['user_id']} recovered")
    if limit and seen >= limit:
        break
consumer.close()
