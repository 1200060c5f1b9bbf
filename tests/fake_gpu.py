"""A small fake `tensorrt` and cuda-python (driver API + NVRTC) that record every call, for tests without a GPU.

Only the hardware edge is faked, and only the calls the runtime makes:
- device memory is a dict of bytearrays; copies really move bytes (ctypes), so
  what the runtime reads back is what the "GPU" wrote;
- a built "engine" is a JSON document naming the ONNX it came from, its shape
  profile and build flags; executing it runs that ONNX with onnxruntime on the
  bytes in the input buffer and writes f/g into the output buffers;
- a head-kernel launch decodes the 21 kernel arguments from the parameter
  pointer array, exactly as CUDA would read them, and computes the NumPy
  reference head plus smoothing on the state buffers (the real kernel is
  checked against that reference in tests/test_kernel_emulated.py).
Failure switches (`init_error`, `nvrtc_error`, `corrupt_head`, ...) make one
step fail the way the driver would. `calls` is the ordered record.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import sys
import types
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from edge.head.params import head_params_from_arrays
from edge.head.reference import head_forward
from edge.head.smoothing import SmoothingSpec, TrackSmoother

OK = 0


class CUresult(IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_NO_DEVICE = 100
    CUDA_ERROR_OPERATING_SYSTEM = 304


class nvrtcResult(IntEnum):
    NVRTC_SUCCESS = 0
    NVRTC_ERROR_COMPILATION = 6


class CUdevice_attribute(IntEnum):
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


@dataclass
class FakeGpu:
    name: str = "Orin (fake)"
    cc: tuple[int, int] = (8, 7)
    trt_version: str = "10.3.0"
    init_error: CUresult | None = None  # cuInit fails with this (e.g. device nodes hidden by the sandbox)
    nvrtc_error: str | None = None  # NVRTC compile fails with this log
    corrupt_head: bool = False  # the "kernel" writes wrong probabilities
    parse_ok: bool = True
    calls: list[tuple] = field(default_factory=list)
    memory: dict[int, bytearray] = field(default_factory=dict)
    contexts: int = 0
    streams: set[int] = field(default_factory=set)
    modules: set[int] = field(default_factory=set)
    onnx: dict[str, bytes] = field(default_factory=dict)
    launches: list[dict] = field(default_factory=list)
    next_handle: int = 0x1000
    pushed: int = 0

    def handle(self) -> int:
        self.next_handle += 0x100000
        return self.next_handle

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    # ---- memory helpers
    def locate(self, ptr: int, n: int) -> tuple[bytearray, int]:
        for base, buf in self.memory.items():
            if base <= ptr and ptr + n <= base + len(buf):
                return buf, ptr - base
        raise AssertionError(f"access to unallocated device memory {ptr:#x}+{n}")

    def read(self, ptr: int, n: int) -> bytes:
        buf, off = self.locate(ptr, n)
        return bytes(buf[off : off + n])

    def write(self, ptr: int, data: bytes) -> None:
        buf, off = self.locate(ptr, len(data))
        buf[off : off + len(data)] = data

    def array(self, ptr: int, dtype, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        return np.frombuffer(self.read(ptr, size), dtype=dtype, count=count).copy()


class FakeDriver(types.ModuleType):
    """cuda.bindings.driver"""

    CUresult = CUresult
    CUdevice_attribute = CUdevice_attribute

    def __init__(self, gpu: FakeGpu) -> None:
        super().__init__("cuda.bindings.driver")
        self.gpu = gpu

    def _rec(self, *call) -> None:
        self.gpu.calls.append(call)

    def cuInit(self, flags):
        self._rec("cuInit", flags)
        return (self.gpu.init_error or CUresult.CUDA_SUCCESS,)

    def cuDeviceGet(self, ordinal):
        self._rec("cuDeviceGet", ordinal)
        return CUresult.CUDA_SUCCESS, ordinal

    def cuDeviceGetAttribute(self, attr, dev):
        value = self.gpu.cc[0] if attr == CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR else \
            self.gpu.cc[1]
        return CUresult.CUDA_SUCCESS, value

    def cuDeviceGetName(self, length, dev):
        return CUresult.CUDA_SUCCESS, self.gpu.name.encode().ljust(length, b"\0")

    def cuDevicePrimaryCtxRetain(self, dev):
        self._rec("cuDevicePrimaryCtxRetain", dev)
        self.gpu.contexts += 1
        return CUresult.CUDA_SUCCESS, 0xC0

    def cuDevicePrimaryCtxRelease(self, dev):
        self._rec("cuDevicePrimaryCtxRelease", dev)
        self.gpu.contexts -= 1
        return (CUresult.CUDA_SUCCESS,)

    def cuCtxPushCurrent(self, ctx):
        if ctx is None:
            return (CUresult.CUDA_ERROR_INVALID_VALUE,)
        self.gpu.pushed += 1
        return (CUresult.CUDA_SUCCESS,)

    def cuCtxPopCurrent(self):
        self.gpu.pushed -= 1
        return CUresult.CUDA_SUCCESS, 0xC0

    def _need_context(self, call: str) -> None:
        assert self.gpu.pushed > 0, f"{call} without a current context"

    def cuStreamCreate(self, flags):
        self._need_context("cuStreamCreate")
        h = self.gpu.handle()
        self.gpu.streams.add(h)
        self._rec("cuStreamCreate", h)
        return CUresult.CUDA_SUCCESS, h

    def cuStreamDestroy(self, stream):
        self._rec("cuStreamDestroy", stream)
        self.gpu.streams.discard(stream)
        return (CUresult.CUDA_SUCCESS,)

    def cuStreamSynchronize(self, stream):
        self._rec("cuStreamSynchronize", stream)
        return (CUresult.CUDA_SUCCESS,)

    def cuMemAlloc(self, n):
        self._need_context("cuMemAlloc")
        h = self.gpu.handle()
        self.gpu.memory[h] = bytearray(n)
        self._rec("cuMemAlloc", h, n)
        return CUresult.CUDA_SUCCESS, h

    def cuMemFree(self, ptr):
        self._rec("cuMemFree", ptr)
        assert self.gpu.memory.pop(ptr, None) is not None, f"double free of {ptr:#x}"
        return (CUresult.CUDA_SUCCESS,)

    def cuMemcpyHtoDAsync(self, dst, src, n, stream):
        self._rec("cuMemcpyHtoDAsync", dst, n, stream)
        self.gpu.write(dst, ctypes.string_at(src, n))
        return (CUresult.CUDA_SUCCESS,)

    def cuMemcpyDtoHAsync(self, dst, src, n, stream):
        self._rec("cuMemcpyDtoHAsync", src, n, stream)
        data = self.gpu.read(src, n)
        ctypes.memmove(dst, data, n)
        return (CUresult.CUDA_SUCCESS,)

    def cuMemcpyDtoDAsync(self, dst, src, n, stream):
        self._rec("cuMemcpyDtoDAsync", dst, src, n)
        self.gpu.write(dst, self.gpu.read(src, n))
        return (CUresult.CUDA_SUCCESS,)

    def cuMemsetD8Async(self, ptr, value, n, stream):
        self.gpu.write(ptr, bytes([value]) * n)
        return (CUresult.CUDA_SUCCESS,)

    def cuModuleLoadData(self, image):
        self._need_context("cuModuleLoadData")
        h = self.gpu.handle()
        self.gpu.modules.add(h)
        self._rec("cuModuleLoadData", bytes(image[:16]))
        return CUresult.CUDA_SUCCESS, h

    def cuModuleGetFunction(self, module, name):
        return CUresult.CUDA_SUCCESS, ("kernel", name.decode())

    def cuModuleUnload(self, module):
        self._rec("cuModuleUnload", module)
        self.gpu.modules.discard(module)
        return (CUresult.CUDA_SUCCESS,)

    def cuLaunchKernel(self, fn, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        self._need_context("cuLaunchKernel")
        pointers = (ctypes.c_uint64 * 21).from_address(params)
        ptr = [ctypes.c_uint64.from_address(pointers[i]).value for i in range(11)]
        ints = [ctypes.c_int32.from_address(pointers[i]).value for i in range(11, 17)]
        floats = [ctypes.c_float.from_address(pointers[i]).value for i in range(17, 21)]
        launch = {"function": fn[1], "grid": gx, "block": bx, "shared": shared, "stream": stream,
                  "f": ptr[0], "g": ptr[1], "out": ptr[7:11]}
        self.gpu.launches.append(launch)
        self._rec("cuLaunchKernel", fn[1], gx, stream)
        _reference_kernel(self.gpu, gx, fn[1], ptr, ints, floats)
        return (CUresult.CUDA_SUCCESS,)


def _reference_kernel(gpu: FakeGpu, batch: int, name: str, ptr: list[int], ints: list[int],
                      floats: list[float]) -> None:
    d, e, a, tracks, mode, window = ints
    alpha, scale, mix_fe, mix_au = floats
    dtype = np.float16 if name.endswith("f16") else np.float32
    f = gpu.array(ptr[0], dtype, batch * d).reshape(batch, d)
    g = gpu.array(ptr[1], dtype, batch * d).reshape(batch, d)
    r = 2 * e + 2 * a
    blob = gpu.array(ptr[2], np.float32, r * d + 2 * e + 2 * a + 2 * e * a)
    rows, tail = blob[: r * d].reshape(r, d), blob[r * d :]
    parts, at = {}, 0
    for key, shape in (("fe_bias", (e,)), ("au_bias", (a,)), ("prior_loglik", (e, a)), ("prior_bias", (e,)),
                       ("prior_expect", (a, e)), ("au_threshold", (a,))):
        n = int(np.prod(shape))
        parts[key] = tail[at : at + n].reshape(shape)
        at += n
    params = head_params_from_arrays({
        "fe_weight": rows[:e], "fe_proto": rows[e : 2 * e], "au_weight": rows[2 * e : 2 * e + a],
        "au_proto": rows[2 * e + a :], **parts, "scale": np.float32(scale), "mix_fe": np.float32(mix_fe),
        "mix_au": np.float32(mix_au)}, "<fake kernel>")
    out = head_forward(params, f, g)
    mode_name = {0: "none", 1: "ema", 2: "window"}[mode]
    spec = SmoothingSpec(mode_name, alpha=alpha, window=window, max_tracks=tracks)  # type: ignore[arg-type]
    smoother = TrackSmoother(spec, e + a)
    n_state = tracks * spec.depth * (e + a)
    smoother.values[...] = gpu.array(ptr[5], np.float32, n_state).reshape(smoother.values.shape)
    smoother.counters[...] = gpu.array(ptr[6], np.int32, tracks * 2).reshape(tracks, 2)
    slots = gpu.array(ptr[3], np.int32, batch)
    fresh = gpu.array(ptr[4], np.uint8, batch).astype(bool)
    smoothed = smoother.update(np.concatenate([out.fe_prob, out.au_prob], axis=1), slots, fresh)
    gpu.write(ptr[5], smoother.values.tobytes())
    gpu.write(ptr[6], smoother.counters.tobytes())
    fe, au = smoothed[:, :e].astype(np.float32), smoothed[:, e:].astype(np.float32)
    if gpu.corrupt_head:
        fe = np.roll(fe, 1, axis=1)
    gpu.write(ptr[7], np.ascontiguousarray(fe).tobytes())
    gpu.write(ptr[8], np.ascontiguousarray(au).tobytes())
    gpu.write(ptr[9], (au >= params.au_threshold).astype(np.uint8).tobytes())
    gpu.write(ptr[10], np.argmax(fe, axis=1).astype(np.int32).tobytes())


class FakeNvrtc(types.ModuleType):
    """cuda.bindings.nvrtc"""

    nvrtcResult = nvrtcResult

    def __init__(self, gpu: FakeGpu) -> None:
        super().__init__("cuda.bindings.nvrtc")
        self.gpu = gpu

    @staticmethod
    def _fill(buffer: bytes, data: bytes) -> None:
        """cuda-python writes into the caller's bytes buffer; so does this fake."""
        ctypes.memmove(ctypes.c_char_p(buffer), data, min(len(buffer), len(data)))

    def nvrtcCreateProgram(self, src, name, n, headers, includes):
        self.gpu.calls.append(("nvrtcCreateProgram", name))
        return nvrtcResult.NVRTC_SUCCESS, {"src": src}

    def nvrtcCompileProgram(self, prog, n, opts):
        self.gpu.calls.append(("nvrtcCompileProgram", tuple(opts)))
        if self.gpu.nvrtc_error:
            return (nvrtcResult.NVRTC_ERROR_COMPILATION,)
        prog["cubin"] = b"\x7fELF-fake-cubin-" + hashlib.sha256(prog["src"]).digest()
        return (nvrtcResult.NVRTC_SUCCESS,)

    def nvrtcGetProgramLogSize(self, prog):
        return nvrtcResult.NVRTC_SUCCESS, len(self.gpu.nvrtc_error or "") + 2

    def nvrtcGetProgramLog(self, prog, buffer):
        self._fill(buffer, (self.gpu.nvrtc_error or "").encode())
        return (nvrtcResult.NVRTC_SUCCESS,)

    def nvrtcGetCUBINSize(self, prog):
        return nvrtcResult.NVRTC_SUCCESS, len(prog["cubin"])

    def nvrtcGetCUBIN(self, prog, buffer):
        self._fill(buffer, prog["cubin"])
        return (nvrtcResult.NVRTC_SUCCESS,)

    def nvrtcDestroyProgram(self, prog):
        return (nvrtcResult.NVRTC_SUCCESS,)


