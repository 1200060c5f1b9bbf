"""`affect-sensor bundle info|verify DIR`: inspect and check model bundles.

DIR may be a link to a bundle, such as a device's `<update.bundles_dir>/current`:
the link is resolved and the directory it names is checked (bundles themselves
never contain links).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="inspect or verify a model bundle")
    bsub = p.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    info = bsub.add_parser("info", help="print a bundle's manifest summary (verifies it first)")
    info.add_argument("dir", type=Path)
    info.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    info.set_defaults(func=_info)
    verify = bsub.add_parser("verify", help="verify schema, every file's size and sha256, and no extra files")
    verify.add_argument("dir", type=Path)
    verify.set_defaults(func=_verify)


def _resolve(path: Path) -> Path:
    """A link (e.g. bundles_dir/current) names the bundle directory it points to."""
    return path.resolve() if path.is_symlink() else path


def _info(args: argparse.Namespace) -> int:
    from edge.bundle import read_bundle

    bundle = read_bundle(_resolve(args.dir))
    m = bundle.manifest
    if args.json:
        print(json.dumps(m.model_dump(mode="json", exclude_none=True), indent=2))
        return 0
    print(f"{m.name} {m.version} (build {m.build}), created {m.created.isoformat()}")
    if m.expires:
        print(f"expires      {m.expires.isoformat()}")
    if m.description:
        print(f"description  {m.description}")
    if m.training_data:
        print(f"trained on   {m.training_data}")
    print(f"AUs          {', '.join(m.label_space.au_keys)}")
    print(f"expressions  {', '.join(m.labels.expressions)}")
    spec = m.input
    print(f"input        {spec.channels}x{spec.crop_size}x{spec.crop_size} {spec.color_order}, tensor {spec.tensor!r}")
    print(f"features     f/g {m.output.feature_dim}-d")
    for key, value in sorted(m.quantization.items()):
        print(f"quant.{key:<7}{value}")
    for metric in m.metrics:
        values = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metric.values.items()))
        print(f"metrics      {metric.model} on {metric.data}: {values}")
    for engine in m.engines:
        print(f"engine       TensorRT {engine.target.tensorrt} sm {engine.target.compute_capability}: {engine.file}")
    print("files")
    for name, entry in sorted(m.files.items()):
        print(f"  {entry.role:<15}{entry.size:>12,d}  {name}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from edge.bundle import read_bundle

    target = _resolve(args.dir)
    bundle = read_bundle(target)
    m = bundle.manifest
    total = sum(e.size for e in m.files.values())
    shown = f"{args.dir} -> {target}" if target != args.dir else str(args.dir)
    print(f"OK: {shown}: {m.name} {m.version} build {m.build}, {len(m.files)} files, {total:,d} bytes verified")
    return 0
