"""The complete head step on the CPU (math + smoothing + thresholds) and the backend choice.

Every backend offers `run(f, g, slots, fresh) -> HeadBatch` on host arrays; the
CUDA launchers also offer `launch(...)` on device pointers for the engine path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from edge.head.params import HeadParams
from edge.head.reference import head_forward
from edge.head.smoothing import SmoothingSpec, TrackSmoother

Backend = Literal["auto", "numpy", "pycuda", "cupy"]


@dataclass(frozen=True)
class HeadBatch:
    """What the pipeline publishes per face, after smoothing."""

    fe_prob: np.ndarray  # B x E, smoothed p_E
    au_prob: np.ndarray  # B x A, smoothed p_A
    au_active: np.ndarray  # B x A bool: smoothed p_A >= au_threshold
    top_expression: np.ndarray  # B int32: argmax of smoothed p_E (lowest index on ties)


class HeadRunner(Protocol):
    backend: str

    def run(self, f: np.ndarray, g: np.ndarray, slots: np.ndarray, fresh: np.ndarray) -> HeadBatch: ...


def finish(params: HeadParams, fe_prob: np.ndarray, au_prob: np.ndarray) -> HeadBatch:
    """Thresholds and top expression, taken from the smoothed values (docs/head.md)."""
    return HeadBatch(
        fe_prob=fe_prob,
        au_prob=au_prob,
        au_active=au_prob >= params.au_threshold,
        top_expression=np.argmax(fe_prob, axis=1).astype(np.int32),
    )


class NumpyHead:
    """The CPU path and the reference the CUDA kernel is tested against."""

    backend = "numpy"

    def __init__(self, params: HeadParams, spec: SmoothingSpec) -> None:
        self.params = params
        self.smoother = TrackSmoother(spec, params.n_fe + params.n_au)

    def run(self, f: np.ndarray, g: np.ndarray, slots: np.ndarray, fresh: np.ndarray) -> HeadBatch:
        out = head_forward(self.params, f, g)
        joined = np.concatenate([out.fe_prob, out.au_prob], axis=1)
        smoothed = self.smoother.update(joined, slots, fresh)
        e = self.params.n_fe
        return finish(self.params, smoothed[:, :e], smoothed[:, e:])


@dataclass(frozen=True)
class HeadSelection:
    runner: HeadRunner
    backend: str
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> why it was not used


def select_head(params: HeadParams, spec: SmoothingSpec, backend: Backend = "auto") -> HeadSelection:
    """The fused CUDA kernel where pycuda or CuPy and a GPU work, else NumPy.

    An explicitly requested CUDA backend that cannot run raises `CudaUnavailableError`;
    "auto" records why each CUDA backend was skipped and falls back to NumPy.
    """
    from edge.kernels.launcher import CudaUnavailableError, CupyHead, PycudaHead

    if backend == "numpy":
        return HeadSelection(NumpyHead(params, spec), "numpy")
    candidates = {"pycuda": PycudaHead, "cupy": CupyHead}
    if backend in candidates:
        return HeadSelection(candidates[backend](params, spec), backend)
    if backend != "auto":
        raise ValueError(f"unknown head backend {backend!r}; choose auto, numpy, pycuda or cupy")
    skipped: dict[str, str] = {}
    for name, cls in candidates.items():
        try:
            return HeadSelection(cls(params, spec), name, skipped)
        except CudaUnavailableError as exc:
            skipped[name] = str(exc)
    return HeadSelection(NumpyHead(params, spec), "numpy", skipped)
