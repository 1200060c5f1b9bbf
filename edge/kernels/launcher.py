"""Launchers for the fused head kernel: pycuda (the TensorRT engine path) and CuPy.

`launch(DeviceBatch, stream)` works on device pointers the caller owns (the
engine's output buffers) and enqueues one kernel on the caller's stream: no
host round trip and no synchronisation. `run(...)` is a host-array convenience
(upload, launch, download) for tests, the bundle self-test and benchmarks.
The parameters and the smoothing state live in device memory owned here.
Missing pycuda / CuPy / GPU raises `CudaUnavailableError`; `edge.head.select_head`
falls back to NumPy on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.head.params import HeadParams
from edge.head.runner import HeadBatch
from edge.head.smoothing import SmoothingSpec, check_slots
from edge.kernels.layout import (
    ENTRY_POINTS,
    DeviceBatch,
    LaunchShape,
    kernel_args,
    kernel_source,
    pack_params,
    state_sizes,
)


class CudaUnavailableError(RuntimeError):
    """The CUDA path cannot run here (no bindings, no driver or no GPU); use the NumPy head."""


def _host_inputs(
    params: HeadParams, f: np.ndarray, g: np.ndarray, slots: np.ndarray, fresh: np.ndarray, max_tracks: int
):
    f = np.ascontiguousarray(f)
    g = np.ascontiguousarray(g)
    if f.dtype != g.dtype or str(f.dtype) not in ENTRY_POINTS:
        raise ValueError(f"f and g must both be float32 or both float16, got {f.dtype} and {g.dtype}")
    if f.ndim != 2 or f.shape != g.shape or f.shape[1] != params.dim:
        raise ValueError(f"f and g must both have shape (batch, {params.dim}), got {f.shape} and {g.shape}")
    slots, fresh = check_slots(slots, fresh, f.shape[0], max_tracks)
    return f, g, slots.astype(np.int32), fresh.astype(np.uint8)


class _FusedHead:
    backend = "cuda"

    def __init__(self, params: HeadParams, spec: SmoothingSpec, threads: int = 256) -> None:
        self.params = params
        self.spec = spec
        self.shape = LaunchShape.for_params(params, threads)
        self.n_state, self.n_counters = state_sizes(params, spec)

    def _empty(self) -> HeadBatch:
        host = {k: np.empty(shape, dtype=dt) for k, (shape, dt) in self._outputs(0).items()}
        return HeadBatch(host["fe_prob"], host["au_prob"], host["au_active"].astype(bool), host["top"])

    def _outputs(self, batch: int) -> dict[str, tuple[tuple[int, ...], type]]:
        e, a = self.params.n_fe, self.params.n_au
        return {
            "fe_prob": ((batch, e), np.float32),
            "au_prob": ((batch, a), np.float32),
            "au_active": ((batch, a), np.uint8),
            "top": ((batch,), np.int32),
        }


class CupyHead(_FusedHead):
    """CuPy launcher: NVRTC compiles ssm_head.cu (cached by CuPy); for GPUs without pycuda."""

    backend = "cupy"

    def __init__(self, params: HeadParams, spec: SmoothingSpec, threads: int = 256) -> None:
        super().__init__(params, spec, threads)
        self._cp = _import_cupy()
        cp = self._cp
        module = cp.RawModule(code=kernel_source())
        self._functions = {dtype: module.get_function(name) for dtype, name in ENTRY_POINTS.items()}
        self._params = cp.asarray(pack_params(params))
        self._state = cp.zeros(max(self.n_state, 1), dtype=cp.float32)
        self._counters = cp.zeros(self.n_counters, dtype=cp.int32)

    def reset(self) -> None:
        """Forget every track's smoothing state."""
        self._state.fill(0)
        self._counters.fill(0)

    def _stream(self, stream: Any) -> Any:
        if stream is None:
            return self._cp.cuda.get_current_stream()
        if isinstance(stream, int):
            return self._cp.cuda.ExternalStream(stream)
        return stream

    def launch(self, batch: DeviceBatch, stream: Any = None) -> None:
        """Enqueue one launch; `stream`: a raw cudaStream_t (int), a CuPy stream, or None (current)."""
        if batch.batch == 0:
            return
        args = kernel_args(
            batch, self.params, self.spec, self._params.data.ptr, self._state.data.ptr, self._counters.data.ptr
        )
        with self._stream(stream):
            self._functions[batch.dtype](
                (batch.batch,), (self.shape.threads,), args, shared_mem=self.shape.shared_bytes
            )

    def run(self, f: np.ndarray, g: np.ndarray, slots: np.ndarray, fresh: np.ndarray) -> HeadBatch:
        cp = self._cp
        f, g, slots, fresh = _host_inputs(self.params, f, g, slots, fresh, self.spec.max_tracks)
        if f.shape[0] == 0:
            return self._empty()
        ins = [cp.asarray(x) for x in (f, g, slots, fresh)]
        outs = {k: cp.empty(shape, dtype=dt) for k, (shape, dt) in self._outputs(f.shape[0]).items()}
        ptrs = {k: v.data.ptr for k, v in outs.items()}
        batch = DeviceBatch(f.shape[0], *(x.data.ptr for x in ins), **ptrs, dtype=str(f.dtype))  # type: ignore[arg-type]
        self.launch(batch)
        host = {k: cp.asnumpy(v) for k, v in outs.items()}
        return HeadBatch(host["fe_prob"], host["au_prob"], host["au_active"].astype(bool), host["top"])

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of the smoothing state, shaped like `TrackSmoother.values` / `.counters`."""
        c = self.params.n_fe + self.params.n_au
        values = self._cp.asnumpy(self._state[: self.n_state]).reshape(self.spec.max_tracks, self.spec.depth, c)
        return values, self._cp.asnumpy(self._counters).reshape(self.spec.max_tracks, 2)


class PycudaHead(_FusedHead):
    """pycuda launcher, the engine path: shares the context and stream with the TensorRT engine.

    Uses the current CUDA context, or pushes the device's primary context (the one
    TensorRT and cuda-python use). `cubin`: a prebuilt cubin for this GPU
    (`python -m edge.kernels.build`); otherwise SourceModule compiles with nvcc once
    and caches the result.
    """

    backend = "pycuda"

    def __init__(self, params: HeadParams, spec: SmoothingSpec, threads: int = 256, cubin: Path | None = None) -> None:
        super().__init__(params, spec, threads)
        self._cuda = cuda = _import_pycuda()
        self._context = None
        if cuda.Context.get_current() is None:
            self._context = cuda.Device(0).retain_primary_context()
            self._context.push()
        if cubin is not None:
            module = cuda.module_from_file(str(cubin))
        else:
            from pycuda.compiler import SourceModule

            module = SourceModule(kernel_source(), no_extern_c=True, options=["-O3"])
        self._functions = {dtype: module.get_function(name) for dtype, name in ENTRY_POINTS.items()}
        self._params = cuda.to_device(pack_params(params))
        self._state = cuda.mem_alloc(4 * max(self.n_state, 1))
        self._counters = cuda.mem_alloc(4 * self.n_counters)
        self.reset()

    def reset(self) -> None:
        """Forget every track's smoothing state."""
        self._cuda.memset_d32(self._state, 0, max(self.n_state, 1))
        self._cuda.memset_d32(self._counters, 0, self.n_counters)

    def launch(self, batch: DeviceBatch, stream: Any = None) -> None:
        """Enqueue one launch on `stream`: the engine's `pycuda.driver.Stream` (None: the default stream)."""
        if batch.batch == 0:
            return
        if stream is not None and not isinstance(stream, self._cuda.Stream):
            raise TypeError(f"the pycuda launcher needs a pycuda.driver.Stream, got {type(stream).__name__}")
        args = kernel_args(batch, self.params, self.spec, int(self._params), int(self._state), int(self._counters))
        self._functions[batch.dtype](
            *args,
            block=(self.shape.threads, 1, 1),
            grid=(batch.batch, 1),
            shared=self.shape.shared_bytes,
            stream=stream,
        )

    def run(self, f: np.ndarray, g: np.ndarray, slots: np.ndarray, fresh: np.ndarray) -> HeadBatch:
        cuda = self._cuda
        f, g, slots, fresh = _host_inputs(self.params, f, g, slots, fresh, self.spec.max_tracks)
        if f.shape[0] == 0:
            return self._empty()
        ins = [cuda.to_device(x) for x in (f, g, slots, fresh)]
        host = {k: np.empty(shape, dtype=dt) for k, (shape, dt) in self._outputs(f.shape[0]).items()}
        outs = {k: cuda.mem_alloc(max(v.nbytes, 1)) for k, v in host.items()}
        batch = DeviceBatch(
            f.shape[0], *(int(x) for x in ins), **{k: int(v) for k, v in outs.items()}, dtype=str(f.dtype)
        )  # type: ignore[arg-type]
        self.launch(batch)
        for k, v in host.items():
            cuda.memcpy_dtoh(v, outs[k])
        return HeadBatch(host["fe_prob"], host["au_prob"], host["au_active"].astype(bool), host["top"])

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        c = self.params.n_fe + self.params.n_au
        values = np.empty(max(self.n_state, 1), np.float32)
        counters = np.empty(self.n_counters, np.int32)
        self._cuda.memcpy_dtoh(values, self._state)
        self._cuda.memcpy_dtoh(counters, self._counters)
        return values[: self.n_state].reshape(self.spec.max_tracks, self.spec.depth, c), counters.reshape(-1, 2)

    def close(self) -> None:
        """Pop the primary context this launcher pushed (if it pushed one)."""
        if self._context is not None:
            self._context.pop()
            self._context = None


def _import_cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:
        raise CudaUnavailableError(f"CuPy is not installed ({exc}); e.g. pip install cupy-cuda12x") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver / no device
        raise CudaUnavailableError(f"CuPy finds no usable CUDA device: {exc}") from None
    if count < 1:
        raise CudaUnavailableError("CuPy finds no CUDA device")
    return cupy


def _import_pycuda() -> Any:
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise CudaUnavailableError(f"pycuda is not installed ({exc}); on Jetson: pip install pycuda") from None
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:  # pycuda.driver.Error: no driver / no device
        raise CudaUnavailableError(f"pycuda finds no usable CUDA device: {exc}") from None
    if count < 1:
        raise CudaUnavailableError("pycuda finds no CUDA device")
    return cuda
