"""Tiny argparse plumbing shared by `affect-sensor` and `affect-quantize`.

Each command lives in its own module exposing `register(subparsers)`; modules
are imported when the parser is built, so they keep heavy imports inside their
handlers and `--help` stays fast (and torch-free for the device CLI).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence


class CLIError(Exception):
    """An expected failure: printed as one line without a traceback, exit code 2."""


def build_parser(prog: str, description: str, modules: Sequence[str], version: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None, expected: tuple[type[BaseException], ...]) -> int:
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int | None] = args.func
    try:
        return int(handler(args) or 0)
    except expected as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
