"""`affect-sensor install-service`: install the systemd units and the device config."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path, PurePosixPath


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "install-service",
        help="install the systemd units, sysusers/tmpfiles snippets and /etc/affect-sensor/sensor.toml",
        description="Install the systemd units and the device config under ROOT. Safe to re-run: an edited "
        "config is kept (the new template goes beside it as sensor.toml.new). Prints the commands that "
        "create the service user and enable the units; it does not run them.",
    )
    p.add_argument("--root", type=Path, default=Path("/"),
                   help="install under this root prefix, e.g. a mounted device image (default: /)")
    p.add_argument("--exec", dest="exec_path", type=PurePosixPath, default=None,
                   help="path of the affect-sensor program on the target system; linked from "
                        "/usr/local/bin/affect-sensor (default with --root /: this program)")
    jetson = p.add_mutually_exclusive_group()
    jetson.add_argument("--jetson", dest="jetson", action="store_const", const=True, default=None,
                        help="add the Jetson GPU/camera drop-in (default: when /etc/nv_tegra_release exists)")
    jetson.add_argument("--no-jetson", dest="jetson", action="store_const", const=False,
                        help="never add the Jetson drop-in")
    p.set_defaults(func=_install)


def _running_program() -> PurePosixPath | None:
    """The `affect-sensor` console script of the running interpreter's environment (its venv)."""
    beside = Path(sys.executable).parent / "affect-sensor"
    found = beside if beside.is_file() else shutil.which("affect-sensor")
    return PurePosixPath(Path(found).absolute()) if found else None


def _install(args: argparse.Namespace) -> int:
    from edge.cli.app import CLIError
    from edge.service.install import InstallError, install

    exec_path = args.exec_path
    if exec_path is None:
        if args.root.resolve() != Path("/"):
            raise CLIError("--exec is required with --root other than /: give affect-sensor's path on the target")
        exec_path = _running_program()
        if exec_path is None:
            raise CLIError("cannot find the affect-sensor program; pass --exec PATH")
    try:
        report = install(args.root, exec_path, jetson=args.jetson)
    except InstallError as exc:
        raise CLIError(str(exc)) from None
    width = max(len(str(a.path)) for a in report.actions)
    print(f"Installed under {report.root}" + (" (Jetson drop-in included)" if report.jetson else "") + ":")
    for action in report.actions:
        note = f"  ({action.note})" if action.note else ""
        print(f"  {action.path!s:<{width}}  {action.outcome}{note}")
    print("\nNext steps (as root):")
    for command in report.next_steps:
        print(f"  {command}")
    return 0
