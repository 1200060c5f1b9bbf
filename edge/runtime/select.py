"""Pick the inference backend for this machine from the config's `model.backend`."""

from __future__ import annotations

import logging

from edge.bundle import Bundle
from edge.config.models import ModelConfig
from edge.runtime.backend import Backend, BackendError
from edge.runtime.engine_cache import EngineCache

log = logging.getLogger(__name__)


def open_backend(bundle: Bundle, config: ModelConfig) -> Backend:
    if config.backend in ("auto", "tensorrt"):
        try:
            from edge.runtime.tensorrt_engine import BuildOptions, TensorRTBackend

            return TensorRTBackend(bundle, EngineCache(config.engine_cache_dir), BuildOptions(config.batch_max))
        except BackendError as exc:
            if config.backend == "tensorrt":
                raise
            log.info("TensorRT not used (%s); falling back to onnxruntime", exc)
    from edge.runtime.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(bundle, threads=config.threads, spin_wait=config.spin_wait)
