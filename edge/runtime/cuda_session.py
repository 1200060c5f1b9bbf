"""One CUDA context, one stream and every device buffer of one model runtime, freed together by `close()`.

The TensorRT engine and the fused head kernel share this session: the engine
writes f/g into buffers allocated here, the kernel reads them on the same
stream, and only the final probabilities are copied back. The context is the
device's primary context (the one the CUDA runtime, and so TensorRT, uses),
retained once per session and released on close; every call pushes it for its
own duration, so a session opened on the swap worker thread runs on the frame
loop's thread too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from edge.runtime.cuda_binding import CudaBinding, CudaUnavailableError, check, import_binding

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceBuffer:
    ptr: int
    nbytes: int


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7"

    @property
    def arch(self) -> str:
        return "sm_" + self.compute_capability.replace(".", "")


class CudaSession:
    """Owns a retained primary context, a stream and allocations; every failure to start is `CudaUnavailableError`."""

    def __init__(self, device: int = 0, binding: CudaBinding | None = None) -> None:
        self.binding = binding if binding is not None else import_binding()
        drv = self.binding.driver
        self._buffers: dict[int, DeviceBuffer] = {}
        self._context = self._stream = None
        try:
            check(drv.cuInit(0), "cuInit")
            self._device = check(drv.cuDeviceGet(device), "cuDeviceGet")
            attr = drv.CUdevice_attribute
            major = check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, self._device),
                          "cuDeviceGetAttribute")
            minor = check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, self._device),
                          "cuDeviceGetAttribute")
            raw = check(drv.cuDeviceGetName(96, self._device), "cuDeviceGetName")
            name = raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            self.info = GpuInfo(name, f"{int(major)}.{int(minor)}")
            self._context = check(drv.cuDevicePrimaryCtxRetain(self._device), "cuDevicePrimaryCtxRetain")
            with self.active():
                self._stream = check(drv.cuStreamCreate(0), "cuStreamCreate")
        except Exception as exc:  # driver missing, no device, device nodes hidden by the sandbox, ...
            self.close()
            raise CudaUnavailableError(f"CUDA cannot start on device {device}: {exc}") from None

    @property
    def stream_handle(self) -> int:
        """The raw stream handle TensorRT's execute_async_v3 takes."""
        return int(self._stream)

    @property
    def stream(self):
        return self._stream

    @contextmanager
    def active(self) -> Iterator[None]:
        """Make this session's context current for the calls inside (any thread)."""
        drv = self.binding.driver
        check(drv.cuCtxPushCurrent(self._context), "cuCtxPushCurrent")
        try:
            yield
        finally:
            check(drv.cuCtxPopCurrent(), "cuCtxPopCurrent")

    def alloc(self, nbytes: int) -> DeviceBuffer:
        with self.active():
            ptr = int(check(self.binding.driver.cuMemAlloc(max(int(nbytes), 1)), "cuMemAlloc"))
        buf = DeviceBuffer(ptr, int(nbytes))
        self._buffers[ptr] = buf
        return buf

    def upload(self, host: np.ndarray) -> DeviceBuffer:
        """A new buffer holding `host` (synchronously: for constants at load time)."""
        host = np.ascontiguousarray(host)
        buf = self.alloc(host.nbytes)
        self.copy_in(buf, host)
        self.synchronize()
        return buf

    def copy_in(self, buf: DeviceBuffer, host: np.ndarray) -> None:
        """Enqueue host -> device on the session stream (`host` must stay alive until the next synchronize)."""
        if host.nbytes > buf.nbytes:
            raise ValueError(f"{host.nbytes} bytes do not fit a {buf.nbytes}-byte device buffer")
        if host.nbytes:
            with self.active():
                check(self.binding.driver.cuMemcpyHtoDAsync(buf.ptr, host.ctypes.data, host.nbytes, self._stream),
                      "cuMemcpyHtoDAsync")

    def copy_out(self, host: np.ndarray, buf: DeviceBuffer) -> None:
        """Enqueue device -> host into the C-contiguous array `host` (valid after synchronize)."""
        if not host.flags.c_contiguous or host.nbytes > buf.nbytes:
            raise ValueError("copy_out needs a C-contiguous host array no larger than the device buffer")
        if host.nbytes:
            with self.active():
                check(self.binding.driver.cuMemcpyDtoHAsync(host.ctypes.data, buf.ptr, host.nbytes, self._stream),
                      "cuMemcpyDtoHAsync")

    def zero(self, buf: DeviceBuffer) -> None:
        with self.active():
            check(self.binding.driver.cuMemsetD8Async(buf.ptr, 0, buf.nbytes, self._stream), "cuMemsetD8Async")

    def synchronize(self) -> None:
        with self.active():
            check(self.binding.driver.cuStreamSynchronize(self._stream), "cuStreamSynchronize")

    def free(self, buf: DeviceBuffer) -> None:
        if self._buffers.pop(buf.ptr, None) is not None:
            with self.active():
                check(self.binding.driver.cuMemFree(buf.ptr), "cuMemFree")

    @property
    def allocated(self) -> int:
        """Bytes currently allocated through this session (teardown tests check it reaches 0)."""
        return sum(b.nbytes for b in self._buffers.values())

    def close(self) -> None:
        """Free every buffer, destroy the stream, release the context; safe to call twice, never raises."""
        drv = self.binding.driver
        if self._context is not None:
            try:
                with self.active():
                    for buf in list(self._buffers.values()):
                        check(drv.cuMemFree(buf.ptr), "cuMemFree")
                    if self._stream is not None:
                        check(drv.cuStreamDestroy(self._stream), "cuStreamDestroy")
            except Exception as exc:  # teardown of a broken context: report, never mask the real error
                log.warning("CUDA teardown incomplete: %s", exc)
            try:
                check(drv.cuDevicePrimaryCtxRelease(self._device), "cuDevicePrimaryCtxRelease")
            except Exception as exc:
                log.warning("CUDA context release failed: %s", exc)
        self._buffers.clear()
        self._stream = self._context = None
