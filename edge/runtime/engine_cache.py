"""Where TensorRT engines and timing caches live, keyed so a stale engine is never loaded.

An engine is valid only for what built it, so everything that changes it is in
the key: the TensorRT version, the GPU (compute capability; on a Jetson also
the board name and L4T release, because Orin Nano, NX and AGX all report 8.7),
the input shape profile (the max batch), the precision mode (strongly typed, or
INT8/FP16 builder flags on TensorRT 8.6), the workspace limit and the exact
ONNX. The file name carries a digest of the whole key; a JSON file beside each
engine spells the key out. Files are written to a temp name, fsynced and
renamed, so a power cut mid-build leaves either no engine or a whole one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.fsutil import atomic_write


@dataclass(frozen=True)
class EngineKey:
    tensorrt: str
    compute_capability: str
    onnx_sha256: str
    input_shape: tuple[int, int, int] = (3, 112, 112)  # C, H, W of one face
    max_batch: int = 16  # the shape profile is (1, C, H, W) .. (max_batch, C, H, W)
    precision: str = "strongly-typed"  # or "int8+fp16" / "int8" (TensorRT 8.6 builder flags)
    workspace_mib: int = 256
    device_model: str = ""  # Jetson board slug; "" on other GPUs
    l4t: str = ""  # "36.4.3"; "" on other GPUs

    def __post_init__(self) -> None:
        if not re.fullmatch(r"\d+(\.\d+)+", self.tensorrt):
            raise ValueError(f"TensorRT version {self.tensorrt!r} is not like 10.3.0")
        if not re.fullmatch(r"\d+\.\d+", self.compute_capability):
            raise ValueError(f"compute capability {self.compute_capability!r} is not like 8.7")
        if not re.fullmatch(r"[0-9a-f]{64}", self.onnx_sha256):
            raise ValueError("onnx_sha256 must be 64 lowercase hex digits")
        if self.max_batch < 1 or len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(f"bad shape profile: max batch {self.max_batch}, input {self.input_shape}")

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def stem(self) -> str:
        return f"trt{self.tensorrt}-sm{self.compute_capability.replace('.', '')}-b{self.max_batch}-{self.digest}"

    @property
    def device_stem(self) -> str:
        """What the timing cache depends on: TensorRT and the exact GPU, not the model."""
        device = f"-{self.device_model}-l4t{self.l4t}" if self.device_model else ""
        return f"trt{self.tensorrt}-sm{self.compute_capability.replace('.', '')}{device}"


class EngineCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def engine_path(self, key: EngineKey) -> Path:
        return self.root / f"{key.stem}.engine"

    def timing_cache_path(self, key: EngineKey) -> Path:
        return self.root / f"timing-{key.device_stem}.cache"

    def load(self, key: EngineKey) -> bytes | None:
        path = self.engine_path(key)
        return path.read_bytes() if path.is_file() else None

    def store(self, key: EngineKey, engine: bytes) -> Path:
        if not engine:
            raise ValueError("refusing to cache an empty engine")
        path = self.engine_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, engine)
        atomic_write(path.with_suffix(".json"), (json.dumps(asdict(key), indent=1, sort_keys=True) + "\n").encode())
        return path

    def load_timing(self, key: EngineKey) -> bytes:
        path = self.timing_cache_path(key)
        return path.read_bytes() if path.is_file() else b""

    def store_timing(self, key: EngineKey, data: bytes) -> None:
        if data:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(self.timing_cache_path(key), data)
