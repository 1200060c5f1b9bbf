"""Smiling vs neutral on real photos of people the model never trained on, through the device pipeline.

For every holdout person of the London set (quantize.data.london.london_split:
chosen by a fixed hash, never in training or validation), the neutral and the
smiling photo go through `affect-sensor`'s own FrameProcessor: shipped
detector, alignment, the bundle's CPU graph, the semantic head (no smoothing).
Reports the AU12 ROC AUC (smiling vs neutral), how often smiling photos are
labelled "happiness" and neutral ones "neutral", and the per-face latency.

    python benchmarks/london_smile.py [--bundle DIR] [--people holdout|val] [--json]

`--people val` runs the same on the validation people: use that for any
tuning; the holdout people are for the final figure only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from edge.bundle.default import resolve_bundle
from edge.config import load_config
from edge.pipeline.processor import FrameProcessor
from quantize.data.london import london_split
from quantize.metrics import roc_auc

LONDON = Path(__file__).resolve().parents[2] / "shared" / "data" / "london_faces"


def evaluate(bundle_dir: Path | None, london: Path = LONDON, threads: int = 2, people: str = "holdout") -> dict:
    config = load_config(None, ["detection.every_k_frames=1", 'head.smoothing="none"', f"model.threads={threads}"])
    bundle = resolve_bundle(bundle_dir)
    processor = FrameProcessor(bundle, config, "bench")
    labels = bundle.manifest.label_space
    au12 = labels.aus.index(12)
    if people not in ("holdout", "val"):
        raise ValueError(f"people must be 'holdout' or 'val', got {people!r}")
    persons = getattr(london_split(), people)
    rows, missed, infer_ms = [], [], []
    for person in persons:
        for kind, suffix in (("neutral", "03"), ("smiling", "08")):
            image = cv2.imread(str(london / f"{person}_{suffix}.jpg"))
            processor.reset_tracks()
            t0 = time.perf_counter()
            result = processor.process(image, 0)
            infer_ms.append(result.stage_ms.get("infer", 0.0) + result.stage_ms.get("head", 0.0))
            if not result.record.faces:
                missed.append(f"{person}_{suffix}")
                continue
            face = max(result.record.faces, key=lambda f: f.box.w * f.box.h)
            rows.append({"person": person, "kind": kind, "au12": face.aus[f"AU{labels.aus[au12]}"],
                         "happiness": face.expressions["happiness"], "top": face.top_expression,
                         "seconds": time.perf_counter() - t0})
    smiling = [r for r in rows if r["kind"] == "smiling"]
    neutral = [r for r in rows if r["kind"] == "neutral"]
    scores = np.array([r["au12"] for r in rows])
    truth = np.array([r["kind"] == "smiling" for r in rows])
    return {
        "bundle": f"{bundle.manifest.name} {bundle.manifest.version} build {bundle.manifest.build}",
        "split": people, "people": len(persons), "faces": len(rows), "missed": missed,
        "au12_auc": roc_auc(scores, truth),
        "happiness_auc": roc_auc(np.array([r["happiness"] for r in rows]), truth),
        "smiling_as_happiness": float(np.mean([r["top"] == "happiness" for r in smiling])),
        "neutral_as_neutral": float(np.mean([r["top"] == "neutral" for r in neutral])),
        "top_on_smiling": dict(Counter(r["top"] for r in smiling).most_common()),
        "top_on_neutral": dict(Counter(r["top"] for r in neutral).most_common()),
        "model_ms_per_face_p50": float(np.median(infer_ms)),
        "pipeline_ms_per_photo_p50": float(np.median([r["seconds"] for r in rows]) * 1e3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: the built-in one)")
    parser.add_argument("--london", type=Path, default=LONDON)
    parser.add_argument("--people", choices=["holdout", "val"], default="holdout",
                        help="holdout (the benchmark) or val (validation people, for tuning; never tune on holdout)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    r = evaluate(args.bundle, args.london, people=args.people)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{r['bundle']}: {r['people']} {r['split']} people, {r['faces']} faces found, missed {r['missed'] or 'none'}")
    print(f"  AU12 ROC AUC, smiling vs neutral     {r['au12_auc']:.3f}")
    print(f"  happiness ROC AUC                    {r['happiness_auc']:.3f}")
    print(f"  smiling labelled happiness           {r['smiling_as_happiness']:.1%}")
    print(f"  neutral labelled neutral             {r['neutral_as_neutral']:.1%}")
    print(f"  top label on smiling / neutral       {r['top_on_smiling']} / {r['top_on_neutral']}")
    print(f"  model + head per face, p50           {r['model_ms_per_face_p50']:.2f} ms")
    print(f"  whole photo (detect+align+model), p50 {r['pipeline_ms_per_photo_p50']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
