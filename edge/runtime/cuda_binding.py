"""The one CUDA binding of the device runtime: NVIDIA's cuda-python (driver API and NVRTC).

Chosen because NVIDIA's own TensorRT Python samples use it (samples/python/common_runtime.py;
TensorRT 10.14 replaced every pycuda use with it), it installs as a wheel with no compiler
(pycuda builds against the local CUDA, which needs nvcc on PATH at pip time), and NVRTC
compiles the head kernel in-process, so no nvcc is needed at run time (docs/kernel.md).

Version branches, written down once here:
- cuda-python >= 12.6 ships the modules as `cuda.bindings.driver` / `cuda.bindings.nvrtc`;
  older 12.x releases (and JetPack-era installs) as `cuda.cuda` / `cuda.nvrtc`; 13.x dropped
  the old layout. Both are tried, new first.
- Every call returns a tuple whose first element is the status (`CUresult` / `nvrtcResult`);
  `check` turns a non-zero status into `CudaError` with the status name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class CudaUnavailableError(RuntimeError):
    """The CUDA path cannot run here (no binding, no driver, no GPU, sandboxed device nodes)."""


class CudaError(RuntimeError):
    """A CUDA driver or NVRTC call failed; the message names the call and the status."""


@dataclass(frozen=True)
class CudaBinding:
    driver: Any
    nvrtc: Any


def import_binding() -> CudaBinding:
    """The installed cuda-python modules, or `CudaUnavailableError` saying how to install them."""
    try:
        from cuda.bindings import driver, nvrtc  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cuda as driver  # cuda-python < 12.6
            from cuda import nvrtc
        except ImportError as exc:
            raise CudaUnavailableError(
                f"cuda-python is not importable ({exc}): pip install the `jetson` extra (cuda-python), "
                "docs/jetson.md") from None
    return CudaBinding(driver, nvrtc)


def status_code(status: Any) -> int:
    return int(getattr(status, "value", status))


def check(result: Any, call: str) -> Any:
    """Unpack a cuda-python result tuple: raise `CudaError` on a bad status, else return the value(s)."""
    status, *values = result if isinstance(result, tuple) else (result,)
    code = status_code(status)
    if code != 0:
        name = getattr(status, "name", str(code))
        raise CudaError(f"{call} failed: {name} ({code})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)
