"""TensorRT: a prebuilt, cached or freshly built INT8 engine for the bundle, run on the runtime's CUDA session.

Explicit quantization: the Q/DQ nodes of the bundle's `onnx_tensorrt` graph set
every INT8 scale; no calibrator is involved. The engine's input and f/g output
buffers are allocated on the `CudaSession`; `enqueue` leaves f/g there for the
fused head kernel (edge/runtime/device_step.py), `infer` copies them back for
the NumPy head. `close()` frees the execution context, engine, runtime and
buffers; the backend also owns its session and closes it.

TensorRT API branches, by the installed version:
- 8.6 (JetPack 6.0): `create_network(0)` would mean *implicit* batch there, so the
  network is created with `1 << EXPLICIT_BATCH`; explicit quantization still needs
  `BuilderFlag.INT8` (and `FP16` for the layers TensorRT keeps in float).
- 10.x (JetPack 6.1 and later): networks are always explicit batch; the network is
  created strongly typed (`1 << STRONGLY_TYPED`): every tensor's type follows the
  Q/DQ graph, and no precision builder flag is set.
- 11.x: `BuilderFlag.INT8` / `FP16` are gone and strong typing is always on; the
  10.x branch uses neither, so it is the 11.x branch too.
- below 8.6, or on JetPack 5: refused with one message (edge/runtime/platform.py).
Everything here is exercised in CI with a fake `tensorrt` and a fake cuda-python
(tests/fake_gpu.py); nothing of it has run on a GPU yet (docs/jetson.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import Bundle, sha256_file
from edge.runtime.backend import BackendError, Features
from edge.runtime.cuda_session import CudaSession, DeviceBuffer
from edge.runtime.engine_cache import EngineCache, EngineKey
from edge.runtime.platform import JetsonPlatform, check_supported, version_tuple

log = logging.getLogger(__name__)
TRT_LOG = logging.getLogger("affect-sensor.tensorrt")
WORKSPACE_BYTES = 256 << 20


class TensorRTMissing(BackendError):
    """No TensorRT Python bindings here: the normal case off a Jetson."""


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTMissing(
            "TensorRT Python bindings are not importable: on a Jetson install JetPack's python3-libnvinfer "
            "and use a venv created with --system-site-packages (docs/jetson.md); elsewhere use "
            "backend = \"onnxruntime\""
        ) from exc
    return tensorrt


def python_logger(trt: Any) -> Any:
    """A `trt.ILogger` that forwards to Python logging ("affect-sensor.tensorrt"); TensorRT's INFO is DEBUG here."""
    sev = trt.ILogger.Severity
    levels = {sev.INTERNAL_ERROR: logging.CRITICAL, sev.ERROR: logging.ERROR, sev.WARNING: logging.WARNING,
              sev.INFO: logging.DEBUG, sev.VERBOSE: logging.DEBUG}

    class _PythonLogger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            TRT_LOG.log(levels.get(severity, logging.INFO), "%s", msg)

    return _PythonLogger()


@dataclass(frozen=True)
class BuildOptions:
    max_batch: int = 16
    fp16: bool = True  # TensorRT 8.6 only: float layers may run in FP16 (10.x: types come from the graph)
    workspace_bytes: int = WORKSPACE_BYTES


def precision_mode(tensorrt_version: str, fp16: bool) -> str:
    if version_tuple(tensorrt_version)[0] >= 10:
        return "strongly-typed"
    return "int8+fp16" if fp16 else "int8"


def engine_key(trt_version: str, compute_capability: str, onnx_path: Path, input_shape: tuple[int, int, int],
               options: BuildOptions, platform: JetsonPlatform | None) -> EngineKey:
    return EngineKey(
        tensorrt=trt_version, compute_capability=compute_capability, onnx_sha256=sha256_file(onnx_path),
        input_shape=input_shape, max_batch=options.max_batch, precision=precision_mode(trt_version, options.fp16),
        workspace_mib=options.workspace_bytes >> 20, device_model=platform.model_slug if platform else "",
        l4t=platform.l4t if platform else "",
    )