# ------------------------------------------------------------------ tensorrt


def fake_tensorrt(gpu: FakeGpu) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = gpu.trt_version
    major = int(gpu.trt_version.split(".")[0])

    class Severity(IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        def __init__(self) -> None:
            pass

    ILogger.Severity = Severity  # type: ignore[attr-defined]

    class NetworkDefinitionCreationFlag(IntEnum):
        EXPLICIT_BATCH = 0
        STRONGLY_TYPED = 1

    builder_flags = {"TF32": 7} if major >= 11 else {"FP16": 0, "INT8": 1, "TF32": 7}  # 11.x removed INT8/FP16
    BuilderFlag = IntEnum("BuilderFlag", builder_flags)

    class MemoryPoolType(IntEnum):
        WORKSPACE = 0

    class TensorIOMode(IntEnum):
        INPUT = 1
        OUTPUT = 2

    class DataType(IntEnum):
        FLOAT = 0
        HALF = 1

    def nptype(dt):
        return {DataType.FLOAT: np.float32, DataType.HALF: np.float16}[dt]

    class Tensor:
        def __init__(self, name: str) -> None:
            self.name = name

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.onnx = flags, b""

        def get_input(self, i: int) -> Tensor:
            return Tensor("image")

    class Parser:
        def __init__(self, network: Network, logger: Any) -> None:
            self.network, self.num_errors = network, 0 if gpu.parse_ok else 1

        def parse(self, data: bytes) -> bool:
            self.network.onnx = data
            return gpu.parse_ok

        def get_error(self, i: int) -> str:
            return "fake parse error: unsupported node"

    class TimingCache:
        def serialize(self) -> bytes:
            return b"timing-cache"

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name, lo, opt, hi) -> None:
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self) -> None:
            self.flags: list[str] = []
            self.profiles: list[Profile] = []
            self.workspace = 0

        def set_memory_pool_limit(self, pool, n) -> None:
            self.workspace = n

        def set_flag(self, flag) -> None:
            self.flags.append(flag.name)

        def create_timing_cache(self, data: bytes) -> TimingCache:
            gpu.calls.append(("create_timing_cache", bytes(data)))
            return TimingCache()

        def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
            return True

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return 0

        def get_timing_cache(self) -> TimingCache:
            return TimingCache()

    class Builder:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> Network:
            gpu.calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config):
            digest = hashlib.sha256(network.onnx).hexdigest()
            gpu.onnx[digest] = network.onnx
            (shapes,) = [p.shapes for p in config.profiles]
            plan = {"trt": gpu.trt_version, "onnx": digest, "profile": shapes["image"], "flags": config.flags,
                    "network_flags": network.flags}
            gpu.calls.append(("build", json.loads(json.dumps(plan))))
            self.logger.log(Severity.WARNING, "fake builder: INT8 tactics chosen from Q/DQ scales")
            return json.dumps(plan).encode()

    class Engine:
        def __init__(self, plan: dict) -> None:
            self.plan = plan
            self.num_io_tensors = 3
            self._names = ["image", "f", "g"]

        def get_tensor_name(self, i: int) -> str:
            return self._names[i]

        def get_tensor_mode(self, name: str):
            return TensorIOMode.INPUT if name == "image" else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str):
            return DataType.FLOAT

        def get_tensor_profile_shape(self, name: str, index: int):
            return self.plan["profile"]

        def create_execution_context(self):
            return Context(self)

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine, self.addresses, self.shape = engine, {}, None
            import onnxruntime as ort

            self.session = ort.InferenceSession(gpu.onnx[engine.plan["onnx"]], providers=["CPUExecutionProvider"])

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            gpu.calls.append(("set_tensor_address", name, ptr))
            self.addresses[name] = ptr
            return True

        def set_input_shape(self, name: str, shape) -> bool:
            lo, _, hi = self.engine.plan["profile"]
            ok = all(lo_i <= s <= hi_i for lo_i, s, hi_i in zip(lo, shape, hi, strict=True))
            gpu.calls.append(("set_input_shape", tuple(shape), ok))
            self.shape = tuple(shape) if ok else None
            return ok

        def execute_async_v3(self, stream: int) -> bool:
            gpu.calls.append(("execute_async_v3", stream))
            assert self.shape is not None
            n = int(np.prod(self.shape))
            x = gpu.array(self.addresses["image"], np.float32, n).reshape(self.shape)
            f, g = self.session.run(["f", "g"], {"image": x})
            gpu.write(self.addresses["f"], np.ascontiguousarray(f, np.float32).tobytes())
            gpu.write(self.addresses["g"], np.ascontiguousarray(g, np.float32).tobytes())
            return True

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            gpu.calls.append(("deserialize", len(data)))
            try:
                plan = json.loads(data)
            except ValueError:
                return None
            if plan.get("trt") != gpu.trt_version or plan.get("onnx") not in gpu.onnx:
                return None
            return Engine(plan)

    for name, value in {"ILogger": ILogger, "Logger": ILogger, "NetworkDefinitionCreationFlag":
                        NetworkDefinitionCreationFlag, "BuilderFlag": BuilderFlag, "MemoryPoolType": MemoryPoolType,
                        "TensorIOMode": TensorIOMode, "DataType": DataType, "nptype": nptype, "Builder": Builder,
                        "OnnxParser": Parser, "Runtime": Runtime}.items():
        setattr(trt, name, value)
    return trt


def install(monkeypatch, gpu: FakeGpu, *, tensorrt: bool = True) -> FakeGpu:
    """Put the fakes where `import tensorrt` and `from cuda.bindings import driver, nvrtc` find them."""
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.driver, bindings.nvrtc = FakeDriver(gpu), FakeNvrtc(gpu)  # type: ignore[attr-defined]
    cuda.bindings = bindings  # type: ignore[attr-defined]
    modules = {"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.driver": bindings.driver,
               "cuda.bindings.nvrtc": bindings.nvrtc}
    if tensorrt:
        modules["tensorrt"] = fake_tensorrt(gpu)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return gpu
