"""Build the second face-detection set (FDDB) that chooses the detector's operating point (outside the repository).

Source (docs/capture.md, "Choosing the score threshold"): FDDB (Jain & Learned-Miller, UMass tech report
UM-CS-2010-009, 2010: news photos from Berg et al.'s "Faces in the Wild", ellipse annotations; no licence is
stated, research use, cite the report). The repository `penolove/pyxml` at commit 38022d5 holds 2,768 of its 2,845
images as `FDDB2007/JPEGImages/000000.jpg`... (renamed, re-encoded, with Pascal VOC boxes in
`FDDB2007/Annotations/`) and FDDB's own `FDDB-folds/FDDB-fold-XX-ellipseList.txt`.

The renamed images are matched back to their FDDB entries in order: an entry is the next image when the boxes that
repository's converter derived from it (it read the angle as degrees and kept only boxes strictly inside the image)
equal that image's VOC boxes; the 77 entries it dropped are listed in `skipped.txt`. Each face's box in `gt.txt` is
the exact axis-aligned rectangle of its ellipse (angle in radians), clipped to the image: forehead to chin, taller
than a WIDER box. The WIDER format of benchmarks/detectors.py, all flags 0; `folds.txt` names each image's fold.

    git --git-dir=<fetched penolove/pyxml> archive 38022d5 FDDB2007 FDDB-folds | tar -x -C /tmp/fddb_src
    python tools/prepare_fddb.py --src /tmp/fddb_src --out /work/cache/facedet/fddb
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

Ellipse = tuple[float, float, float, float, float]  # major radius, minor radius, angle (rad), centre x, centre y


def fddb_entries(folds: Path) -> Iterator[tuple[int, str, list[Ellipse]]]:
    """(fold, FDDB image path, ellipses) in the folds' order."""
    for fold in range(1, 11):
        lines = (folds / f"FDDB-fold-{fold:02d}-ellipseList.txt").read_text().split("\n")
        i = 0
        while i < len(lines) and lines[i].strip():
            name, count = lines[i].strip(), int(lines[i + 1])
            faces = [tuple(float(v) for v in lines[i + 2 + k].split()[:5]) for k in range(count)]
            yield fold, name, faces  # type: ignore[misc]
            i += 2 + count


def converter_boxes(faces: list[Ellipse], width: int, height: int) -> list[tuple[int, int, int, int]]:
    """The boxes penolove/pyxml's converter wrote for these ellipses (angle read as degrees), to recognise images."""
    out = []
    for major, minor, angle, cx, cy in faces:
        c, s = math.cos(math.radians(-angle)), math.sin(math.radians(-angle))
        corners = [(-minor, -major), (minor, -major), (minor, major), (-minor, major)]
        xs = [c * u - s * v + cx for u, v in corners]
        ys = [s * u + c * v + cy for u, v in corners]
        box = (int(min(xs)), int(min(ys)), int(max(xs)), int(max(ys)))
        if box[0] > 0 and box[1] > 0 and box[2] < width and box[3] < height:
            out.append(box)
    return out


def voc_boxes(path: Path) -> tuple[int, int, list[tuple[int, int, int, int]]]:
    root = ET.parse(path).getroot()
    width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
    boxes = [tuple(int(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax"))
             for o in root.iter("object")]
    return width, height, boxes  # type: ignore[return-value]


def ellipse_box(face: Ellipse, width: int, height: int) -> tuple[int, int, int, int]:
    """x, y, w, h of the ellipse's axis-aligned bounding rectangle, clipped to the image."""
    major, minor, angle, cx, cy = face
    half_w = math.hypot(major * math.cos(angle), minor * math.sin(angle))
    half_h = math.hypot(major * math.sin(angle), minor * math.cos(angle))
    x1, y1 = round(min(max(cx - half_w, 0), width)), round(min(max(cy - half_h, 0), height))
    x2, y2 = round(min(max(cx + half_w, 0), width)), round(min(max(cy + half_h, 0), height))
    return x1, y1, x2 - x1, y2 - y1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, required=True, help="folder holding FDDB2007/ and FDDB-folds/")
    parser.add_argument("--out", type=Path, required=True, help="output folder (replaced when complete)")
    args = parser.parse_args(argv)
    annotations, jpegs = args.src / "FDDB2007" / "Annotations", args.src / "FDDB2007" / "JPEGImages"
    for need in (annotations, jpegs, args.src / "FDDB-folds"):
        if not need.is_dir():
            parser.error(f"{need} is missing")
    count = len(list(annotations.glob("*.xml")))
    gt, folds, skipped, k = [], [], [], 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", dir=args.out.parent))  # renamed into place when done
    try:
        (tmp / "images").mkdir()
        for fold, name, faces in fddb_entries(args.src / "FDDB-folds"):
            if k < count:
                width, height, boxes = voc_boxes(annotations / f"{k:06d}.xml")
                if boxes and converter_boxes(faces, width, height) == boxes:
                    flat = name.replace("/", "_") + ".jpg"
                    shutil.copyfile(jpegs / f"{k:06d}.jpg", tmp / "images" / flat)
                    gt += [flat, str(len(faces))]
                    gt += [" ".join(map(str, ellipse_box(f, width, height))) + " 0 0 0 0 0 0" for f in faces]
                    folds.append(f"{flat} {fold:02d} {name}")
                    k += 1
                    continue
            skipped.append(name)
        if k != count:
            raise SystemExit(f"matched {k} of {count} images in {annotations}: not the expected snapshot")
        for file, lines in (("gt.txt", gt), ("folds.txt", folds), ("skipped.txt", skipped)):
            (tmp / file).write_text("\n".join(lines) + "\n")
        if args.out.exists():
            shutil.rmtree(args.out)
        tmp.rename(args.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {k} images, {sum(1 for line in gt if line.count(' ') == 9)} faces, {len(skipped)} entries skipped "
          f"to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
