"""Does a squeezed or stretched face change expression? Top expression of real photos with the aspect changed by ±25%.

Cameras and uploads change a frame's aspect (anamorphic modes, a 4:3 sensor
mode shown as 16:9, a resize that ignores the ratio). The five-point similarity
alignment cannot undo that: it keeps the squeeze inside the crop. This runs the
device pipeline (FrameProcessor: detector, alignment, the bundle's graph and head,
no smoothing, a fresh track per photo) on every London photo as it is and with its
width, or its height, scaled by 0.75 and 1.25, and reports the share of faces whose
top expression differs from the same photo's at the original aspect. The same
photos changed by only ±3% are the reference: a face whose label flips under a
3% resize sits on a decision boundary, and no alignment fix will hold it; the
gap between the two rows is what the aspect change itself costs. The figures
belong to the bundle: re-run it for each new bundle.

    python benchmarks/aspect.py [--bundle DIR] [--photos ../shared/data/london_faces] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

VARIANTS = {"width x0.75": (0.75, 1.0), "width x1.25": (1.25, 1.0), "height x0.75": (1.0, 0.75),
            "height x1.25": (1.0, 1.25)}
REFERENCE = {"width x0.97": (0.97, 1.0), "width x1.03": (1.03, 1.0), "height x0.97": (1.0, 0.97),
             "height x1.03": (1.0, 1.03)}
DEFAULT_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "london_faces"


def top_expressions(processor, image: np.ndarray) -> str | None:
    """Top expression of the largest face, from a fresh track (no smoothing carried over)."""
    processor.reset_tracks()
    record = processor.process(image, 0).record
    if not record.faces:
        return None
    face = max(record.faces, key=lambda f: f.box.w * f.box.h)
    return face.top_expression


def measure(processor, photos: list[Path]) -> dict[str, Any]:
    rows = []
    for path in photos:
        image = cv2.imread(str(path))
        if image is None:
            raise SystemExit(f"cannot read {path}")
        h, w = image.shape[:2]
        row = {"photo": path.name, "original": top_expressions(processor, image)}
        for name, (fx, fy) in {**VARIANTS, **REFERENCE}.items():
            warped = cv2.resize(image, (round(w * fx), round(h * fy)), interpolation=cv2.INTER_AREA)
            row[name] = top_expressions(processor, warped)
        rows.append(row)
    return {"rows": rows, "summary": summarize(rows)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant, then "all" over the ±25% variants and "reference" over the ±3% ones."""
    out = {}
    usable = [r for r in rows if r["original"] is not None]
    for name in (*VARIANTS, *REFERENCE):
        pairs = [(r["original"], r[name]) for r in usable]
        missed = sum(b is None for _, b in pairs)
        changed = sum(b is not None and a != b for a, b in pairs)
        out[name] = {"faces": len(pairs), "changed": changed, "missed": missed,
                     "share_changed": changed / max(1, len(pairs) - missed)}
    for pooled, names in (("all", VARIANTS), ("reference", REFERENCE)):
        parts = [out[n] for n in names]
        total = sum(v["faces"] - v["missed"] for v in parts)
        out[pooled] = {"faces": total, "changed": sum(v["changed"] for v in parts),
                       "missed": sum(v["missed"] for v in parts),
                       "share_changed": sum(v["changed"] for v in parts) / max(1, total)}
    out["no_face_at_original"] = len(rows) - len(usable)
    return out


def table(summary: dict[str, Any], title: str) -> list[str]:
    lines = [title, f"  {'variant':<14}{'faces':>7}{'changed':>9}{'share':>8}{'no face':>9}"]
    for name in (*VARIANTS, "all", *REFERENCE, "reference"):
        s = summary[name]
        lines.append(f"  {name:<14}{s['faces']:>7}{s['changed']:>9}{s['share_changed']:>8.1%}{s['missed']:>9}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: the built-in bundle)")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of London NNN_03/NNN_08 photos")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from edge.config import load_config
    from edge.pipeline.bench import machine, machine_line
    from edge.pipeline.daemon import open_processor
    from quantize.data.london import london_split

    config = load_config(None, ['head.smoothing="none"', "source.width=1000", "source.height=1000"])
    processor = open_processor(config, args.bundle, selftest=False)
    photos = sorted(args.photos.glob("*_0[38].jpg"))
    if not photos:
        raise SystemExit(f"{args.photos}: no London photos (NNN_03.jpg / NNN_08.jpg)")
    result = measure(processor, photos)
    holdout = set(london_split([p.stem.split("_")[0] for p in photos]).holdout)
    result["holdout"] = summarize([r for r in result["rows"] if r["photo"].split("_")[0] in holdout])
    # the people a recipe may choose on (training and validation people): never the holdout
    result["not_holdout"] = summarize([r for r in result["rows"] if r["photo"].split("_")[0] not in holdout])
    m = processor.bundle.manifest
    if args.json:
        print(json.dumps({"machine": machine(), "bundle": f"{m.name} {m.version} build {m.build}", **result},
                         indent=2))
        return 0
    lines = [machine_line(machine()), f"bundle: {m.name} {m.version} (build {m.build}, created {m.created})"]
    lines += table(result["summary"], f"top expression changed by an aspect change, {len(photos)} London photos:")
    lines += table(result["holdout"], "the holdout people only (never trained on):")
    lines += table(result["not_holdout"], "the other people (training and validation; what a recipe may choose on):")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
