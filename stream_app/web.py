"""The worker's web port: Prometheus metrics, health, and per-user inspection."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import faust
from faust.web import Request, Response, View
from prometheus_client import CollectorRegistry

from stream_app.metrics import render
from stream_app.processor import Processor
from stream_app.settings import Settings


def authorised(request: Request, settings: Settings) -> bool:
    """True when no token is configured, or the request carries it as a bearer token."""
    if settings.inspect_token is None:
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    expected = settings.inspect_token.get_secret_value()
    return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), expected.encode())


def register(
    app: faust.App, processor: Processor, registry: CollectorRegistry, settings: Settings
) -> None:
    """Declare the views on the app."""

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(render(registry), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            ok = processor.healthy and await processor.store_ok()
            processor.metrics.worker_healthy.set(1 if ok else 0)
            body = {
                "healthy": ok,
                "partitions": sorted(f"{t}:{p}" for t, p in processor.owned),
                "assigned": _assigned(app),
                "event_loop": event_loop_name(),
            }
            return self.json(body, status=200 if ok else 503)

    @app.page("/users/{user_id}")
    class UserView(View):
        async def get(self, request: Request, user_id: str) -> Response:
            if not authorised(request, settings):
                return self.json({"error": "unauthorised"}, status=401)
            found: dict[str, Any] | None = await processor.inspect(user_id)
            if found is None:
                return self.json({"error": f"unknown user {user_id!r}"}, status=404)
            return self.json(found)

        async def delete(self, request: Request, user_id: str) -> Response:
            """Forget a user (privacy request) in Redis *and* in this worker's memory.

            Destructive, so unlike reading it is refused unless a token is configured.
            """
            if settings.inspect_token is None:
                return self.json({"error": "set CHURN_INSPECT_TOKEN to enable"}, status=403)
            if not authorised(request, settings):
                return self.json({"error": "unauthorised"}, status=401)
            removed = await processor.forget(user_id)
            return self.json({"user_id": user_id, "keys_removed": removed})


def event_loop_name() -> str:
    """The running event loop's class, e.g. ``uvloop.Loop`` (``--no-uvloop``: asyncio's)."""
    loop = type(asyncio.get_running_loop())
    return f"{loop.__module__}.{loop.__qualname__}"


def _assigned(app: faust.App) -> list[str]:
    """The partitions the consumer group gave this worker (empty before it joined)."""
    try:
        return sorted(f"{tp.topic}:{tp.partition}" for tp in app.consumer.assignment())
    except Exception:  # not started yet, or stopping
        return []
