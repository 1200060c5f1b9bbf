"""`affect-sensor update-agent`: the fleet update agent (what affect-sensor-update.service starts)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("update-agent", help="follow signed desired-bundle documents over MQTT (docs/fleet.md)")
    p.add_argument("--config", type=Path, required=True, help="device TOML; [update] enabled and [mqtt] set")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from edge.cli.app import CLIError
    from edge.config import load_config
    from edge.fleet.agent_mqtt import run_agent
    from edge.fleet.signing import load_trusted_keys
    from edge.pipeline.daemon import device_id

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args.config, args.overrides)
    if not config.update.enabled:
        raise CLIError(f"{args.config}: update.enabled is false; the agent has nothing to do")
    if not config.mqtt.enabled:
        raise CLIError(f"{args.config}: mqtt.enabled is false; desired state arrives over MQTT")
    try:
        load_trusted_keys(config.update.trusted_keys_dir)
    except ValueError as exc:
        raise CLIError(f"{args.config}: update.trusted_keys_dir: {exc}") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return run_agent(config, device_id(config), stop)
