"""`affect-sensor run`: the capture daemon (what systemd starts)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the capture daemon (camera -> faces -> AUs/expressions -> sinks)")
    p.add_argument("--config", type=Path, default=None,
                   help="device TOML (default: built-in defaults: demo source, built-in bundle, no broker)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set source.uri=v4l2:/dev/video0 (repeatable)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many processed frames")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from edge.pipeline.daemon import Daemon, RunLimits, StartupError

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        daemon = Daemon(args.config, args.overrides, RunLimits(args.max_frames, args.duration))
    except StartupError as exc:
        print(f"affect-sensor: error: {exc}", file=sys.stderr)
        return 2
    daemon.install_signal_handlers()
    code = daemon.run()
    if daemon.exit_message:
        print(f"affect-sensor: error: {daemon.exit_message}", file=sys.stderr)
    return code
