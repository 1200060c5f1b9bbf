"""Load a checkpoint of the public SSM code (MSA-LMC/SSM, `Bp4dSSM`/`DisfaSSM`) into `SSMTeacher(base)`.

Key layout of the public model (facts read from its source, not copied code):

| public key | ours |
|---|---|
| `encoder.<CLIP visual key>` | `backbone.<same>` |
| `encoder.transformer.resblocks.i.mlp.shared_fc1/shared_fc2/private_experts/gate/alpha` | same under `backbone.` |
| `encoder.transformer.resblocks.i.mlp.shared_expert.{0,2}.*` | dropped (aliases of shared_fc1/fc2) |
| `text_encoder.{transformer,positional_embedding,ln_final,text_projection}*` | `text_encoder.<same>` |
| `prompt_learner1.ctx` / `prompt_learner2.ctx` (shared context) | `tsp_fe.ctx` / `tsp_au.ctx` |
| `prompt_learner{1,2}.token_prefix/token_suffix` | dropped: ours are re-embedded from our own descriptions |
| `{dfer,au}_temporal_net.cls_token/pos_embedding/ln/gate` | `{fe,au}_temporal.<same>` |
| `..._temporal_net.temporal_transformer.layers.i.0.fn.norm` | `...blocks.i.attn_norm` |
| `..._temporal_net.temporal_transformer.layers.i.0.fn.fn.to_qkv` | `...blocks.i.attn.qkv` |
| `..._temporal_net.temporal_transformer.layers.i.0.fn.fn.to_out.0` | `...blocks.i.attn.out` |
| `..._temporal_net.temporal_transformer.layers.i.1.fn.norm` | `...blocks.i.ff_norm` |
| `..._temporal_net.temporal_transformer.layers.i.1.fn.fn.net.0` / `net.3` | `...blocks.i.fc1` / `fc2` |
| `dfer_head.*`, `au_head.*` | `head.fe_linear.*`, `head.au_linear.*`, rows re-ordered by label |
| `alpha`, `beta` (gates before a sigmoid) | `dpm.gate_ae`, `dpm.gate_ea` = sigmoid(value) |
| `init_map`, `row_targets_*`, `delta_map1/2` | dropped: different DPM parameterisation (see docs/teacher.md) |

The public model has no output-level prior mixing; its similarity scale is a
fixed 0.1 / 0.01 = 10. We set `head.log_scale = log 10` and the mixing
weights to ~0 so the converted model computes the public logits up to the
DPM difference.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from edge.labels import DATASET_AUS, LabelSpace

# Expression order of the public 7-class models (DFEW/FERV39k), read off its FACS init map
# (row 2 is its fixed neutral row).
PUBLIC_FE_ORDER: tuple[str, ...] = ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear")
PUBLIC_AU_ORDER: dict[str, tuple[int, ...]] = {"bp4d": DATASET_AUS["bp4d"], "disfa": DATASET_AUS["disfa"]}
MIX_OFF = -9.21  # logit(1e-4): output-level prior mixing effectively off

_TEMPORAL = [
    (r"layers\.(\d+)\.0\.fn\.norm\.", r"blocks.\1.attn_norm."),
    (r"layers\.(\d+)\.0\.fn\.fn\.to_qkv\.", r"blocks.\1.attn.qkv."),
    (r"layers\.(\d+)\.0\.fn\.fn\.to_out\.0\.", r"blocks.\1.attn.out."),
    (r"layers\.(\d+)\.1\.fn\.norm\.", r"blocks.\1.ff_norm."),
    (r"layers\.(\d+)\.1\.fn\.fn\.net\.0\.", r"blocks.\1.fc1."),
    (r"layers\.(\d+)\.1\.fn\.fn\.net\.3\.", r"blocks.\1.fc2."),
]
_DROPPED = re.compile(r"(^init_map$|^row_targets_|^delta_map[12]$|\.token_prefix$|\.token_suffix$|"
                      r"\.mlp\.shared_expert\.)")


@dataclass
class Conversion:
    state: dict[str, torch.Tensor]
    dropped: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    uncovered_aus: list[int] = field(default_factory=list)  # our AUs the public head does not predict
    uncovered_expressions: list[str] = field(default_factory=list)


def _rename(key: str) -> str | None:
    if key.startswith("encoder."):
        return "backbone." + key[len("encoder."):]
    if key.startswith("text_encoder."):
        return key
    if key == "prompt_learner1.ctx":
        return "tsp_fe.ctx"
    if key == "prompt_learner2.ctx":
        return "tsp_au.ctx"
    for old, new in (("dfer_temporal_net.", "fe_temporal."), ("au_temporal_net.", "au_temporal.")):
        if key.startswith(old):
            rest = key[len(old):]
            if rest.startswith("temporal_transformer."):
                rest = rest[len("temporal_transformer."):]
                for pat, rep in _TEMPORAL:
                    rest, n = re.subn("^" + pat, rep, rest)
                    if n:
                        break
                else:
                    return None
            return new + rest
    return None


def convert_public_state(
    public: dict[str, torch.Tensor], current: dict[str, torch.Tensor], labels: LabelSpace,
    au_order: Sequence[int], fe_order: Sequence[str] = PUBLIC_FE_ORDER,
) -> Conversion:
    """Map a public SSM state dict onto ours. `current` (our model's state dict) supplies rows the public
    heads do not cover (AUs outside its dataset), which keep their present values."""
    conv = Conversion(state={})
    for key, value in public.items():
        if _DROPPED.search(key):
            conv.dropped.append(key)
            continue
        if key in ("alpha", "beta"):
            conv.state["dpm.gate_ae" if key == "alpha" else "dpm.gate_ea"] = torch.sigmoid(value.float())
            continue
        if key.split(".")[0] in ("dfer_head", "au_head"):
            continue
        new = _rename(key)
        if new is None:
            conv.unknown.append(key)
        else:
            conv.state[new] = value
    for ours, theirs, order, space in (("head.fe_linear", "dfer_head", list(fe_order), list(labels.expressions)),
                                       ("head.au_linear", "au_head", list(au_order), list(labels.aus))):
        for part in ("weight", "bias"):
            src = public.get(f"{theirs}.{part}")
            if src is None:
                raise KeyError(f"public checkpoint lacks {theirs}.{part}")
            if src.shape[0] != len(order):
                raise ValueError(f"{theirs}.{part} has {src.shape[0]} rows but the given order lists {len(order)}")
            dst = current[f"{ours}.{part}"].clone()
            for row, label in enumerate(order):
                if label in space:
                    dst[space.index(label)] = src[row]
            conv.state[f"{ours}.{part}"] = dst
    conv.uncovered_aus = [a for a in labels.aus if a not in set(au_order)]
    conv.uncovered_expressions = [e for e in labels.expressions if e not in set(fe_order)]
    conv.state["head.log_scale"] = torch.tensor(math.log(10.0))
    conv.state["head.mix_fe_logit"] = torch.tensor(MIX_OFF)
    conv.state["head.mix_au_logit"] = torch.tensor(MIX_OFF)
    return conv


def load_public_checkpoint(model: torch.nn.Module, path, au_dataset: str = "bp4d") -> Conversion:
    """Load a public SSM `.pth` (a state dict, or a dict with 'state_dict') into `model` in place."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    state = {k.removeprefix("module."): v for k, v in state.items()}
    conv = convert_public_state(state, model.state_dict(), model.cfg.labels, PUBLIC_AU_ORDER[au_dataset])
    if conv.unknown:
        raise KeyError(f"{path}: keys with no counterpart: {conv.unknown[:8]}")
    missing, unexpected = model.load_state_dict(conv.state, strict=False)
    if unexpected:
        raise KeyError(f"{path}: converted keys our model lacks: {unexpected[:8]}")
    conv.dropped += [f"(kept ours) {m}" for m in missing]
    return conv
