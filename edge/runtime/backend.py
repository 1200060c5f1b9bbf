"""The inference-backend interface: normalised face batch in, per-face features f and g out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class BackendError(RuntimeError):
    """A backend that cannot run here (missing library, no GPU, bad engine); says which and why."""


@dataclass(frozen=True)
class Features:
    f: np.ndarray  # B x D expression features
    g: np.ndarray  # B x D AU features


class Backend(Protocol):
    name: str
    role: str  # which bundle graph it runs: onnx_cpu, onnx_fp32 or onnx_tensorrt

    def infer(self, images: np.ndarray) -> Features: ...

    def describe(self) -> str: ...

    def close(self) -> None:
        """Free what the backend holds (sessions, engines, GPU memory); a swapped-out model must not leak."""
        ...
