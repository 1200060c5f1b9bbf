"""`affect-quantize faces`: build the aligned real-face caches that training reads (docs/data.md, "Real faces").

Writes `<out>/train.npz` and `<out>/val.npz`: FER2013 Training / PublicTest with the FER+ votes attached, the
real London photos of the training / validation people, and generated AU-coded faces (London warps and
procedural faces). FER2013 PrivateTest and the London holdout people are never cached: they are only ever seen
by the final evaluation, through the device pipeline.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SPLITS = {"train": ("train", "train"), "val": ("public", "val")}  # cache split: (FER2013 split, London split)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("faces", help="detect + align FER2013 / FER+ / London / generated faces into training caches")
    p.add_argument("--fer2013", type=Path, required=True, help="FER2013 in the Kaggle folder layout (train/, test/)")
    p.add_argument("--ferplus", type=Path, default=None,
                   help="FER+ folders (FER2013Train|Valid|Test/label.csv); its votes are matched to FER2013 by pixels")
    p.add_argument("--london", type=Path, default=None, help="London face set (default: ../shared/data/london_faces)")
    p.add_argument("--generated", type=int, default=4000, help="generated AU-coded training faces (val: 1/6 of it)")
    p.add_argument("--size", type=int, default=64, help="model input size (px)")
    p.add_argument("--margin", type=int, default=8, help="context kept around the model input (px per side)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="cache directory (outside the repository)")
    p.add_argument("--only", choices=sorted(SPLITS), default=None, help="build one split")
    p.add_argument("--detector", choices=("device", "short-whole"), default="device",
                   help="device: the shipped detector and face gate (default); short-whole: the short-range "
                        "BlazeFace on the whole frame, what bundle builds 2-4 were trained on")
    p.set_defaults(func=_faces)

    t = sub.add_parser("peer-targets", help="the FER2013 peer's expression probabilities on a face cache's FER2013 "
                                            "rows, a second expression teacher for distillation (run once)")
    t.add_argument("--faces", type=Path, required=True, help="face cache directory (affect-quantize faces)")
    t.add_argument("--fer2013", type=Path, required=True, help="the FER2013 folders the cache was built from")
    t.add_argument("--split", choices=sorted(SPLITS), default="train",
                   help="cache split (default: train, the only one distillation reads)")
    t.add_argument("--threads", type=int, default=2)
    t.set_defaults(func=_peer_targets)


def _faces(args: argparse.Namespace) -> int:
    from quantize.data.face_cache import (
        CropGeometry,
        FaceCache,
        build_face_cache,
        cache_from_template_crops,
        face_finder,
    )
    from quantize.data.fer2013 import attach_ferplus, load_fer2013_folders
    from quantize.data.generate import generate_faces
    from quantize.data.london import london_split, photo_images

    geometry = CropGeometry(args.size, args.margin)
    find_faces = face_finder(args.detector)
    args.out.mkdir(parents=True, exist_ok=True)
    people = london_split(seed=args.seed)
    report = {}
    for name, (fer_split, london_part) in SPLITS.items():
        if args.only and name != args.only:
            continue
        images = load_fer2013_folders(args.fer2013, fer_split)
        counts = {"fer2013": len(images)}
        if args.ferplus is not None:
            images, match = attach_ferplus(images, args.ferplus, fer_split)
            counts.update(ferplus_votes=match.with_votes, ferplus_dropped=match.dropped,
                          ferplus_unmatched=match.unmatched)
        persons = getattr(people, london_part)
        images += photo_images(persons, args.london)
        real, aligned = build_face_cache(images, geometry, find_faces)
        n_gen = args.generated if name == "train" else max(1, args.generated // 6)
        generated = generate_faces("mixed", n_gen, persons, 112, seed=args.seed * 10 + list(SPLITS).index(name))
        cache = FaceCache.concat([real, cache_from_template_crops(generated, 112, geometry, key_prefix=f"gen-{name}")])
        path = args.out / f"{name}.npz"
        cache.save(path)
        report[name] = {**counts, "london_photos": sum(i.dataset == "london_photo" for i in images),
                        "generated": n_gen, "aligned": aligned, "faces": len(cache)}
        print(f"faces: {path}: {json.dumps(report[name])}")
    return 0


def _peer_targets(args: argparse.Namespace) -> int:
    from quantize.data.face_cache import FaceCache
    from quantize.data.peer_targets import TARGETS_SUFFIX, FerPeer, peer_targets

    cache = FaceCache.load(args.faces / f"{args.split}.npz")
    result = peer_targets(cache.key, cache.dataset, args.fer2013, FerPeer(threads=args.threads))
    out = args.faces / f"{args.split}{TARGETS_SUFFIX}"
    result.save(out)
    found, labelled = result.found, cache.expression >= 0
    rows = found & labelled
    accuracy = float((result.probs[rows].argmax(axis=1) == cache.expression[rows]).mean()) if rows.any() else None
    print(f"peer-targets: {out}: " + json.dumps({"faces": len(cache), "with_targets": int(found.sum()),
                                                 "peer_accuracy_on_labels": accuracy and round(accuracy, 4),
                                                 "model_sha256": result.model_sha256}))
    return 0
