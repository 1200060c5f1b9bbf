"""TensorRT 10: build (or load from cache) the student's INT8 engine and run it with pycuda.

Explicit quantization: the Q/DQ nodes of the bundle's `onnx_tensorrt` graph set
every INT8 scale, so no calibrator is involved; FP16 is allowed for whatever
TensorRT keeps in float. This module needs JetPack's `tensorrt` and `pycuda`
and fails with `BackendError` naming what is missing; it has never run in CI
(no GPU there): tests cover the cache keys, atomic writes and error paths only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import Bundle, sha256_file
from edge.runtime.backend import BackendError, Features
from edge.runtime.engine_cache import EngineCache, EngineKey

log = logging.getLogger(__name__)
WORKSPACE_BYTES = 256 << 20


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendError(
            "TensorRT Python bindings are not importable: on a Jetson install JetPack's python3-libnvinfer "
            "and use a venv created with --system-site-packages (docs/jetson.md); elsewhere use "
            "backend = \"onnxruntime\""
        ) from exc
    return tensorrt


def import_pycuda() -> Any:
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise BackendError("pycuda is not importable: `pip install pycuda` against JetPack's CUDA") from exc
    return cuda


@dataclass(frozen=True)
class BuildOptions:
    max_batch: int = 8
    fp16: bool = True
    workspace_bytes: int = WORKSPACE_BYTES


def compute_capability(cuda: Any, device: int = 0) -> str:
    major, minor = cuda.Device(device).compute_capability()
    return f"{major}.{minor}"


def build_engine(trt: Any, onnx_path: Path, input_shape: tuple[int, int, int], options: BuildOptions,
                 timing_cache: bytes) -> tuple[bytes, bytes]:
    """Build a serialized engine; returns (engine bytes, updated timing cache bytes)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.set_flag(trt.BuilderFlag.INT8)
    if options.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, (1, *input_shape), (1, *input_shape), (options.max_batch, *input_shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def engine_for_bundle(bundle: Bundle, cache: EngineCache, options: BuildOptions = BuildOptions()) -> bytes:
    """A prebuilt engine from the bundle if one matches this device, else the cached or a fresh build."""
    trt, cuda = import_tensorrt(), import_pycuda()
    cuda.init()
    onnx_path = bundle.role("onnx_tensorrt")
    if onnx_path is None:
        raise BackendError(f"bundle {bundle.path} has no onnx_tensorrt graph")
    key = EngineKey(trt.__version__, compute_capability(cuda), sha256_file(onnx_path))
    for entry in bundle.manifest.engines:
        if (entry.target.tensorrt, entry.target.compute_capability, entry.onnx_sha256) == (
            key.tensorrt, key.compute_capability, key.onnx_sha256,
        ):
            log.info("using prebuilt engine %s from the bundle", entry.file)
            return bundle.file(entry.file).read_bytes()
    cached = cache.load(key)
    if cached is not None:
        return cached
    spec = bundle.manifest.input
    log.info("building TensorRT engine %s (first start with this bundle; this takes a while)", key.stem)
    engine, timing = build_engine(trt, onnx_path, (spec.channels, spec.crop_size, spec.crop_size), options,
                                  cache.load_timing(key))
    cache.store(key, engine)
    cache.store_timing(key, timing)
    return engine


class TensorRTBackend:
    """Runs the engine on its own CUDA stream; outputs stay on the device for the fused head kernel."""

    name = "tensorrt"
    role = "onnx_tensorrt"

    def __init__(self, bundle: Bundle, cache: EngineCache, options: BuildOptions = BuildOptions()) -> None:
        trt, cuda = import_tensorrt(), import_pycuda()
        cuda.init()
        self.cuda = cuda
        self.context_cuda = cuda.Device(0).make_context()
        try:
            engine_bytes = engine_for_bundle(bundle, cache, options)
            self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_bytes)
            if self.engine is None:
                raise BackendError("TensorRT could not deserialize the engine (version or GPU mismatch?)")
            self.context = self.engine.create_execution_context()
            self.stream = cuda.Stream()
            spec = bundle.manifest.input
            self.input_shape = (spec.channels, spec.crop_size, spec.crop_size)
            self.max_batch, self.dim = options.max_batch, bundle.manifest.output.feature_dim
            self.input_name = next(
                self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)
                if self.engine.get_tensor_mode(self.engine.get_tensor_name(i)) == trt.TensorIOMode.INPUT
            )
            self.host_in = cuda.pagelocked_empty((self.max_batch, *self.input_shape), np.float32)
            self.dev_in = cuda.mem_alloc(self.host_in.nbytes)
            self.host_out = {n: cuda.pagelocked_empty((self.max_batch, self.dim), np.float32) for n in ("f", "g")}
            self.dev_out = {n: cuda.mem_alloc(h.nbytes) for n, h in self.host_out.items()}
            self.context.set_tensor_address(self.input_name, int(self.dev_in))
            for n, ptr in self.dev_out.items():
                self.context.set_tensor_address(n, int(ptr))
        finally:
            self.context_cuda.pop()

    def enqueue(self, images: np.ndarray) -> int:
        """Copy in and launch on `self.stream`; f/g are left in `self.dev_out` for the head kernel."""
        batch = len(images)
        if batch > self.max_batch:
            raise BackendError(f"batch {batch} exceeds the engine's max batch {self.max_batch}")
        self.host_in[:batch] = images
        self.cuda.memcpy_htod_async(self.dev_in, self.host_in[:batch], self.stream)
        self.context.set_input_shape(self.input_name, (batch, *self.input_shape))
        if not self.context.execute_async_v3(self.stream.handle):
            raise BackendError("TensorRT execute_async_v3 failed")
        return batch

    def infer(self, images: np.ndarray) -> Features:
        self.context_cuda.push()
        try:
            batch = self.enqueue(images)
            for n in ("f", "g"):
                self.cuda.memcpy_dtoh_async(self.host_out[n][:batch], self.dev_out[n], self.stream)
            self.stream.synchronize()
        finally:
            self.context_cuda.pop()
        return Features(self.host_out["f"][:batch].copy(), self.host_out["g"][:batch].copy())

    def describe(self) -> str:
        return f"TensorRT engine (max batch {self.max_batch})"
