"""`affect-sensor`: the device command line."""

from __future__ import annotations

from collections.abc import Sequence

from edge import __version__
from edge.bundle import BundleError
from edge.cli.app import CLIError, build_parser, run
from edge.config import ConfigError

COMMANDS = (
    "edge.cli.run_cmd",
    "edge.cli.analyze_cmd",
    "edge.cli.bench_cmd",
    "edge.cli.config_cmd",
    "edge.cli.bundle_cmd",
    "edge.cli.listen_cmd",
    "edge.cli.service_cmd",
    "edge.cli.fleet_cmd",
    "edge.cli.update_agent_cmd",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(
        "affect-sensor",
        "Edge affect sensor: facial action units and expressions from camera frames, published over MQTT.",
        COMMANDS,
        __version__,
    )
    return run(parser, argv, (CLIError, ConfigError, BundleError))


if __name__ == "__main__":
    raise SystemExit(main())
