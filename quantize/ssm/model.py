"""The SSM teacher: shared backbone, per-task temporal transformers, TSP, DPM and the semantic head.

`forward(fe_input, au_input)` takes an expression batch and an AU batch in one
call (one backbone pass over all their frames), as heterogeneous training needs
under DistributedDataParallel. `predict(x)` runs one batch for evaluation.

Per frame the model emits `f` (expression feature) and `g` (AU feature); the
semantic head pairs each frame's `g` with its clip's `f`. Clip-level
expression logits are the mean of the per-frame refined logits; AUs stay per
frame. A single image is a clip of length one, which is also what the
exported per-face graph computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from quantize.ssm.backbone import ConvBackbone, MoEFeedForward, VisionTransformer
from quantize.ssm.config import SSMConfig
from quantize.ssm.dpm import DynamicPriorMapping, FixedPriorMapping, SSMPriorMapping
from quantize.ssm.head import SemanticHead
from quantize.ssm.temporal import AUSmoothing, ClipPooling, FrameContext, LocalFrameContext
from quantize.ssm.text import ClipTextEncoder, HashedNgramEncoder, SentenceEncoder, TextEncoder
from quantize.ssm.tsp import TextualPrototypes


@dataclass
class SSMOutput:
    f: torch.Tensor  # B x D expression feature per clip
    g: torch.Tensor  # B x T x D AU feature per frame
    fe_logits: torch.Tensor  # B x E clip-level refined logits (cross-entropy)
    au_prob: torch.Tensor  # B x T x A refined AU probabilities (BCE)
    fe_proto_logits: torch.Tensor  # B x E, s * cos(f, T_E'): prototype-similarity branch
    au_proto_logits: torch.Tensor  # B x T x A, s * cos(g, T_A')


def build_text_encoder(cfg: SSMConfig, tokenize=None) -> TextEncoder:
    if cfg.text_encoder == "hashed":
        return HashedNgramEncoder(out_dim=cfg.dim)
    if cfg.text_encoder == "minilm":
        return SentenceEncoder()
    if tokenize is None and cfg.public_prompts is not None:
        from quantize.ssm.public_ckpt import lazy_clip_tokenizer

        tokenize = lazy_clip_tokenizer()  # public prompts come as token embeddings: the tokenizer is optional
    if tokenize is None:
        from quantize.ssm.clip_tokenizer import load_clip_tokenizer

        tokenize = load_clip_tokenizer()
    return ClipTextEncoder(tokenize, width=cfg.text_width, layers=cfg.text_layers, heads=cfg.text_heads,
                           out_dim=cfg.dim)


def as_clip(x: torch.Tensor) -> torch.Tensor:
    """B x C x H x W -> B x 1 x C x H x W (C = 1 grey or 3 RGB); clips pass through."""
    if x.ndim == 4:
        return x.unsqueeze(1)
    if x.ndim != 5 or x.shape[2] not in (1, 3):
        raise ValueError(f"expected images B x C x H x W or clips B x T x C x H x W (C = 1 or 3), got {tuple(x.shape)}")
    return x


class SSMTeacher(nn.Module):
    def __init__(self, cfg: SSMConfig, text_encoder: TextEncoder | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        labels = cfg.labels
        if cfg.backbone == "conv":
            self.backbone: nn.Module = ConvBackbone(cfg.dim, cfg.conv_widths, cfg.in_channels)
        else:
            self.backbone = VisionTransformer(cfg.image_size, cfg.vit_patch, cfg.vit_width, cfg.vit_layers,
                                              cfg.vit_heads, cfg.dim, cfg.moe_blocks, cfg.moe_experts,
                                              cfg.moe_hidden)
            for block in self.backbone.transformer.resblocks:  # public-code MoE details (docs/teacher.md)
                if isinstance(block.mlp, MoEFeedForward):
                    if cfg.moe_dispatch == "public":
                        from quantize.ssm.public_ckpt import PublicDispatchMoE

                        block.mlp = PublicDispatchMoE(cfg.vit_width, cfg.moe_experts, cfg.moe_hidden)
                    if cfg.moe_shared_act == "gelu":  # the public shared expert runs exact GELU, not QuickGELU
                        block.mlp.shared_act = nn.GELU()
        t_args = (cfg.dim, cfg.clip_len, cfg.temporal_depth, cfg.temporal_heads, cfg.temporal_dim_head,
                  cfg.temporal_mlp)
        self.fe_temporal = ClipPooling(*t_args)
        if cfg.au_temporal == "local":  # the public code's AU module (docs/teacher.md)
            self.au_temporal: nn.Module = LocalFrameContext(cfg.dim, cfg.temporal_depth, cfg.temporal_heads,
                                                            cfg.temporal_dim_head, cfg.au_local_radius)
        else:
            self.au_temporal = FrameContext(*t_args)
        self.tsp_fe: TextualPrototypes | None = None
        self.tsp_au: TextualPrototypes | None = None
        if cfg.tsp:
            self.text_encoder = text_encoder if text_encoder is not None else build_text_encoder(cfg)
            if cfg.clip_weights is not None:
                self.load_clip(cfg.clip_weights)
            if cfg.public_prompts is not None:  # the public code's prompts (quantize.ssm.public_ckpt)
                from quantize.ssm.public_ckpt import public_prompt_pair

                self.tsp_fe, self.tsp_au = public_prompt_pair(cfg, self.text_encoder)  # type: ignore[assignment]
            else:
                self.tsp_fe = TextualPrototypes(labels.expression_texts(), self.text_encoder, cfg.n_ctx, cfg.dim,
                                                cfg.ctx_per_class)
                self.tsp_au = TextualPrototypes(labels.au_texts(), self.text_encoder, cfg.n_ctx, cfg.dim,
                                                cfg.ctx_per_class)
        dpm = {"sigmoid": DynamicPriorMapping, "ssm": SSMPriorMapping, "off": FixedPriorMapping}[cfg.dpm]
        self.dpm = dpm(labels)
        self.head = SemanticHead(cfg.dim, len(labels.aus), len(labels.expressions), scale_init=cfg.scale_init,
                                 output_prior=cfg.output_prior, learn_scale=cfg.learn_scale)
        self.au_smooth = AUSmoothing(len(labels.aus), cfg.au_smooth) if cfg.au_smooth is not None else None

    def load_clip(self, path) -> None:
        """Image and text towers from a local OpenAI-layout CLIP checkpoint; never downloads."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(self.backbone, VisionTransformer):
            self.backbone.load_clip_state(state)
        if isinstance(self.text_encoder, ClipTextEncoder):
            self.text_encoder.load_clip_state(state)

    def prototypes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Transferred prototypes (T_A', T_E') and the DPM mapping M (E x A)."""
        if self.tsp_au is None or self.tsp_fe is None:  # no prototype branch (ablation)
            zeros = self.head.au_linear.weight.new_zeros
            return zeros(self.head.au_linear.out_features, self.cfg.dim), \
                zeros(self.head.fe_linear.out_features, self.cfg.dim), self.dpm.mapping()
        t_au, t_fe = self.dpm.transfer(self.tsp_au(), self.tsp_fe())
        return t_au, t_fe, self.dpm.mapping()

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f: B x D, g: B x T x D) for images or clips."""
        clip = as_clip(x)
        b, t = clip.shape[:2]
        frames = self.backbone(clip.flatten(0, 1)).view(b, t, -1)
        return self.fe_temporal(frames), self.au_temporal(frames)

    def _heads(self, f: torch.Tensor, g: torch.Tensor, protos) -> SSMOutput:
        t_au, t_fe, mapping = protos
        b, t, d = g.shape
        au_filter = None
        if self.au_smooth is not None:  # needs the frames of each clip: B*T rows -> B x T -> back
            def au_filter(z: torch.Tensor) -> torch.Tensor:
                return self.au_smooth(z.view(b, t, -1)).reshape(b * t, -1)
        out = self.head(f.repeat_interleave(t, dim=0), g.reshape(b * t, d), t_au, t_fe, mapping, au_filter)
        scale = self.head.scale
        return SSMOutput(
            f=f, g=g,
            fe_logits=out.fe_logits.view(b, t, -1).mean(dim=1),
            au_prob=out.au_prob.view(b, t, -1),
            fe_proto_logits=scale * out.fe_sim.view(b, t, -1)[:, 0],
            au_proto_logits=scale * out.au_sim.view(b, t, -1),
        )

    def predict(self, x: torch.Tensor) -> SSMOutput:
        f, g = self.features(x)
        return self._heads(f, g, self.prototypes())

    def forward(self, fe_input: torch.Tensor, au_input: torch.Tensor | None = None) -> tuple[SSMOutput, SSMOutput]:
        """Expression batch and AU batch in one backbone pass; with no AU batch, one batch serves both tasks
        (real faces labelled for both: each image is computed once)."""
        if au_input is None:
            out = self.predict(fe_input)
            return out, out
        fe_clip, au_clip = as_clip(fe_input), as_clip(au_input)
        # One pass over both batches, except with the public MoE dispatch, whose outputs depend on the batch:
        # the public model encodes the two batches separately.
        if fe_clip.shape[1:] == au_clip.shape[1:] and self.cfg.moe_dispatch != "public":
            f, g = self.features(torch.cat([fe_clip, au_clip]))
            n = fe_clip.shape[0]
            fe_feats, au_feats = (f[:n], g[:n]), (f[n:], g[n:])
        else:
            fe_feats, au_feats = self.features(fe_clip), self.features(au_clip)
        protos = self.prototypes()
        return self._heads(*fe_feats, protos), self._heads(*au_feats, protos)

    @torch.no_grad()
    def export_head(self, au_threshold: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The bundle head arrays of docs/head.md (with `au_threshold` when given)."""
        if self.au_smooth is not None:
            raise ValueError("au_smooth filters AU logits across pairs of frames; the per-face head (docs/head.md) "
                             "cannot express it (its AU prototypes must stay unit rows)")
        t_au, t_fe, mapping = self.prototypes()
        params = self.head.export_params(t_au, t_fe, mapping)
        if au_threshold is not None:
            thr = np.asarray(au_threshold, dtype=np.float32)
            if thr.shape != (len(self.cfg.aus),):
                raise ValueError(f"au_threshold must have shape ({len(self.cfg.aus)},), got {thr.shape}")
            params["au_threshold"] = thr
        return params
