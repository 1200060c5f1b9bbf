"""`affect-sensor check-config FILE`: validate a device config and show what takes effect."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-config", help="validate a config file and print the effective config (secrets masked)")
    p.add_argument("file", type=Path, help="device TOML, e.g. /etc/affect-sensor/sensor.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set source.uri=demo (repeatable; not for secrets)")
    p.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    p.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    import tomli_w

    from edge.config import effective_config, load_config

    config = load_config(args.file, args.overrides)
    data = effective_config(config)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"# {args.file}: OK\n" + tomli_w.dumps(data), end="")
    return 0
