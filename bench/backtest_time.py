"""Wall time of ``stream-app backtest`` end to end (the CDNOW backtest), with its ROC AUC.

Run from a checkout::

    python -m bench.backtest_time

Runs ``python -m stream_app backtest data/CDNOW_master.txt`` as a child process, exactly as a
user would, and times it from start to exit: embedded broker and Redis start, worker start,
replay of the purchases up to the 1997-09-30 cutoff through Kafka, drain, scoring of every
known customer, ROC AUC, report, shutdown. To keep the run private the child gets a free
broker port, a free Redis port and a temp run folder through its ``CHURN_*`` environment,
so it starts (and stops) its own stack instead of reusing one that may be running.

Prints one JSON object: the wall time measured here, the backtest's own ``elapsed_s`` and
its AUCs. On failure, timeout or Ctrl-C the child is interrupted (SIGINT, so it stops its
worker and stack itself), then terminated by PID, and any broker or Redis whose PID file is
left in the temp run folder is stopped by that PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throughput import ROOT, free_port, log, machine, terminate_on_sigterm
from stream_app import stack
from stream_app.settings import load_settings
from stream_app.tools.session import default_workers


def stop_child(proc: subprocess.Popen[bytes], run_dir: Path) -> None:
    """Interrupt the backtest so it cleans up, then make sure by PID that all is gone."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stack.stop_pid(proc.pid, timeout=10)
    for name in ("worker", "broker", "redis"):
        for pidfile in run_dir.glob(f"{name}*.pid"):
            with contextlib.suppress(ValueError):
                stack.stop_pid(int(pidfile.read_text().strip()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("path", nargs="?", default="data/CDNOW_master.txt")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--workers", type=int, help="worker processes (default: the backtest's own default)"
    )
    args = parser.parse_args()
    terminate_on_sigterm()
    result: dict[str, Any] = {"benchmark": "backtest_time", "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="stream-app-backtest-") as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "CHURN_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "CHURN_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "CHURN_EMBEDDED_REDIS": "start",
            "CHURN_EMBEDDED_RUN_DIR": str(work / "run"),
            "CHURN_LOG_LEVEL": "warning",
        }
        json_out = work / "backtest.json"
        argv = [
            sys.executable,
            "-m",
            "stream_app",
            "backtest",
            args.path,
            "--json-out",
            str(json_out),
            "--report-dir",
            str(work / "report"),
            *(["--workers", str(args.workers)] if args.workers else []),
        ]
        log("running: stream-app backtest " + args.path)
        started = time.monotonic()
        with (work / "backtest.log").open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            code = proc.wait(timeout=args.timeout)
            wall = time.monotonic() - started
        finally:
            stop_child(proc, work / "run")
        if code != 0 or not json_out.exists():
            tail = (work / "backtest.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"backtest failed with exit code {code}:\n{tail}")
        backtest = json.loads(json_out.read_text())
    result.update(
        command=f"stream-app backtest {args.path}"
        + (f" --workers {args.workers}" if args.workers else ""),
        workers=args.workers or default_workers(load_settings().partitions),
        wall_s=round(wall, 2),
        backtest_elapsed_s=backtest.get("elapsed_s"),
        phases_s=backtest.get("phases_s"),
        events_replayed=backtest.get("events_replayed"),
        users=backtest.get("users"),
        roc_auc=backtest.get("roc_auc"),
        recency_roc_auc=backtest.get("recency_roc_auc"),
        goal="backtest < 60 s",
        goal_met=wall < 60,
    )
    log(f"backtest: {wall:.1f} s, ROC AUC {backtest.get('roc_auc')}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