def find_prebuilt(bundle: Bundle, key: EngineKey) -> tuple[Path | None, list[str]]:
    """A bundle engine built for exactly this key, and why each other entry was passed over."""
    passed: list[str] = []
    for entry in bundle.manifest.engines:
        t = entry.target
        wanted = {"tensorrt": key.tensorrt, "compute_capability": key.compute_capability,
                  "onnx_sha256": key.onnx_sha256, "max_batch": key.max_batch, "precision": key.precision,
                  "device_model": key.device_model or None, "l4t": key.l4t or None}
        have = {**t.model_dump(), "onnx_sha256": entry.onnx_sha256}
        wrong = [name for name, value in wanted.items() if have.get(name) != value]
        if not wrong:
            return bundle.file(entry.file), passed
        passed.append(f"{entry.file}: {', '.join(f'{n} {have.get(n)!r} (here {wanted[n]!r})' for n in wrong)}")
    return None, passed


def build_engine(trt: Any, logger: Any, onnx_path: Path, key: EngineKey, options: BuildOptions,
                 timing_cache: bytes) -> tuple[bytes, bytes]:
    """Build a serialized engine with the key's shape profile and precision; returns (engine, timing cache)."""
    builder = trt.Builder(logger)
    flag = trt.NetworkDefinitionCreationFlag
    strongly_typed = key.precision == "strongly-typed"
    network = builder.create_network(1 << int(flag.STRONGLY_TYPED if strongly_typed else flag.EXPLICIT_BATCH))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if not strongly_typed:  # TensorRT 8.6: Q/DQ scales are used only with the INT8 flag set
        config.set_flag(trt.BuilderFlag.INT8)
        if key.precision == "int8+fp16":
            config.set_flag(trt.BuilderFlag.FP16)
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    one = (1, *key.input_shape)
    profile.set_shape(name, one, one, (key.max_batch, *key.input_shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def obtain_engine(trt: Any, logger: Any, bundle: Bundle, cache: EngineCache, key: EngineKey,
                  options: BuildOptions) -> tuple[bytes, str]:
    """(engine bytes, where they came from: "prebuilt", "cache" or "built")."""
    prebuilt, passed = find_prebuilt(bundle, key)
    for reason in passed:
        log.info("prebuilt engine not used: %s", reason)
    if prebuilt is not None:
        log.info("using prebuilt engine %s from the bundle", prebuilt.name)
        return prebuilt.read_bytes(), "prebuilt"
    cached = cache.load(key)
    if cached is not None:
        log.info("using cached engine %s", cache.engine_path(key))
        return cached, "cache"
    onnx_path = bundle.role("onnx_tensorrt")
    assert onnx_path is not None  # checked by the caller
    log.info("building TensorRT engine %s (first start with this bundle and settings; this takes a while)", key.stem)
    engine, timing = build_engine(trt, logger, onnx_path, key, options, cache.load_timing(key))
    cache.store(key, engine)
    cache.store_timing(key, timing)
    return engine, "built"


class TensorRTBackend:
    """The engine on its own session; f/g stay on the device for the fused head kernel."""

    name = "tensorrt"
    role = "onnx_tensorrt"

    def __init__(self, bundle: Bundle, cache: EngineCache, options: BuildOptions = BuildOptions(),
                 platform: JetsonPlatform | None = None, session: CudaSession | None = None) -> None:
        self.trt = trt = import_tensorrt()
        check_supported(platform, trt.__version__)
        onnx_path = bundle.role("onnx_tensorrt")
        if onnx_path is None:
            raise BackendError(f"bundle {bundle.path} has no onnx_tensorrt graph")
        self.cuda_session = session if session is not None else CudaSession()
        self.context = self.engine = self.runtime = None
        self._buffers: dict[str, DeviceBuffer] = {}
        try:
            self._open(bundle, cache, options, platform, onnx_path)
        except BaseException:
            self.close()
            raise

    def _open(self, bundle: Bundle, cache: EngineCache, options: BuildOptions, platform: JetsonPlatform | None,
              onnx_path: Path) -> None:
        trt, session = self.trt, self.cuda_session
        spec, out = bundle.manifest.input, bundle.manifest.output
        self.input_shape = (spec.channels, spec.crop_size, spec.crop_size)
        self.max_batch, self.dim = options.max_batch, out.feature_dim
        self.logger = python_logger(trt)  # must outlive runtime and engine
        self.key = engine_key(trt.__version__, session.info.compute_capability, onnx_path, self.input_shape, options,
                              platform)
        with session.active():
            engine_bytes, self.source = obtain_engine(trt, self.logger, bundle, cache, self.key, options)
            self.runtime = trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
            if self.engine is None:
                raise BackendError(f"TensorRT could not deserialize the {self.source} engine {self.key.stem} "
                                   "(TensorRT or GPU mismatch?); delete it from the engine cache to rebuild")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1 or not {out.f, out.g} <= set(names):
            raise BackendError(f"engine I/O {names} is not one input plus outputs {out.f!r}, {out.g!r}")
        self.input_name = inputs[0]
        profile_max = self.engine.get_tensor_profile_shape(self.input_name, 0)[2]
        if int(profile_max[0]) < self.max_batch:
            raise BackendError(f"engine profile allows batch {int(profile_max[0])}, model.batch_max is "
                               f"{self.max_batch}; delete the stale engine {self.key.stem}")
        dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in (self.input_name, out.f, out.g)}
        if dtypes[self.input_name] != np.float32 or {dtypes[out.f], dtypes[out.g]} - {np.dtype(np.float32),
                                                                                      np.dtype(np.float16)}:
            raise BackendError(f"engine tensor types {dtypes} are not float32 in, float32/float16 out")
        self.feature_dtype = str(dtypes[out.f])
        if dtypes[out.g] != dtypes[out.f]:
            raise BackendError("engine outputs f and g differ in type")
        self._host_in = np.zeros((self.max_batch, *self.input_shape), np.float32)
        self._buffers["input"] = session.alloc(self._host_in.nbytes)
        for role, name in (("f", out.f), ("g", out.g)):
            self._buffers[role] = session.alloc(self.max_batch * self.dim * dtypes[name].itemsize)
        with session.active():
            for name, role in ((self.input_name, "input"), (out.f, "f"), (out.g, "g")):
                if not self.context.set_tensor_address(name, self._buffers[role].ptr):
                    raise BackendError(f"TensorRT refused the device address for tensor {name!r}")
        log.info("TensorRT %s engine %s (%s) on %s", trt.__version__, self.key.stem, self.source,
                 session.info.name)

    @property
    def f_ptr(self) -> int:
        return self._buffers["f"].ptr

    @property
    def g_ptr(self) -> int:
        return self._buffers["g"].ptr

    def enqueue(self, images: np.ndarray) -> int:
        """Copy in and run on the session stream; f/g are left in the device buffers for the head kernel."""
        batch = len(images)
        if not 1 <= batch <= self.max_batch:
            raise BackendError(f"batch of {batch} faces: the engine takes 1 to {self.max_batch}")
        if images.shape[1:] != self.input_shape:
            raise BackendError(f"input of shape {images.shape[1:]}, the engine takes {self.input_shape}")
        self._host_in[:batch] = images
        self.cuda_session.copy_in(self._buffers["input"], self._host_in[:batch])
        with self.cuda_session.active():
            if not self.context.set_input_shape(self.input_name, (batch, *self.input_shape)):
                raise BackendError(f"TensorRT refused input shape {(batch, *self.input_shape)}")
            if not self.context.execute_async_v3(self.cuda_session.stream_handle):
                raise BackendError("TensorRT execute_async_v3 failed (see the log above)")
        return batch

    def infer(self, images: np.ndarray) -> Features:
        """f/g back on the host (the NumPy-head path and benchmarks)."""
        batch = self.enqueue(images)
        dtype = np.dtype(self.feature_dtype)
        f, g = (np.empty((batch, self.dim), dtype) for _ in range(2))
        self.cuda_session.copy_out(f, self._buffers["f"])
        self.cuda_session.copy_out(g, self._buffers["g"])
        self.cuda_session.synchronize()
        return Features(f, g)

    def describe(self) -> str:
        return f"TensorRT {self.trt.__version__} engine ({self.source}, max batch {self.max_batch}, " \
               f"{self.key.precision}) on {self.cuda_session.info.name}"

    def close(self) -> None:
        """Free context, engine, runtime (in that order), the buffers, then the session."""
        session = getattr(self, "cuda_session", None)
        if session is not None:
            try:
                with session.active():
                    self.context = self.engine = self.runtime = None
            except Exception:
                self.context = self.engine = self.runtime = None
            for buf in self._buffers.values():
                session.free(buf)
            self._buffers.clear()
            session.close()
