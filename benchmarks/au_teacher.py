"""How well the AU teacher itself separates expressions: the ceiling under issue 16's AU sanity bars.

Real faces learn their AUs from MediaPipe Face Landmarker blendshapes (quantize/data/blendshapes.py), so a
student's AU4 cannot be expected to tell anger apart better than MediaPipe's browDown does on the same faces,
except through the output-level prior, which mixes in what the expression branch believes. This prints, for
each AU sanity pair of benchmarks/real_faces.py (AU12 <-> happiness, AU4 <-> anger, ...), the ROC AUC of the
teacher's raw score (before re-basing; re-basing is monotonic and leaves AUC unchanged) over the labelled faces
of one face cache on which MediaPipe found a face.

    python benchmarks/au_teacher.py --faces CACHE/faces/val.npz --blendshapes CACHE/faces/val.blendshapes.npz \
        [--dataset fer2013]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from edge.labels import BASIC_EXPRESSIONS, DEFAULT_LABELS
from quantize.data.blendshapes import BlendshapeScores, raw_au
from quantize.data.face_cache import FaceCache


def main(argv: list[str] | None = None) -> int:
    from real_faces import au_sanity

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, required=True, help="a face cache (affect-quantize faces)")
    parser.add_argument("--blendshapes", type=Path, required=True, help="its MediaPipe scores")
    parser.add_argument("--dataset", default="fer2013", help="which of the cache's datasets to score")
    args = parser.parse_args(argv)
    faces = FaceCache.load(args.faces)
    scores = BlendshapeScores.load(args.blendshapes)
    row = {str(k): i for i, k in enumerate(faces.key)}
    missing = [str(k) for k in scores.key if str(k) not in row]
    if missing:
        parser.error(f"--blendshapes {args.blendshapes}: {len(missing)} keys are not in {args.faces}, e.g. "
                     f"{missing[0]}: made from another cache")
    rows = np.array([row[str(k)] for k in scores.key], int)
    keep = scores.found & (faces.expression[rows] >= 0) & (faces.dataset[rows] == args.dataset)
    if not keep.any():
        parser.error(f"no labelled {args.dataset} face with blendshapes in {args.faces}")
    values, _ = raw_au(scores)
    aucs = au_sanity(faces.expression[rows][keep], values[keep], list(DEFAULT_LABELS.aus),
                     list(BASIC_EXPRESSIONS))
    print(f"AU teacher (MediaPipe blendshapes) on {int(keep.sum())} labelled {args.dataset} faces of {args.faces}:")
    for pair, value in aucs.items():
        print(f"  {pair:<22}{'n/a' if value is None else f'{value:.3f}':>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
