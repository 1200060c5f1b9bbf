"""Teacher model configurations: `tiny` (CPU, tests, default recipe), `base` (the paper's), `real`, and
`public-bp4d` / `public-disfa` (the public SSM code's model, to load its checkpoints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.labels import BASIC_EXPRESSIONS, DATASET_AUS, DEFAULT_LABELS, LabelSpace


class SSMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    dim: int = Field(gt=0, description="feature width D of f, g and the prototypes")
    image_size: int = Field(ge=16)
    in_channels: Literal[1, 3] = Field(default=3, description="1: grey input (conv backbone only), 3: RGB")
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
    ctx_per_class: bool = Field(default=False, description="one set of context vectors per class (public SSM)")
    # Parts, for ablations (docs/teacher.md): the DPM formulation ("ssm": the public code's two softmax maps;
    # "sigmoid": one logit-corrected sigmoid matrix; "off": the fixed FACS prior, no prototype transfer),
    # textual prototypes (off: no prototype branch) and the output-level prior (this project's addition).
    dpm: Literal["ssm", "sigmoid", "off"] = "sigmoid"
    tsp: bool = True
    output_prior: bool = True
    # Public-code parts (docs/teacher.md, "Fidelity to the public code"); the defaults keep this project's model.
    au_temporal: Literal["transformer", "local"] = Field(
        default="transformer", description="AU temporal module: our transformer, or the public local frame attention")
    au_local_radius: int = Field(default=1, ge=1, description="frames each side seen by au_temporal='local'")
    au_smooth: int | None = Field(default=None, ge=0,
                                  description="half-window K of the public two-frame AU logit filter; None: off")
    learn_scale: bool = Field(default=True, description="False: similarity scale fixed at scale_init (public: 10)")
    moe_shared_act: Literal["quick_gelu", "gelu"] = Field(
        default="quick_gelu", description="shared-expert activation; the public MoE uses exact GELU")
    moe_dispatch: Literal["topk", "public"] = Field(
        default="topk", description="public: the public code's expert dispatch order (public_ckpt.PublicDispatchMoE)")
    public_prompts: Literal["bp4d", "disfa"] | None = Field(
        default=None, description="TSP prompts as the public code builds them for that AU dataset "
                                  "(quantize.ssm.public_ckpt.PublicPrompts); None: our label descriptions")
    clip_weights: Path | None = Field(default=None, description="local OpenAI-layout CLIP state dict (.pt)")
    aus: tuple[int, ...] = DEFAULT_LABELS.aus
    expressions: tuple[str, ...] = BASIC_EXPRESSIONS
    scale_init: float = 10.0  # paper: 0.1 / 0.01

    @model_validator(mode="after")
    def _check(self) -> SSMConfig:
        LabelSpace(self.aus, self.expressions)
        if self.in_channels != 3 and self.backbone != "conv":
            raise ValueError("grey input (in_channels = 1) needs the conv backbone: CLIP's ViT takes RGB")
        if self.temporal_heads * self.temporal_dim_head <= 0:
            raise ValueError("temporal heads x dim_head must be positive")
        if self.au_temporal == "local" and self.temporal_heads * self.temporal_dim_head != self.dim:
            raise ValueError(f"au_temporal='local' needs temporal_heads x temporal_dim_head == dim "
                             f"({self.temporal_heads} x {self.temporal_dim_head} != {self.dim})")
        if self.public_prompts is not None and (self.text_encoder != "clip" or not self.tsp):
            raise ValueError("public_prompts needs tsp=True and text_encoder='clip' (the public prompts are CLIP "
                             "token embeddings)")
        return self

    @property
    def labels(self) -> LabelSpace:
        return LabelSpace(self.aus, self.expressions)


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(name="tiny", dim=96, image_size=112, clip_len=16, backbone="conv", conv_widths=(16, 32, 64, 96),
                 temporal_heads=4,
                 temporal_dim_head=24, temporal_mlp=192, text_encoder="hashed", n_ctx=4),
    "base": dict(name="base", dim=512, image_size=224, clip_len=16, backbone="vit", text_encoder="clip", n_ctx=8),
    # Real faces (docs/teacher.md): grey 48 px crops as the device sends them, a real sentence encoder for TSP.
    "real": dict(name="real", dim=128, image_size=48, in_channels=1, clip_len=16, backbone="conv",
                 conv_widths=(48, 96, 192, 384), temporal_heads=4, temporal_dim_head=32, temporal_mlp=256,
                 text_encoder="minilm", n_ctx=0, dpm="ssm"),
}

# The public SSM model (MSA-LMC/SSM) for one AU dataset, to load its checkpoints (quantize.ssm.public_ckpt): base's
# ViT-B/16 + CLIP text tower, 8 per-class context vectors, its DPM, fixed scale 10, no output-level prior, local AU
# attention + AU smoothing, and that dataset's AUs (in our AU order).
_PUBLIC = dict(dim=512, image_size=224, clip_len=16, backbone="vit", text_encoder="clip", n_ctx=8, ctx_per_class=True,
               dpm="ssm", output_prior=False, learn_scale=False, scale_init=10.0, au_temporal="local", au_smooth=2,
               moe_shared_act="gelu", moe_dispatch="public", expressions=BASIC_EXPRESSIONS)
for _dataset in ("bp4d", "disfa"):
    PRESETS[f"public-{_dataset}"] = dict(name=f"public-{_dataset}", aus=DATASET_AUS[_dataset],
                                         public_prompts=_dataset, **_PUBLIC)


def ssm_config(name: str, **overrides: Any) -> SSMConfig:
    """A preset with overrides, e.g. `ssm_config("base", vit_layers=2)` for a cheap shape test."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown teacher config {name!r}; known: {sorted(PRESETS)}") from None
    return SSMConfig(**{**base, **overrides})
