"""Teacher model configurations: `tiny` (CPU, tests, default recipe) and `base` (the paper's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.labels import BASIC_EXPRESSIONS, DEFAULT_LABELS, LabelSpace


class SSMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    dim: int = Field(gt=0, description="feature width D of f, g and the prototypes")
    image_size: int = Field(ge=16)
    clip_len: int = Field(ge=1, description="max frames per clip for the temporal transformers")
    backbone: Literal["conv", "vit"]
    conv_widths: tuple[int, ...] = (24, 48, 96, 128)
    vit_patch: int = 16
    vit_width: int = 768
    vit_layers: int = 12
    vit_heads: int = 12
    moe_blocks: int = 6
    moe_experts: int = 4
    moe_hidden: int = 512
    temporal_depth: int = 1
    temporal_heads: int = 8
    temporal_dim_head: int = 64
    temporal_mlp: int = 1024
    text_encoder: Literal["hashed", "clip", "minilm"] = "hashed"
    text_width: int = 512  # CLIP text tower width (text_encoder="clip")
    text_layers: int = 12
    text_heads: int = 8
    n_ctx: int = Field(default=8, ge=0)
    clip_weights: Path | None = Field(default=None, description="local OpenAI-layout CLIP state dict (.pt)")
    aus: tuple[int, ...] = DEFAULT_LABELS.aus
    expressions: tuple[str, ...] = BASIC_EXPRESSIONS
    scale_init: float = 10.0  # paper: 0.1 / 0.01

    @model_validator(mode="after")
    def _check(self) -> SSMConfig:
        LabelSpace(self.aus, self.expressions)
        if self.temporal_heads * self.temporal_dim_head <= 0:
            raise ValueError("temporal heads x dim_head must be positive")
        return self

    @property
    def labels(self) -> LabelSpace:
        return LabelSpace(self.aus, self.expressions)


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(name="tiny", dim=96, image_size=112, clip_len=16, backbone="conv", conv_widths=(16, 32, 64, 96),
                 temporal_heads=4,
                 temporal_dim_head=24, temporal_mlp=192, text_encoder="hashed", n_ctx=4),
    "base": dict(name="base", dim=512, image_size=224, clip_len=16, backbone="vit", text_encoder="clip", n_ctx=8),
}


def ssm_config(name: str, **overrides: Any) -> SSMConfig:
    """A preset with overrides, e.g. `ssm_config("base", vit_layers=2)` for a cheap shape test."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown teacher config {name!r}; known: {sorted(PRESETS)}") from None
    return SSMConfig(**{**base, **overrides})
