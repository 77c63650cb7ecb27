"""The ``stream-app`` command: the worker and every tool, one parser.

Misuse prints usage and exits 2 (argparse); a bad setting stops with a message that names
the environment variable; nothing here prints a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from stream_app.settings import Settings, SettingsError, load_settings
from stream_app.stack import StackError

Handler = Callable[[argparse.Namespace], int]


def _worker(args: argparse.Namespace) -> int:
    if args.uvloop:
        # Faust applies ``--loop`` only when it is first imported (from ``sys.argv`` or
        # ``FAUST_LOOP``), which happens before the arguments below are set; choose the loop
        # policy here, before the app or anything else creates a loop.
        import mode.loop

        mode.loop.use("uvloop")
    from stream_app.app import create_app

    settings = load_settings()
    app = create_app(settings)
    # Per-event work allocates many short-lived objects; a larger young generation and a
    # frozen start-up heap keep the collector off the hot path.
    gc.set_threshold(50_000, 20, 100)
    gc.freeze()
    argv = [
        sys.argv[0] or "stream-app",
        "worker",
        "-l",
        {"warning": "warn"}.get(settings.log_level, settings.log_level),
    ]
    sys.argv = argv
    app.main()
    return 0


def _stack(args: argparse.Namespace) -> int:
    from stream_app import stack

    settings = load_settings()
    if args.action == "up":
        running = stack.start(settings)
        print(
            json.dumps(
                {
                    "bootstrap": running.bootstrap,
                    "redis_url": running.redis_url,
                    "started": running.pids,
                }
            )
        )
    elif args.action == "down":
        print(json.dumps({"stopped": stack.stop(settings)}))
    else:
        print(
            json.dumps(
                {
                    "broker": stack.broker_listening(settings),
                    "redis": stack.redis_listening(settings),
                }
            )
        )
    return 0


def _settings_doc(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stream_app.settings_doc import settings_table, update_readme

    if args.update:
        changed = update_readme(Path(args.update), Path(args.example))
        print(f"{args.update}: {'updated' if changed else 'already up to date'}")
    else:
        print(settings_table())
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from stream_app.admin import inspect_user

    found = asyncio.run(inspect_user(load_settings(), args.user_id))
    if found is None:
        print(f"unknown user {args.user_id!r}", file=sys.stderr)
        return 1
    print(json.dumps(found, indent=2))
    return 0


def _forget(args: argparse.Namespace) -> int:
    from stream_app.admin import forget_user

    removed = asyncio.run(forget_user(load_settings(), args.user_id))
    print(json.dumps({"user_id": args.user_id, "keys_removed": removed}))
    return 0


def _tool(module: str) -> tuple[Callable[[argparse.ArgumentParser], None], Handler]:
    import importlib

    mod: Any = importlib.import_module(f"stream_app.tools.{module}")
    return mod.add_arguments, mod.run


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (also used by tests that check compose commands parse)."""
    parser = argparse.ArgumentParser(
        prog="stream-app", description="Real-time churn warnings from an app's event stream."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("worker", help="run the Faust worker (settings from CHURN_* variables)")
    p.add_argument("--no-uvloop", dest="uvloop", action="store_false", help="use asyncio's loop")
    p.set_defaults(handler=_worker)

    p = sub.add_parser("stack", help="start/stop the embedded broker and Redis on loopback")
    p.add_argument("action", choices=("up", "down", "status"))
    p.set_defaults(handler=_stack)

    p = sub.add_parser("inspect", help="show one user's windows, score, tiers and warnings")
    p.add_argument("user_id")
    p.set_defaults(handler=_inspect)

    p = sub.add_parser("forget", help="delete every piece of a user's state (privacy request)")
    p.add_argument("user_id")
    p.set_defaults(handler=_forget)

    p = sub.add_parser("settings-doc", help="print the settings table of the README")
    p.add_argument("--update", metavar="README", help="rewrite the README's generated parts")
    p.add_argument("--example", default="examples/subscriber.py", help="subscriber example")
    p.set_defaults(handler=_settings_doc)

    defaults = _tool_defaults()
    client_settings = _client_settings()
    for name, module, help_text in _TOOLS:
        add_arguments, run = _tool(module)
        p = sub.add_parser(name, help=help_text)
        add_arguments(p)
        dests = {a.dest for a in p._actions}
        p.set_defaults(
            handler=run,
            client_settings=client_settings,
            **{k: v for k, v in defaults.get(name, {}).items() if k in dests},
        )
    return parser


def _client_settings() -> Settings | None:
    """The settings every tool's Kafka and Redis clients take TLS, SASL and passwords from.

    Tools still accept ``--bootstrap`` and topic options, but credentials never come from
    the command line (where ``ps`` and shell history would show them), only from the
    ``CHURN_*`` environment. ``None`` when the settings do not load: plaintext clients.
    """
    try:
        return load_settings()
    except SettingsError:
        return None


def _tool_defaults() -> dict[str, dict[str, str]]:
    """Tool options that default to the service's settings (its broker, its topics)."""
    s = _client_settings()
    if s is None:
        return {}
    return {
        "replay": {"bootstrap": s.kafka_bootstrap, "topic": s.topic_events},
        "tail": {"bootstrap": s.kafka_bootstrap, "topic": s.topic_warnings},
        "evaluate": {
            "bootstrap": s.kafka_bootstrap,
            "events_topic": s.topic_events,
            "warnings_topic": s.topic_warnings,
            "tiers_topic": s.topic_tiers,
        },
    }


_TOOLS: Sequence[tuple[str, str, str]] = (
    ("replay", "replay", "send an event log (JSONL, CSV, CDNOW) to Kafka in event-time order"),
    ("simulate", "simulate", "generate a seeded social-app event stream with ground truth"),
    ("evaluate", "evaluate", "score the warnings a run produced against ground truth"),
    ("tail", "tail", "follow the warning topic, one readable line per warning"),
    ("backtest", "backtest", "replay a purchase log to a cutoff and measure ROC AUC"),
    ("demo", "demo", "the README's main job: stack, worker, real-data replay, summary"),
)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``stream-app`` console script."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        code = args.handler(args)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        code = 2
    except StackError as exc:
        print(f"stream-app: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
