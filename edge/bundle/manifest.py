"""The bundle manifest schema (`manifest.json`), version 1.

A bundle is the unit of deployment: portable ONNX graphs, the semantic-head
parameters, golden vectors for the on-device self-test and optional prebuilt
TensorRT engines, each listed with sha256 and size. See docs/bundle.md.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge.labels import LabelError, LabelSpace

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
# Files a bundle directory may hold without being listed in the manifest.
UNLISTED_ALLOWED = frozenset({MANIFEST_NAME, SIGNATURE_NAME})

_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_NAME_PART = re.compile(r"^[A-Za-z0-9_.-]+$")

FileRole = Literal[
    "onnx_tensorrt",  # Q/DQ graph for TensorRT explicit quantization
    "onnx_cpu",  # graph lowered for onnxruntime on CPU
    "onnx_fp32",  # float reference graph
    "head",  # semantic head / prior mapping parameters (.npz)
    "golden_inputs",
    "golden_outputs",
    "engine",  # prebuilt TensorRT engine, see `engines`
    "doc",
    "other",
]


def check_relative_name(name: str) -> str:
    """A bundle file name: relative POSIX path, no `..`, no absolute path, no odd characters."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        raise ValueError(f"file name {name!r} must be a relative POSIX path")
    parts = PurePosixPath(name).parts
    if any(part in ("", ".", "..") for part in parts) or "//" in name or name.endswith("/"):
        raise ValueError(f"file name {name!r} must not contain '.', '..' or empty parts")
    if not all(_NAME_PART.match(part) for part in parts):
        raise ValueError(f"file name {name!r} may only use letters, digits, '_', '-', '.' and '/'")
    if len(parts) > 3:
        raise ValueError(f"file name {name!r} is nested too deep (3 levels at most)")
    return name


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    role: FileRole = "other"


class Labels(Strict):
    aus: list[int] = Field(min_length=1)
    expressions: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _known(self) -> Labels:
        try:
            self.space()
        except LabelError as exc:
            raise ValueError(str(exc)) from None
        return self

    def space(self) -> LabelSpace:
        return LabelSpace(tuple(self.aus), tuple(self.expressions))


class Alignment(Strict):
    """Five-point template (eye centres, nose tip, mouth corners) in crop pixels."""

    points: list[tuple[float, float]] = Field(min_length=5, max_length=5)


class InputSpec(Strict):
    tensor: str = "image"
    crop_size: int = Field(ge=16, le=1024)
    channels: Literal[1, 3] = 3
    color_order: Literal["RGB", "BGR", "GRAY"] = "RGB"
    layout: Literal["NCHW"] = "NCHW"
    scale: float = Field(default=1.0 / 255.0, gt=0)
    mean: list[float] = Field(min_length=1, max_length=3)
    std: list[float] = Field(min_length=1, max_length=3)
    alignment: Alignment

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values (one per channel)")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if (self.channels == 1) != (self.color_order == "GRAY"):
            raise ValueError("color_order GRAY goes with channels = 1 and only with it")
        for x, y in self.alignment.points:
            if not (0 <= x <= self.crop_size and 0 <= y <= self.crop_size):
                raise ValueError(f"alignment point ({x}, {y}) lies outside the {self.crop_size}px crop")
        return self


class OutputSpec(Strict):
    """What the backbone graph emits: per-face expression feature f and AU feature g."""

    f: str = "f"
    g: str = "g"
    feature_dim: int = Field(ge=1, le=4096)


OnnxRole = Literal["onnx_tensorrt", "onnx_cpu", "onnx_fp32"]


class Golden(Strict):
    """Golden vectors for the on-device self-test.

    `outputs` holds the probabilities the trained (fake-quantized) PyTorch model
    gives on `inputs`; `atol` is the allowed absolute difference in those
    probabilities for a backend running the graph of each role.
    """

    inputs: str
    outputs: str
    atol: dict[OnnxRole, float] = Field(min_length=1)

    @field_validator("atol")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        if any(not 0 < v < 1 for v in value.values()):
            raise ValueError("tolerances must be in (0, 1)")
        return value


class EngineTarget(Strict):
    """What a prebuilt engine was built for. The device runtime uses an entry only when every field matches
    it (edge/runtime/engine_cache.EngineKey); entries without the optional fields are ignored there."""

    tensorrt: str = Field(pattern=r"^\d+\.\d+(\.\d+)*$")
    compute_capability: str = Field(pattern=r"^\d+\.\d+$")
    device_model: str | None = Field(default=None, pattern=r"^[a-z0-9-]+$", description="Jetson board slug")
    l4t: str | None = Field(default=None, pattern=r"^\d+\.\d+\.\d+$")
    max_batch: int | None = Field(default=None, ge=1)
    precision: str | None = Field(default=None, pattern=r"^(strongly-typed|int8|int8\+fp16)$")


class EngineEntry(Strict):
    target: EngineTarget
    file: str
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Metric(Strict):
    model: str
    data: str
    values: dict[str, float]


class Manifest(Strict):
    schema_version: int
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    version: str
    build: int = Field(ge=1)
    created: datetime
    expires: datetime | None = None
    description: str = ""
    training_data: str = ""
    labels: Labels
    input: InputSpec
    output: OutputSpec
    files: dict[str, FileEntry] = Field(min_length=1)
    quantization: dict[str, Any] = Field(default_factory=dict)
    metrics: list[Metric] = Field(default_factory=list)
    golden: Golden | None = None
    engines: list[EngineEntry] = Field(default_factory=list)

    @field_validator("schema_version")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {value}; this software reads version {SCHEMA_VERSION}")
        return value

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str) -> str:
        if not _SEMVER.match(value):
            raise ValueError(f"version {value!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        return value

    @field_validator("created", "expires")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("timestamps need a UTC offset, e.g. 2026-11-21T12:00:00Z")
        return value

    @field_validator("files")
    @classmethod
    def _names(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for name in files:
            check_relative_name(name)
            if name in UNLISTED_ALLOWED:
                raise ValueError(f"{name} cannot be listed as a bundle file")
        return files

    @model_validator(mode="after")
    def _references(self) -> Manifest:
        def listed(name: str, where: str, role: str | None = None) -> None:
            if name not in self.files:
                raise ValueError(f"{where} names {name!r}, which is not in files")
            if role and self.files[name].role != role:
                raise ValueError(f"{where} names {name!r}, whose role is {self.files[name].role!r}, not {role!r}")

        if self.golden is not None:
            listed(self.golden.inputs, "golden.inputs", "golden_inputs")
            listed(self.golden.outputs, "golden.outputs", "golden_outputs")
        for i, engine in enumerate(self.engines):
            listed(engine.file, f"engines[{i}].file", "engine")
        if not any(f.role.startswith("onnx_") for f in self.files.values()):
            raise ValueError("files lists no ONNX graph (role onnx_tensorrt, onnx_cpu or onnx_fp32)")
        return self

    def file_for(self, role: str) -> str | None:
        """The first listed file with this role, or None."""
        return next((name for name, entry in self.files.items() if entry.role == role), None)

    @property
    def label_space(self) -> LabelSpace:
        return self.labels.space()
