"""The complete head step on the CPU (math + smoothing + thresholds) and the backend choice.

Every runner offers `run(f, g, slots, fresh) -> HeadBatch` on host arrays and
its smoothing state in the common layout (`state` / `load_state`, so a hot swap
can carry it across); the CUDA runner also offers `launch(...)` on the engine's
device pointers (edge/kernels/launcher.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from edge.head.folded import FoldedHead
from edge.head.params import HeadParams
from edge.head.smoothing import SmoothingSpec, TrackSmoother

if TYPE_CHECKING:
    from edge.runtime.cuda_session import CudaSession

Backend = Literal["auto", "numpy", "cuda"]


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

    def state(self) -> tuple[np.ndarray, np.ndarray]: ...

    def load_state(self, values: np.ndarray, counters: np.ndarray) -> None: ...

    def close(self) -> None: ...


def finish(params: HeadParams, fe_prob: np.ndarray, au_prob: np.ndarray) -> HeadBatch:
    """Thresholds and top expression, taken from the smoothed values (docs/head.md)."""
    return HeadBatch(
        fe_prob=fe_prob,
        au_prob=au_prob,
        au_active=au_prob >= params.au_threshold,
        top_expression=np.argmax(fe_prob, axis=1).astype(np.int32),
    )


class NumpyHead:
    """The CPU path (the head's math folded once, FoldedHead) and what the CUDA kernel is tested against."""

    backend = "numpy"

    def __init__(self, params: HeadParams, spec: SmoothingSpec) -> None:
        self.params = params
        self.folded = FoldedHead.of(params)
        self.smoother = TrackSmoother(spec, params.n_fe + params.n_au)

    def run(self, f: np.ndarray, g: np.ndarray, slots: np.ndarray, fresh: np.ndarray) -> HeadBatch:
        joined = np.concatenate(self.folded.forward(np.asarray(f), np.asarray(g)), axis=1)
        smoothed = self.smoother.update(joined, slots, fresh)
        e = self.params.n_fe
        return finish(self.params, smoothed[:, :e], smoothed[:, e:])

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.smoother.state()

    def load_state(self, values: np.ndarray, counters: np.ndarray) -> None:
        self.smoother.load_state(values, counters)

    def close(self) -> None:
        """Nothing to free (host memory); present so every runner closes the same way."""


@dataclass(frozen=True)
class HeadSelection:
    runner: HeadRunner
    backend: str
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> why it was not used


def select_head(params: HeadParams, spec: SmoothingSpec, backend: Backend = "auto",
                session: CudaSession | None = None, kernel_dir: Path | None = None) -> HeadSelection:
    """`head.backend`: "numpy", "cuda" (the fused kernel on `session`, or an error saying why not), or
    "auto": the fused kernel where the engine's outputs are on the device (a session is given) and the
    kernel loads, else NumPy, with the reason in `skipped`. Any failure to compile, load or initialise
    the kernel counts as "cannot run" in auto: a Jetson must never stop for want of the faster head.
    """
    from edge.runtime.cuda_binding import CudaUnavailableError

    if backend == "numpy":
        return HeadSelection(NumpyHead(params, spec), "numpy")
    if backend not in ("auto", "cuda"):
        raise ValueError(f"unknown head backend {backend!r}; choose auto, numpy or cuda")
    if session is None:
        why = ("the model backend keeps features on the host (onnxruntime); the fused head reads the TensorRT "
               "engine's device buffers")
        if backend == "cuda":
            raise CudaUnavailableError(f'head.backend = "cuda" cannot run: {why}')
        return HeadSelection(NumpyHead(params, spec), "numpy", {"cuda": why})
    from edge.kernels.launcher import CudaHead

    try:
        return HeadSelection(CudaHead(params, spec, session, kernel_dir=kernel_dir), "cuda")
    except Exception as exc:
        if backend == "cuda":
            raise CudaUnavailableError(f'head.backend = "cuda" cannot run: {exc}') from None
        return HeadSelection(NumpyHead(params, spec), "numpy", {"cuda": f"{type(exc).__name__}: {exc}"})
