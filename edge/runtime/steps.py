"""One batch of normalised faces -> smoothed head outputs, on the host or fused on the GPU.

`HostStep`: the backend returns f/g on the host and the head runner (NumPy, or
the CUDA head on host arrays) finishes. `FusedGpuStep`: the TensorRT engine
writes f/g into device buffers, the head kernel reads them on the same stream,
and only the final probabilities (about 120 bytes a face) are copied back;
one synchronisation per batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edge.head.runner import HeadBatch, HeadRunner
from edge.kernels.layout import DeviceBatch
from edge.runtime.backend import Backend

if TYPE_CHECKING:
    from edge.kernels.launcher import CudaHead
    from edge.runtime.tensorrt_engine import TensorRTBackend


@dataclass
class StepTimes:
    infer_ms: float = 0.0
    head_ms: float | None = 0.0  # None: fused into infer (GPU path)


class HostStep:
    fused = False

    def __init__(self, backend: Backend, head: HeadRunner) -> None:
        self.backend, self.head = backend, head

    def run(self, images: np.ndarray, slots: np.ndarray, fresh: np.ndarray, times: StepTimes) -> HeadBatch:
        t0 = time.perf_counter()
        features = self.backend.infer(images)
        t1 = time.perf_counter()
        out = self.head.run(features.f, features.g, slots, fresh)
        times.infer_ms += (t1 - t0) * 1e3
        times.head_ms = (times.head_ms or 0.0) + (time.perf_counter() - t1) * 1e3
        return out

    def close(self) -> None:
        """Nothing of its own: backend and head belong to the runtime."""


class FusedGpuStep:
    """TensorRT engine -> fused head kernel on one stream; buffers for slots, flags and outputs are its own."""

    fused = True

    def __init__(self, engine: TensorRTBackend, head: CudaHead) -> None:
        self.engine, self.head, self.session = engine, head, engine.cuda_session
        n = engine.max_batch
        self._host = head.outputs(n)
        self._slots = np.zeros(n, np.int32)
        self._fresh = np.zeros(n, np.uint8)
        self._buffers = {name: self.session.alloc(v.nbytes) for name, v in
                         (("slots", self._slots), ("fresh", self._fresh), *self._host.items())}

    def run(self, images: np.ndarray, slots: np.ndarray, fresh: np.ndarray, times: StepTimes) -> HeadBatch:
        t0 = time.perf_counter()
        b = self.engine.enqueue(images)
        self._slots[:b], self._fresh[:b] = slots, fresh
        bufs = self._buffers
        self.session.copy_in(bufs["slots"], self._slots[:b])
        self.session.copy_in(bufs["fresh"], self._fresh[:b])
        self.head.launch(DeviceBatch(
            b, self.engine.f_ptr, self.engine.g_ptr, bufs["slots"].ptr, bufs["fresh"].ptr, bufs["fe_prob"].ptr,
            bufs["au_prob"].ptr, bufs["au_active"].ptr, bufs["top"].ptr, dtype=self.engine.feature_dtype))  # type: ignore[arg-type]
        for name, host in self._host.items():
            self.session.copy_out(host[:b], bufs[name])
        self.session.synchronize()
        times.infer_ms += (time.perf_counter() - t0) * 1e3
        times.head_ms = None
        h = self._host
        return HeadBatch(h["fe_prob"][:b].copy(), h["au_prob"][:b].copy(), h["au_active"][:b].astype(bool),
                         h["top"][:b].copy())

    def close(self) -> None:
        for buf in self._buffers.values():
            self.session.free(buf)
        self._buffers.clear()
