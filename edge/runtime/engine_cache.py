"""Where TensorRT engines and timing caches live, keyed so a stale engine is never loaded.

An engine is valid only for the TensorRT version and GPU (compute capability)
that built it, and only for the exact ONNX it came from: all three go into the
key. Files are written to a temp name, fsynced and renamed, so a power cut
mid-build leaves either no engine or a whole one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edge.fsutil import atomic_write


@dataclass(frozen=True)
class EngineKey:
    tensorrt: str
    compute_capability: str
    onnx_sha256: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"\d+(\.\d+)+", self.tensorrt):
            raise ValueError(f"TensorRT version {self.tensorrt!r} is not like 10.3.0")
        if not re.fullmatch(r"\d+\.\d+", self.compute_capability):
            raise ValueError(f"compute capability {self.compute_capability!r} is not like 8.7")
        if not re.fullmatch(r"[0-9a-f]{64}", self.onnx_sha256):
            raise ValueError("onnx_sha256 must be 64 lowercase hex digits")

    @property
    def stem(self) -> str:
        return f"trt{self.tensorrt}-sm{self.compute_capability.replace('.', '')}-{self.onnx_sha256[:16]}"


class EngineCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def engine_path(self, key: EngineKey) -> Path:
        return self.root / f"{key.stem}.engine"

    def timing_cache_path(self, key: EngineKey) -> Path:
        # The timing cache depends on TensorRT version and GPU, not on the model.
        return self.root / f"timing-trt{key.tensorrt}-sm{key.compute_capability.replace('.', '')}.cache"

    def load(self, key: EngineKey) -> bytes | None:
        path = self.engine_path(key)
        return path.read_bytes() if path.is_file() else None

    def store(self, key: EngineKey, engine: bytes) -> Path:
        if not engine:
            raise ValueError("refusing to cache an empty engine")
        path = self.engine_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, engine)
        return path

    def load_timing(self, key: EngineKey) -> bytes:
        path = self.timing_cache_path(key)
        return path.read_bytes() if path.is_file() else b""

    def store_timing(self, key: EngineKey, data: bytes) -> None:
        if data:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(self.timing_cache_path(key), data)
