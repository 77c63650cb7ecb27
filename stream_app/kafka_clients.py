"""Client configuration built once from the settings, so every client honours TLS and SASL."""

from __future__ import annotations

import ssl
from typing import Any

import redis.asyncio as aioredis

from stream_app.settings import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A TLS context for Kafka when the security protocol asks for one."""
    if "SSL" not in settings.kafka_security_protocol:
        return None
    cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    return ssl.create_default_context(cafile=cafile)


def kafka_python_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments shared by kafka-python's admin, producer and consumer."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap.split(","),
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        config["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value()
            if settings.kafka_sasl_password
            else None
        )
    if settings.kafka_ssl_cafile:
        config["ssl_cafile"] = str(settings.kafka_ssl_cafile)
    return config


def aiokafka_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka's producer and consumer, the same as
    :func:`kafka_python_config` in aiokafka's terms (it takes a TLS context, not a CA file)."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap.split(","),
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        config["sasl_plain_password"] = password.get_secret_value() if password else None
    context = ssl_context(settings)
    if context is not None:
        config["ssl_context"] = context
    return config


def security_only(config: dict[str, Any]) -> dict[str, Any]:
    """A client configuration without its servers, for a tool given ``--bootstrap``: the
    address may come from the command line, the credentials always come from the settings."""
    return {k: v for k, v in config.items() if k != "bootstrap_servers"}


def faust_credentials(settings: Settings) -> Any:
    """Faust's ``broker_credentials`` for the configured protocol (None for plaintext)."""
    import faust

    context = ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password.get_secret_value() if password else None,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def redis_client(settings: Settings) -> aioredis.Redis:
    """The asyncio Redis client every part of the worker shares."""
    kwargs: dict[str, Any] = {}
    if settings.redis_password is not None:
        kwargs["password"] = settings.redis_password.get_secret_value()
    if settings.redis_url.startswith("rediss://") and settings.redis_ssl_cafile:
        kwargs["ssl_ca_certs"] = str(settings.redis_ssl_cafile)
    return aioredis.Redis.from_url(settings.redis_url, **kwargs)
