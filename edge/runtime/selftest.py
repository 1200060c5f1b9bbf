"""The golden self-test: a bundle must reproduce its golden outputs through exactly what the daemon runs.

Run at start, before a hot swap and by the update agent before it switches:
the golden inputs go through the model runtime (backend *and* the head runner
the daemon will use: NumPy, or the fused CUDA kernel on the engine's buffers),
unsmoothed (slot -1), and must match the golden probabilities. Then one real
face photo (the shipped demo asset) goes through the same preprocessing
(`to_tensor` with the bundle's input spec) and runtime, and must give finite
probabilities: golden inputs are pre-made tensors, so only this catches a model
that works on them and fails on every camera face (wrong input spec, a graph or
head that breaks on real-image statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge.bundle import Bundle, BundleError
from edge.bundle.manifest import InputSpec
from edge.head.params import load_head_params
from edge.head.runner import HeadBatch, NumpyHead
from edge.head.smoothing import SmoothingSpec
from edge.runtime.backend import Backend
from edge.runtime.preprocess import to_tensor

FACE_PHOTO = Path(__file__).resolve().parents[1] / "assets" / "demo_neutral.jpg"


class Runnable(Protocol):
    role: str
    head_backend: str
    input_spec: InputSpec

    def run_tensor(self, images: np.ndarray, slots: np.ndarray, fresh: np.ndarray) -> HeadBatch: ...


@dataclass(frozen=True)
class SelfTestResult:
    role: str
    head: str
    faces: int
    max_abs_error: float
    atol: float
    face_problem: str | None = None  # None: the real face gave finite probabilities

    @property
    def passed(self) -> bool:
        return self.max_abs_error <= self.atol and self.face_problem is None

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        face = "a real face gives finite probabilities" if self.face_problem is None else self.face_problem
        return (f"self-test {verdict}: {self.faces} golden faces on {self.role} with the {self.head} head, "
                f"max |error| {self.max_abs_error:.2e} (tolerance {self.atol:.2e}); {face}")


def face_tensor(spec: InputSpec) -> np.ndarray:
    """The centre of the shipped demo photo at the bundle's crop size, through the daemon's preprocessing."""
    photo = cv2.imread(str(FACE_PHOTO), cv2.IMREAD_COLOR)
    if photo is None:
        raise OSError(f"{FACE_PHOTO}: the self-test face photo is missing (it ships with the package)")
    h, w = photo.shape[:2]
    side = int(0.5 * min(h, w))
    top, left = (h - side) // 2, (w - side) // 2
    crop = cv2.resize(photo[top : top + side, left : left + side], (spec.crop_size, spec.crop_size),
                      interpolation=cv2.INTER_AREA)
    return to_tensor([crop], spec, "BGR")


class BackendWithNumpyHead:
    """A bare backend plus the NumPy head: what the daemon runs on a CPU, for callers holding only a backend
    (export checks, tests). The daemon itself always self-tests its own model runtime."""

    head_backend = "numpy"

    def __init__(self, bundle: Bundle, backend: Backend) -> None:
        self.backend, self.role, self.input_spec = backend, backend.role, bundle.manifest.input
        head_file = bundle.role("head")
        if head_file is None:
            raise BundleError(bundle.path, "manifest.json: files", "bundle has no head file")
        self.head = NumpyHead(load_head_params(head_file), SmoothingSpec("none", max_tracks=1))

    def run_tensor(self, images: np.ndarray, slots: np.ndarray, fresh: np.ndarray) -> HeadBatch:
        features = self.backend.infer(images)
        return self.head.run(features.f, features.g, slots, fresh)


def _untracked(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(n, -1, np.int32), np.zeros(n, bool)


def run_selftest(bundle: Bundle, runtime: Runnable | Backend) -> SelfTestResult:
    """`runtime`: a model runtime (what the daemon runs), or a bare backend, run with the NumPy head."""
    if not hasattr(runtime, "run_tensor"):
        runtime = BackendWithNumpyHead(bundle, runtime)  # type: ignore[arg-type]
    golden = bundle.manifest.golden
    if golden is None:
        raise BundleError(bundle.path, "manifest.json: golden", "bundle has no golden vectors to self-test with")
    atol = golden.atol.get(runtime.role)  # type: ignore[call-overload]
    if atol is None:
        raise BundleError(bundle.path, "manifest.json: golden.atol", f"no tolerance for {runtime.role}")
    inputs = np.load(bundle.file(golden.inputs), allow_pickle=False)
    with np.load(bundle.file(golden.outputs), allow_pickle=False) as expected:
        want = {k: expected[k] for k in ("fe_prob", "au_prob")}
    got = runtime.run_tensor(inputs, *_untracked(len(inputs)))
    diffs = [np.abs(got.fe_prob - want["fe_prob"]), np.abs(got.au_prob - want["au_prob"])]
    error = float("inf") if any(not np.isfinite(d).all() for d in diffs) else max(float(d.max()) for d in diffs)
    face = runtime.run_tensor(face_tensor(runtime.input_spec), *_untracked(1))
    problem = None
    if not (np.isfinite(face.fe_prob).all() and np.isfinite(face.au_prob).all()):
        problem = "a real face photo gives non-finite probabilities (the model fails on camera faces)"
    elif abs(float(face.fe_prob.sum()) - 1.0) > 1e-3:
        problem = f"a real face photo gives expression probabilities summing to {float(face.fe_prob.sum()):.4f}"
    return SelfTestResult(runtime.role, runtime.head_backend, len(inputs), error, atol, problem)
