"""Pick the inference backend for this machine from the config's `model.backend`.

"auto" tries TensorRT and falls back to onnxruntime on *any* failure to get it
running (no bindings, no CUDA driver, device nodes hidden by the sandbox, an
unsupported JetPack, a failed engine build), logging why; "tensorrt" turns the
same failures into one `BackendError` naming the cause.
"""

from __future__ import annotations

import logging

from edge.bundle import Bundle
from edge.config.models import ModelConfig
from edge.runtime.backend import Backend, BackendError
from edge.runtime.engine_cache import EngineCache

log = logging.getLogger(__name__)


def open_tensorrt(bundle: Bundle, config: ModelConfig) -> Backend:
    from edge.runtime.platform import read_platform
    from edge.runtime.tensorrt_engine import BuildOptions, TensorRTBackend

    return TensorRTBackend(bundle, EngineCache(config.engine_cache_dir), BuildOptions(config.batch_max),
                           platform=read_platform())


def open_backend(bundle: Bundle, config: ModelConfig) -> Backend:
    if config.backend in ("auto", "tensorrt"):
        try:
            return open_tensorrt(bundle, config)
        except Exception as exc:
            from edge.runtime.cuda_binding import CudaUnavailableError
            from edge.runtime.tensorrt_engine import TensorRTMissing

            clear = isinstance(exc, BackendError | CudaUnavailableError)  # messages that already say what failed
            reason = str(exc) if clear else f"{type(exc).__name__}: {exc}"
            if config.backend == "tensorrt":
                raise BackendError(f"model.backend = \"tensorrt\" cannot run: {reason}") from None
            # Not installed is the normal case off a Jetson; installed but failing is worth a warning.
            level = logging.INFO if isinstance(exc, TensorRTMissing) else logging.WARNING
            log.log(level, "TensorRT not used (%s); falling back to onnxruntime", reason)
    from edge.runtime.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(bundle, threads=config.threads, spin_wait=config.spin_wait)
