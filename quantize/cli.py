"""`affect-quantize`: the workstation command line (teacher, distillation, export)."""

from __future__ import annotations

from collections.abc import Sequence

from edge.bundle import BundleError
from edge.cli.app import CLIError, build_parser, run
from quantize import __version__
from quantize.data.types import DataError

COMMANDS = (
    "quantize.labels_cmd",
    "quantize.faces_cmd",
    "quantize.teacher_cmd",
    "quantize.distill_cmd",
    "quantize.data.contact_sheet",
    "quantize.bench_cmd",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(
        "affect-quantize",
        "Train the SSM teacher, distill it into an INT8 student with QAT, and export device bundles.",
        COMMANDS,
        __version__,
    )
    return run(parser, argv, (CLIError, BundleError, DataError, FileNotFoundError))


if __name__ == "__main__":
    raise SystemExit(main())
