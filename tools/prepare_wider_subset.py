"""Build the annotated face-detection evaluation set used by benchmarks/detectors.py (outside the repository).

Source (docs/capture.md, "Detector evaluation"): 200 WIDER FACE validation
images that a public repository stores squashed to 416x416, the official
validation ground truth (`wider_face_val_bbx_gt.txt`) and each image's original
size (Pascal VOC XML files of a second repository). WIDER FACE is for
non-commercial research use: keep the set out of the repository and never ship it.

This restores each image's aspect ratio at the squash's horizontal scale
(416/width: images become 416 px wide) and scales the ground-truth boxes the
same way, writing `OUT/images/<name>.jpg` and `OUT/gt.txt` in the WIDER format
(name, count, then `x y w h blur expression illumination invalid occlusion pose`).

    python tools/prepare_wider_subset.py --squashed DIR --voc-xml DIR --gt wider_face_val_bbx_gt.txt \
        --out /work/cache/facedet/wider_val_200
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import cv2


def read_wider_gt(path: Path) -> dict[str, list[list[int]]]:
    """WIDER ground truth: image name (no folder) -> rows of 10 integers."""
    lines = path.read_text().split("\n")
    out, i = {}, 0
    while i < len(lines) and lines[i].strip():
        name = lines[i].strip().split("/")[-1]
        count = int(lines[i + 1])
        rows = [[int(v) for v in lines[i + 2 + k].split()[:10]] for k in range(count)]
        out[name] = rows
        i += 2 + max(count, 1)  # an image with no face still has one all-zero row
    return out


def voc_size(path: Path) -> tuple[int, int]:
    text = path.read_text()
    width = int(re.search(r"<width>(\d+)</width>", text).group(1))
    height = int(re.search(r"<height>(\d+)</height>", text).group(1))
    return width, height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--squashed", type=Path, required=True, help="folder of the 416x416 WIDER val images")
    parser.add_argument("--voc-xml", type=Path, required=True, help="folder of <name>.xml with the original sizes")
    parser.add_argument("--gt", type=Path, required=True, help="wider_face_val_bbx_gt.txt")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    gt = read_wider_gt(args.gt)
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    lines, faces = [], 0
    for path in sorted(args.squashed.glob("*.jpg")):
        if path.name not in gt:
            print(f"skipped {path.name}: not in the validation ground truth", file=sys.stderr)
            continue
        width, height = voc_size(args.voc_xml / f"{path.stem}.xml")
        image = cv2.imread(str(path))
        scale = image.shape[1] / width
        restored = cv2.resize(image, (image.shape[1], round(height * scale)), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(args.out / "images" / path.name), restored, [cv2.IMWRITE_JPEG_QUALITY, 95])
        rows = [r for r in gt[path.name] if r[2] > 0 and r[3] > 0]
        lines += [path.name, str(len(rows))]
        for x, y, w, h, *flags in rows:
            box = [round(x * scale), round(y * scale), max(1, round(w * scale)), max(1, round(h * scale))]
            lines.append(" ".join(str(v) for v in box + flags))
        faces += len(rows)
    (args.out / "gt.txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines) and len(list((args.out / 'images').glob('*.jpg')))} images, {faces} faces to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
