"""The fused head kernel on a `CudaSession` (cuda-python): module loading, parameters, smoothing state, launches.

`launch(DeviceBatch)` enqueues one kernel on the session's stream on device
pointers the caller owns (the TensorRT engine's f/g output buffers): no host
round trip, no synchronisation. `run(...)` is the host-array form (upload,
launch, download) with `NumpyHead.run`'s signature, for tests and benchmarks.

The module comes from a prebuilt cubin for this GPU when one matches the
kernel source (`python -m edge.kernels.build`, docs/jetson.md), else from NVRTC
in-process: no nvcc and no PATH are needed at run time. Any failure to get or
load it is `CudaUnavailableError`, on which `select_head("auto")` falls back to
the NumPy head.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge.head.params import HeadParams
from edge.head.runner import HeadBatch
from edge.head.smoothing import SmoothingSpec, check_slots
from edge.kernels.build import cubin_name
from edge.kernels.layout import (
    ENTRY_POINTS,
    DeviceBatch,
    LaunchShape,
    kernel_args,
    kernel_source,
    pack_params,
    state_sizes,
)
from edge.runtime.cuda_binding import CudaError, CudaUnavailableError, check
from edge.runtime.cuda_session import CudaSession, DeviceBuffer

log = logging.getLogger(__name__)
__all__ = ["CudaHead", "CudaUnavailableError", "compile_with_nvrtc"]


def compile_with_nvrtc(session: CudaSession, arch: str) -> bytes:
    """The kernel source compiled in-process for `arch` (e.g. sm_87) into a cubin."""
    nv = session.binding.nvrtc
    prog = check(nv.nvrtcCreateProgram(kernel_source().encode(), b"ssm_head.cu", 0, [], []), "nvrtcCreateProgram")
    try:
        opts = [f"--gpu-architecture={arch}".encode(), b"-O3"]
        status = nv.nvrtcCompileProgram(prog, len(opts), opts)
        try:
            check(status, "nvrtcCompileProgram")
        except CudaError:
            size = check(nv.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
            text = b" " * int(size)
            check(nv.nvrtcGetProgramLog(prog, text), "nvrtcGetProgramLog")
            raise CudaUnavailableError(f"NVRTC cannot compile ssm_head.cu for {arch}: "
                                       f"{text.decode(errors='replace').strip()}") from None
        size = check(nv.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = b" " * int(size)
        check(nv.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return cubin
    finally:
        check(nv.nvrtcDestroyProgram(prog), "nvrtcDestroyProgram")


class CudaHead:
    """The fused head on one session; parameters and the smoothing state live in device memory owned here."""

    backend = "cuda"

    def __init__(self, params: HeadParams, spec: SmoothingSpec, session: CudaSession, threads: int = 256,
                 kernel_dir: Path | None = None) -> None:
        self.params, self.spec, self.session = params, spec, session
        self.shape = LaunchShape.for_params(params, threads)
        self.n_state, self.n_counters = state_sizes(params, spec)
        self._module = None
        self._buffers: list[DeviceBuffer] = []
        drv = session.binding.driver
        try:
            image, self.source = self._module_image(kernel_dir)
            with session.active():
                self._module = check(drv.cuModuleLoadData(image), "cuModuleLoadData")
                self._functions = {dtype: check(drv.cuModuleGetFunction(self._module, name.encode()),
                                                "cuModuleGetFunction") for dtype, name in ENTRY_POINTS.items()}
            self._params = self._keep(session.upload(pack_params(params)))
            self._state = self._keep(session.alloc(4 * max(self.n_state, 1)))
            self._counters = self._keep(session.alloc(4 * self.n_counters))
            self.reset()
        except CudaUnavailableError:
            self.close()
            raise
        except Exception as exc:  # a module that does not load is a reason to run the NumPy head, not to stop
            self.close()
            raise CudaUnavailableError(f"the fused head kernel cannot load: {exc}") from None

    def _module_image(self, kernel_dir: Path | None) -> tuple[bytes, str]:
        arch = self.session.info.arch
        if kernel_dir is not None and (kernel_dir / cubin_name(arch)).is_file():
            path = kernel_dir / cubin_name(arch)
            return path.read_bytes(), f"cubin {path}"
        return compile_with_nvrtc(self.session, arch), f"NVRTC ({arch})"

    def _keep(self, buf: DeviceBuffer) -> DeviceBuffer:
        self._buffers.append(buf)
        return buf

    def reset(self) -> None:
        """Forget every track's smoothing state."""
        self.session.zero(self._state)
        self.session.zero(self._counters)
        self.session.synchronize()

    def launch(self, batch: DeviceBatch) -> None:
        """Enqueue one launch on the session stream; every pointer in `batch` is device memory the caller owns."""
        if batch.batch == 0:
            return
        args = kernel_args(batch, self.params, self.spec, self._params.ptr, self._state.ptr, self._counters.ptr)
        holders = [np.array([a]) for a in args]  # kept alive until the launch call returns
        pointers = np.array([h.ctypes.data for h in holders], dtype=np.uint64)
        with self.session.active():
            check(self.session.binding.driver.cuLaunchKernel(
                self._functions[batch.dtype], batch.batch, 1, 1, self.shape.threads, 1, 1, self.shape.shared_bytes,
                self.session.stream, pointers.ctypes.data, 0), "cuLaunchKernel")

    def run(self, f: np.ndarray, g: np.ndarray, slots: np.ndarray, fresh: np.ndarray) -> HeadBatch:
        """Host arrays in and out (upload, launch, download): tests, benchmarks, the CPU-feature path."""
        f, g = np.ascontiguousarray(f), np.ascontiguousarray(g)
        if f.dtype != g.dtype or str(f.dtype) not in ENTRY_POINTS:
            raise ValueError(f"f and g must both be float32 or both float16, got {f.dtype} and {g.dtype}")
        if f.ndim != 2 or f.shape != g.shape or f.shape[1] != self.params.dim:
            raise ValueError(f"f and g must both have shape (batch, {self.params.dim}), got {f.shape} and {g.shape}")
        slots, fresh = check_slots(slots, fresh, f.shape[0], self.spec.max_tracks)
        b = f.shape[0]
        host = self.outputs(b)
        if b == 0:
            return HeadBatch(host["fe_prob"], host["au_prob"], host["au_active"].astype(bool), host["top"])
        ins = [np.ascontiguousarray(x) for x in (f, g, slots.astype(np.int32), fresh.astype(np.uint8))]
        temp = [self.session.alloc(x.nbytes) for x in ins] + [self.session.alloc(v.nbytes) for v in host.values()]
        try:
            for buf, x in zip(temp, ins, strict=False):
                self.session.copy_in(buf, x)
            outs = dict(zip(host, temp[4:], strict=True))
            self.launch(DeviceBatch(b, *(x.ptr for x in temp[:4]), **{k: v.ptr for k, v in outs.items()},
                                    dtype=str(f.dtype)))  # type: ignore[arg-type]
            for k, v in host.items():
                self.session.copy_out(v, outs[k])
            self.session.synchronize()
        finally:
            for buf in temp:
                self.session.free(buf)
        return HeadBatch(host["fe_prob"], host["au_prob"], host["au_active"].astype(bool), host["top"])

    def outputs(self, batch: int) -> dict[str, np.ndarray]:
        """Empty host arrays of the kernel's outputs for `batch` faces."""
        e, a = self.params.n_fe, self.params.n_au
        return {"fe_prob": np.empty((batch, e), np.float32), "au_prob": np.empty((batch, a), np.float32),
                "au_active": np.empty((batch, a), np.uint8), "top": np.empty(batch, np.int32)}

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of the smoothing state, shaped like `TrackSmoother.values` / `.counters`."""
        c = self.params.n_fe + self.params.n_au
        values = np.empty(max(self.n_state, 1), np.float32)
        counters = np.empty(self.n_counters, np.int32)
        self.session.copy_out(values, self._state)
        self.session.copy_out(counters, self._counters)
        self.session.synchronize()
        return values[: self.n_state].reshape(self.spec.max_tracks, self.spec.depth, c), counters.reshape(-1, 2)

    def load_state(self, values: np.ndarray, counters: np.ndarray) -> None:
        """Take over a smoothing state of the same layout (a hot swap that keeps tracks)."""
        c = self.params.n_fe + self.params.n_au
        if values.shape != (self.spec.max_tracks, self.spec.depth, c) or counters.shape != (self.spec.max_tracks, 2):
            raise ValueError(f"smoothing state of shape {values.shape}/{counters.shape} does not fit this head")
        v, n = np.ascontiguousarray(values, np.float32), np.ascontiguousarray(counters, np.int32)
        self.session.copy_in(self._state, v)
        self.session.copy_in(self._counters, n)
        self.session.synchronize()

    def close(self) -> None:
        """Free the parameters, the state and the module (the session itself belongs to the runtime)."""
        for buf in self._buffers:
            self.session.free(buf)
        self._buffers.clear()
        if self._module is not None:
            try:
                with self.session.active():
                    check(self.session.binding.driver.cuModuleUnload(self._module), "cuModuleUnload")
            except Exception as exc:
                log.warning("cannot unload the head kernel module: %s", exc)
            self._module = None
