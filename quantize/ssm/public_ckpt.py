"""Load a checkpoint of the public SSM code (MSA-LMC/SSM: `Bp4dSSM` / `DisfaSSM`) into an `SSMTeacher`.

The target is the public model's own configuration, `ssm_config("public-bp4d")` / `("public-disfa")`
(`build_public_teacher` makes it): ViT-B/16 with MoE blocks, the CLIP text tower, 8 per-class context vectors,
the public DPM (`dpm="ssm"`), a fixed similarity scale of 10, no output-level prior, the local AU frame
attention (`au_temporal="local"`) and the AU logit smoothing (`au_smooth=2`), over that dataset's AUs (in our
AU order) and the 7 basic expressions (in our expression order). Every public key is mapped, or checked and
accounted for; anything else is an error that names the key, and so is any key of ours the checkpoint does
not provide, except the few listed in `NOT_IN_PUBLIC`.

Key map (facts read from the public source: ssm/models/{bp4d,disfa,moe,prompting,temporal}.py; no code taken):

| public key (after an optional `module.` prefix) | ours |
|---|---|
| `encoder.<CLIP visual key>` (MoE: `mlp.shared_fc1/2`, `private_experts.k.fc1/2`, `gate`, `alpha`) | `backbone.*` |
| `encoder.transformer.resblocks.i.mlp.shared_expert.{0,2}.*` | checked equal to `shared_fc1/2` (aliases) |
| `text_encoder.{positional_embedding,text_projection,ln_final.*,transformer.*}` | `text_encoder.<same>` |
| `prompt_learner1.{ctx,token_prefix,token_suffix}` (expressions) | `tsp_fe.<same>`, rows to our order |
| `prompt_learner2.{ctx,token_prefix,token_suffix}` (AUs) | `tsp_au.<same>`, rows to our order |
| (not saved: `tokenized_prompts`) | `tsp_fe.eot`, `tsp_au.eot`: recomputed, see `prompt_eot` |
| `dfer_temporal_net.*` (BP4D) / `temporal_net.*` (DISFA) | `fe_temporal.*`, transformer layers renamed |
| `au_temporal_net.layers.i.*` (BP4D) / `temporal_net_au.layers.i.*` (DISFA) | `au_temporal.layers.i.<same>` |
| `dfer_head.*`, `au_head.*` | `head.fe_linear.*`, `head.au_linear.*`, rows to our order |
| `au_smooth.weight` | `au_smooth.weight`, rows to our AU order |
| `delta_map1` (E x A), `delta_map2` (A x E), `alpha`, `beta` | `dpm.delta_ae`, `dpm.delta_ea`, `dpm.alpha`/`beta` |
| `init_map` (E x A) | `dpm.prior`, reordered |
| `row_targets_au2emo`, `row_targets_emo2au` | checked equal to the prior's row / column sums |
| (constant 0.1 / 0.01 in the public forward) | `head.log_scale` = log 10 |

File kinds: `best_au.pth` is a bare state dict; `best_emotion.pth` (and `checkpoint.pth`) a dict with
`state_dict`, `epoch`, `best_acc`, `best_uar`, `optimizer` and `recorder`, a pickled `RecorderMeter` (the
training curves). Both are saved from `DataParallel`, hence `module.`; both hold the EMA weights.

Unpickling: a pickle can run arbitrary code, so files are read with `torch.load(weights_only=True)` first.
That refuses `best_emotion.pth`, whose recorder is a Python object. Only with `trust_pickle=True`
(`--trust-pickle`) is it read again, still with torch's restricted unpickler, after every global the file
names outside torch's allowlist (the recorder's class, NumPy's array rebuilders, ...) has been mapped to an
inert stub that drops its arguments and state: nothing from the file is imported or called, and the weights
are all we keep. `os`, `sys` and the like stay refused even then.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import pickle
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from edge.labels import DATASET_AUS
from quantize.ssm.backbone import MoEFeedForward
from quantize.ssm.config import SSMConfig, ssm_config
from quantize.ssm.text import ClipTextEncoder

if TYPE_CHECKING:
    from quantize.ssm.model import SSMTeacher

EPS = 1e-6

# Expression rows of the public 7-class models (DFEW / FERV39k; ssm/semantics.py); row 2 is the DPM's fixed
# neutral row. The 11-class MAFW models add classes our label catalogue does not have.
PUBLIC_FE_ORDER: tuple[str, ...] = ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear")
PUBLIC_AU_ORDER: dict[str, tuple[int, ...]] = {"bp4d": DATASET_AUS["bp4d"], "disfa": DATASET_AUS["disfa"]}
# Module names differ between the two public model classes.
PUBLIC_MODULES: dict[str, tuple[str, str]] = {"bp4d": ("dfer_temporal_net", "au_temporal_net"),
                                              "disfa": ("temporal_net", "temporal_net_au")}

# The class descriptions the public model's prompts were built from ("X" * n_ctx + " " + description), as data
# (MSA-LMC/SSM ssm/semantics.py, Apache-2.0), keyed by our label names: only needed to recompute the prompts'
# end-of-text positions with a CLIP tokenizer (the checkpoint does not store the token ids).
PUBLIC_DESCRIPTIONS: dict[str, dict[str, dict[Any, str]]] = {
    "bp4d": {
        "expressions": {
            "happiness": "happiness, cheek raiser, lip corner puller",
            "sadness": "sadness, inner brow raiser, brow lowerer, lip corner depressor",
            "neutral": "neutral, no active AUs",
            "anger": "anger, brow lowerer, lid tightener, lip tightener",
            "surprise": "surprise, inner brow raiser, outer brow raiser",
            "disgust": "disgust, upper lip raiser",
            "fear": "fear, inner brow raiser, outer brow raiser, brow lowerer",
        },
        "aus": {1: "inner brow raiser", 2: "outer brow raiser", 4: "brow lowerer", 6: "cheek raiser",
                7: "lid tightener", 10: "upper lip raiser", 12: "lip corner puller", 14: "dimpler",
                15: "lip corner depressor", 17: "chin raiser", 23: "lip tightener", 24: "lip presser"},
    },
    "disfa": {
        "expressions": {
            "happiness": "happiness, cheek raiser, lip corner puller",
            "sadness": "sadness, inner brow raiser, brow lowerer",
            "neutral": "neutral, relaxed facial muscles, straight mouth, smooth forehead, unremarkable eyebrows",
            "anger": "anger, brow lowerer",
            "surprise": "surprise, inner brow raiser, outer brow raiser, jaw drop",
            "disgust": "disgust, nose wrinkler",
            "fear": "fear, inner brow raiser, outer brow raiser, brow lowerer, jaw drop",
        },
        "aus": {1: "inner brow raiser", 2: "outer brow raiser", 4: "brow lowerer", 6: "cheek raiser",
                9: "nose wrinkler", 12: "lip corner puller", 25: "lips part", 26: "jaw drop"},
    },
}
PUBLIC_SCALE = 10.0  # public logits: head + 0.1 * cos / 0.01

# Our keys a public checkpoint has no value for, and why; every other key of ours must come from the file.
NOT_IN_PUBLIC: dict[str, str] = {
    "text_encoder.token_embedding.weight": "CLIP's vocabulary embedding is not saved by the public code; the "
                                           "public prompts are stored as token embeddings (kept as built)",
    "dpm.neutral": "derived from our expression labels (the public code fixes row 2 = neutral)",
    "head.mix_fe_logit": "output-level prior (this project's addition; off in the public configuration)",
    "head.mix_au_logit": "output-level prior (this project's addition; off in the public configuration)",
}

_FE_TRANSFORMER = [  # public Temporal_Transformer_Cls layer names -> ours (quantize.ssm.temporal.ClipPooling)
    (r"layers\.(\d+)\.0\.fn\.norm\.", r"blocks.\1.attn_norm."),
    (r"layers\.(\d+)\.0\.fn\.fn\.to_qkv\.", r"blocks.\1.attn.qkv."),
    (r"layers\.(\d+)\.0\.fn\.fn\.to_out\.0\.", r"blocks.\1.attn.out."),
    (r"layers\.(\d+)\.1\.fn\.norm\.", r"blocks.\1.ff_norm."),
    (r"layers\.(\d+)\.1\.fn\.fn\.net\.0\.", r"blocks.\1.fc1."),
    (r"layers\.(\d+)\.1\.fn\.fn\.net\.3\.", r"blocks.\1.fc2."),
]
_FE_DIRECT = {"cls_token", "pos_embedding", "gate", "ln.weight", "ln.bias"}
_AU_LOCAL = re.compile(r"layers\.\d+\.(norm\.weight|norm\.bias|to_q\.weight|to_k\.weight|relative_position_bias|"
                       r"channel_gate)")
_MOE_ALIAS = re.compile(r"transformer\.resblocks\.(\d+)\.mlp\.shared_expert\.([02])\.(weight|bias)")


class PublicCheckpointError(ValueError):
    """A public SSM checkpoint that cannot be mapped onto the model; the message names the key."""


# --------------------------------------------------------------------------------------------------- prompts


def lazy_clip_tokenizer() -> Callable[[Sequence[str]], torch.Tensor]:
    """CLIP's tokenizer, looked up at the first call (ImportError then, not at model construction)."""
    loaded: list[Callable[[Sequence[str]], torch.Tensor]] = []

    def tokenize(texts: Sequence[str]) -> torch.Tensor:
        if not loaded:
            from quantize.ssm.clip_tokenizer import load_clip_tokenizer

            loaded.append(load_clip_tokenizer())
        return loaded[0](texts)

    return tokenize


def public_prompt_texts(n_ctx: int, descriptions: Sequence[str]) -> list[str]:
    """The prompt strings the public PromptLearner tokenises: n_ctx placeholder words, then the description."""
    return [" ".join(["X"] * n_ctx) + " " + d for d in descriptions]


class PublicPrompts(nn.Module):
    """TSP prompts built the public code's way: [SOT] ctx(n_ctx) [description tokens, EOT, padding].

    The fixed parts are CLIP token embeddings (`token_prefix`: N x 1 x W, `token_suffix`: N x (L - 1 - n_ctx)
    x W, L = the text tower's context length, 77) and `eot`, each prompt's end-of-text position in the full
    sequence, where CLIP's text tower pools. They come from a public checkpoint (`load_public_checkpoint`), or,
    when a CLIP tokenizer is installed, from tokenising the public descriptions with the text tower's token
    embedding (meaningful once CLIP weights are loaded). `ctx` (N x n_ctx x W per class, or n_ctx x W shared)
    is the only learned part; the text tower is frozen and shared. Output: L2-normalised prototypes, N x D.
    """

    def __init__(self, descriptions: Sequence[str], encoder: ClipTextEncoder, n_ctx: int,
                 per_class: bool = True) -> None:
        super().__init__()
        if not isinstance(encoder, ClipTextEncoder):
            raise TypeError("public prompts need the CLIP text tower (text_encoder='clip')")
        length, width, n = int(encoder.max_len), encoder.token_dim, len(descriptions)
        if length < n_ctx + 2:
            raise ValueError(f"{n_ctx} context vectors do not fit CLIP's context of {length} tokens")
        self.texts = public_prompt_texts(n_ctx, descriptions)
        self.n_ctx = n_ctx
        prefix, suffix = torch.zeros(n, 1, width), torch.zeros(n, length - 1 - n_ctx, width)
        eot = torch.full((n,), -1, dtype=torch.long)  # -1: not set yet
        try:
            ids = encoder.tokenize(self.texts)
        except ImportError:
            ids = None
        if ids is not None:
            if ids.shape != (n, length):
                raise ValueError(f"tokenizer gave {tuple(ids.shape)} ids, expected {(n, length)}")
            with torch.no_grad():
                embeds = encoder.token_embedding(ids)
            prefix, suffix, eot = embeds[:, :1].clone(), embeds[:, 1 + n_ctx:].clone(), ids.argmax(dim=-1)
        self.register_buffer("token_prefix", prefix)
        self.register_buffer("token_suffix", suffix)
        self.register_buffer("eot", eot)
        shape = (n, n_ctx, width) if per_class else (n_ctx, width)
        self.ctx = nn.Parameter(torch.randn(*shape) * 0.02)
        self._encoder = (encoder,)  # shared and frozen: not part of this module's state

    @property
    def encoder(self) -> ClipTextEncoder:
        return self._encoder[0]

    def forward(self) -> torch.Tensor:
        if bool((self.eot < 0).any()):
            raise RuntimeError("the public prompts' tokens are not set: load a public SSM checkpoint "
                               "(quantize.ssm.public_ckpt) or install a CLIP tokenizer and give clip_weights")
        n = self.token_prefix.shape[0]
        ctx = self.ctx if self.ctx.ndim == 3 else self.ctx.unsqueeze(0).expand(n, -1, -1)
        embeds = torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        # CLIP's text tower is causal: tokens after the last EOT cannot change the pooled outputs.
        length = int(self.eot.max()) + 1
        mask = torch.arange(length, device=embeds.device)[None, :] <= self.eot[:, None]
        return F.normalize(self.encoder.encode(embeds[:, :length], mask), dim=-1, eps=EPS)


class PublicDispatchMoE(MoEFeedForward):
    """`MoEFeedForward` with the expert dispatch of the public code (config `moe_dispatch="public"`).

    Same parameters and router (softmax over the experts, top k kept, not renormalised), but the public
    implementation fills routing slot s of token j (tokens flattened in the order the block receives them:
    sequence-major, so across the images of a batch) with the expert `idx.flatten()[s * N + j]` of the N x k
    top-k index matrix, i.e. the choice made for token (s * N + j) // k, while keeping token j's own gate value.
    A public checkpoint was trained and evaluated with that dispatch, so reproducing its outputs needs it; note
    that it makes a token's output depend on other tokens, and with batches on other images.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.shared_fc2(self.shared_act(self.shared_fc1(x)))
        flat = x.reshape(-1, x.shape[-1])
        logits = self.gate(flat)
        if self.training and self.noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.noise_std
        top, idx = logits.softmax(dim=-1).topk(self.topk, dim=-1)  # N x k
        n = flat.shape[0]
        slot_expert = idx.reshape(self.topk, n).t()  # [j, s] = idx.flatten()[s * N + j]
        routed = torch.stack([e(flat) for e in self.private_experts], dim=1)  # N x K x width
        picked = routed.gather(1, slot_expert.unsqueeze(-1).expand(-1, -1, flat.shape[-1]))  # N x k x width
        return shared + self.alpha * (top.unsqueeze(-1) * picked).sum(dim=1).view_as(x)


def public_prompt_pair(cfg: SSMConfig, encoder: ClipTextEncoder) -> tuple[PublicPrompts, PublicPrompts]:
    """(expression prompts, AU prompts) for `cfg.public_prompts`, in cfg's label order."""
    table = PUBLIC_DESCRIPTIONS[str(cfg.public_prompts)]
    missing = [e for e in cfg.expressions if e not in table["expressions"]] + \
              [f"AU{a}" for a in cfg.aus if a not in table["aus"]]
    if missing:
        raise ValueError(f"the public {cfg.public_prompts} prompts have no description for {missing}")
    return (PublicPrompts([table["expressions"][e] for e in cfg.expressions], encoder, cfg.n_ctx, cfg.ctx_per_class),
            PublicPrompts([table["aus"][a] for a in cfg.aus], encoder, cfg.n_ctx, cfg.ctx_per_class))


def eot_from_buffers(prefix: torch.Tensor, suffix: torch.Tensor, n_ctx: int, key: str) -> torch.Tensor:
    """End-of-text positions of public prompts, read off their token embeddings.

    CLIP's tokenizer pads with token 0 after EOT, so each suffix row is [description, EOT, pad, pad, ...]: the
    pad embedding is the first row's last vector, EOT is each row's last non-pad vector and must be the same
    vector in every row (as must the SOT prefix). Positions are in the full prompt (SOT + n_ctx + suffix).
    """
    if prefix.ndim != 3 or prefix.shape[1] != 1 or suffix.ndim != 3 or suffix.shape[0] != prefix.shape[0]:
        raise PublicCheckpointError(f"{key}: token buffers of shapes {tuple(prefix.shape)} / {tuple(suffix.shape)} "
                                    "are not CLIP prompt embeddings (N x 1 x W, N x L x W)")
    if not all(torch.equal(prefix[0], row) for row in prefix):
        raise PublicCheckpointError(f"{key}.token_prefix: rows differ; expected the same start-of-text embedding")
    pad = suffix[0, -1]
    is_pad = (suffix == pad).all(dim=-1)  # N x L
    ends = []
    for i, row in enumerate(is_pad):
        real = torch.nonzero(~row).flatten()
        if real.numel() == 0 or not bool(row[int(real[-1]) + 1:].all()):
            raise PublicCheckpointError(f"{key}.token_suffix: row {i} has no end-of-text token before the padding")
        ends.append(int(real[-1]))
    eot_vec = suffix[0, ends[0]]
    if not all(torch.equal(suffix[i, j], eot_vec) for i, j in enumerate(ends)):
        raise PublicCheckpointError(f"{key}.token_suffix: the last token before the padding differs between rows; "
                                    "cannot locate CLIP's end-of-text token")
    return torch.tensor(ends, dtype=torch.long) + 1 + n_ctx


# ------------------------------------------------------------------------------------------------ reading files


class UnpickledStub:
    """Inert stand-in for a class or function named in a trusted public checkpoint (e.g. its RecorderMeter).

    Creating, calling or restoring one does nothing: arguments and state are dropped. `target` is the
    `module.name` it replaced.
    """

    target = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> UnpickledStub:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<unpickled {self.target}, dropped>"


def _load_with_stubs(path: Path) -> tuple[Any, list[str]]:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except ValueError as exc:  # the legacy (pre-1.6, non-zip) format cannot be scanned without unpickling
        raise PublicCheckpointError(f"{path}: trust_pickle needs a zip-format torch.save file ({exc}); re-save it "
                                    "with torch >= 1.6 where you trust it") from exc
    stubs = [(type("UnpickledStub", (UnpickledStub,), {"target": n}), n) for n in names]
    with torch.serialization.safe_globals(stubs):
        return torch.load(path, map_location="cpu", weights_only=True), list(names)


@dataclass
class PublicFile:
    state: dict[str, torch.Tensor]  # without the `module.` prefix
    kind: str  # "state_dict" (best_au.pth) or "checkpoint" (best_emotion.pth / checkpoint.pth)
    meta: dict[str, Any] = field(default_factory=dict)  # epoch, best_acc, best_uar when plain numbers
    stubbed: list[str] = field(default_factory=list)  # globals replaced by UnpickledStub (trust_pickle)


def read_public_checkpoint(path: str | Path, trust_pickle: bool = False) -> PublicFile:
    """The state dict of a public SSM checkpoint file, either kind, `module.` prefix removed."""
    path = Path(path)
    stubbed: list[str] = []
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()
        if not trust_pickle:
            raise PublicCheckpointError(
                f"{path}: holds pickled Python objects besides tensors (best_emotion.pth keeps the training "
                f"RecorderMeter), which weights_only loading refuses. If you trust the file, pass trust_pickle=True "
                f"(--trust-pickle): the objects are then replaced by inert stubs and only the weights are kept. Or "
                f"use best_au.pth, a bare state dict. ({reason[-1] if reason else exc})") from exc
        try:
            raw, stubbed = _load_with_stubs(path)
        except pickle.UnpicklingError as exc2:
            raise PublicCheckpointError(f"{path}: refused even with trust_pickle (stubs replace classes, but "
                                        f"modules such as os/sys stay blocked): {exc2}") from exc2
    if isinstance(raw, Mapping) and "state_dict" in raw:
        state, kind = raw["state_dict"], "checkpoint"
        meta = {k: raw[k] for k in ("epoch", "best_acc", "best_uar")
                if isinstance(raw.get(k), (int, float)) and not isinstance(raw.get(k), bool)}
    elif isinstance(raw, Mapping):
        state, kind, meta = raw, "state_dict", {}
    else:
        raise PublicCheckpointError(f"{path}: expected a state dict or a dict with 'state_dict', got "
                                    f"{type(raw).__name__}")
    if not isinstance(state, Mapping):
        raise PublicCheckpointError(f"{path}: 'state_dict' is a {type(state).__name__}, not a mapping")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise PublicCheckpointError(f"{path}: state dict entries that are not tensors: {bad[:5]}")
    prefixed = [k.startswith("module.") for k in state]
    if any(prefixed) and not all(prefixed):
        odd = [k for k, p in zip(state, prefixed, strict=True) if not p]
        raise PublicCheckpointError(f"{path}: some keys have the DataParallel 'module.' prefix and some not, "
                                    f"e.g. {odd[:3]}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return PublicFile(dict(state), kind, meta, list(stubbed))


def detect_au_dataset(state: Mapping[str, torch.Tensor], au_dataset: str | None = None) -> str:
    """`bp4d` or `disfa`, from the public module names (and checked against `au_dataset` when given)."""
    found = {ds for ds, (fe_net, au_net) in PUBLIC_MODULES.items()
             if any(k.startswith((fe_net + ".", au_net + ".")) for k in state)}
    if len(found) != 1:
        raise PublicCheckpointError(f"cannot tell the AU dataset: expected temporal modules named "
                                    f"{PUBLIC_MODULES['bp4d']} (BP4D) or {PUBLIC_MODULES['disfa']} (DISFA), found "
                                    f"{sorted(found) or 'neither'}")
    ds = found.pop()
    if au_dataset is not None and au_dataset.lower() != ds:
        raise PublicCheckpointError(f"au_dataset={au_dataset!r}, but the checkpoint's module names are {ds}'s")
    head = state.get("au_head.weight")
    if head is not None and head.shape[0] != len(PUBLIC_AU_ORDER[ds]):
        raise PublicCheckpointError(f"au_head.weight has {head.shape[0]} rows; a {ds} model has "
                                    f"{len(PUBLIC_AU_ORDER[ds])}")
    return ds


def public_config(au_dataset: str, **overrides: Any) -> SSMConfig:
    """The public model's configuration for `au_dataset` ("bp4d" / "disfa"), with overrides."""
    return ssm_config(f"public-{au_dataset.lower()}", **overrides)


# ------------------------------------------------------------------------------------------------- conversion


@dataclass
class Conversion:
    au_dataset: str
    state: dict[str, torch.Tensor]  # our key -> value
    sources: dict[str, str]  # every public key -> our key, or the check that consumed it
    kept: dict[str, str]  # our keys the checkpoint has no value for -> why (NOT_IN_PUBLIC)
    eot: dict[str, list[int]]  # tsp_fe / tsp_au -> end-of-text positions, our label order
    eot_source: str
    deviations: list[str] = field(default_factory=list)  # config choices that differ from the public model
    file: PublicFile | None = None


def _config_problems(cfg: SSMConfig, ds: str) -> tuple[list[str], list[str]]:
    """(structural mismatches that make loading impossible, behavioural deviations from the public model)."""
    need = {"backbone": "vit", "tsp": True, "text_encoder": "clip", "public_prompts": ds, "dpm": "ssm",
            "au_temporal": "local"}
    problems = [f"{k}={getattr(cfg, k)!r} (public: {v!r})" for k, v in need.items() if getattr(cfg, k) != v]
    if cfg.au_smooth is None:
        problems.append("au_smooth=None (public: 2)")
    if set(cfg.aus) != set(PUBLIC_AU_ORDER[ds]):
        problems.append(f"aus={list(cfg.aus)} (public {ds}: {list(PUBLIC_AU_ORDER[ds])})")
    if set(cfg.expressions) != set(PUBLIC_FE_ORDER):
        problems.append(f"expressions={list(cfg.expressions)} (public: {list(PUBLIC_FE_ORDER)})")
    deviations = [f"{k}={getattr(cfg, k)!r} (public: {v!r})" for k, v in
                  {"output_prior": False, "learn_scale": False, "moe_shared_act": "gelu",
                   "moe_dispatch": "public"}.items()
                  if getattr(cfg, k) != v]
    return problems, deviations


def convert_public_state(public: Mapping[str, torch.Tensor], model: SSMTeacher,
                         au_dataset: str | None = None) -> Conversion:
    """Map a public state dict (no `module.` prefix) onto `model` (a public configuration). Raises
    PublicCheckpointError naming the key for anything it cannot map or check, and for any of our keys the
    checkpoint leaves unset (NOT_IN_PUBLIC excepted)."""
    ds = detect_au_dataset(public, au_dataset)
    cfg = model.cfg
    problems, deviations = _config_problems(cfg, ds)
    if problems:
        raise PublicCheckpointError(f"the model is not configured like the public {ds} model: {problems}; build it "
                                    f"with build_public_teacher() or ssm_config('public-{ds}')")
    fe_idx = torch.tensor([PUBLIC_FE_ORDER.index(e) for e in cfg.expressions])
    au_idx = torch.tensor([PUBLIC_AU_ORDER[ds].index(a) for a in cfg.aus])
    fe_net, au_net = PUBLIC_MODULES[ds]
    n_fe, n_au = len(PUBLIC_FE_ORDER), len(PUBLIC_AU_ORDER[ds])

    def rows(key: str, value: torch.Tensor, n: int, index: torch.Tensor) -> torch.Tensor:
        if value.ndim == 0 or value.shape[0] != n:
            extra = (" (11-class MAFW checkpoints are not supported: our labels lack anxiety, helplessness and "
                     "disappointment)") if n == n_fe else ""
            raise PublicCheckpointError(f"{key}: shape {tuple(value.shape)}, expected {n} rows{extra}")
        return value.index_select(0, index)

    def cols(key: str, value: torch.Tensor, n: int, index: torch.Tensor) -> torch.Tensor:
        if value.ndim != 2 or value.shape[1] != n:
            raise PublicCheckpointError(f"{key}: shape {tuple(value.shape)}, expected {n} columns")
        return value.index_select(1, index)

    out: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}

    def put(pkey: str, okey: str, value: torch.Tensor) -> None:
        if okey in out:
            raise PublicCheckpointError(f"{pkey}: maps to {okey}, which another key already set")
        out[okey], sources[pkey] = value, okey

    unknown: list[str] = []
    prompts: dict[str, torch.Tensor] = {}
    for key, value in public.items():
        if key.startswith("encoder."):
            rest = key[len("encoder."):]
            alias = _MOE_ALIAS.fullmatch(rest)
            if alias:
                canon = f"encoder.transformer.resblocks.{alias[1]}.mlp.shared_fc{1 if alias[2] == '0' else 2}." \
                        f"{alias[3]}"
                if canon not in public or not torch.equal(public[canon], value):
                    raise PublicCheckpointError(f"{key}: an alias of {canon} in the public MoE, but "
                                                f"{'that key is missing' if canon not in public else 'they differ'}")
                sources[key] = f"(alias, checked equal to {canon})"
                continue
            put(key, "backbone." + rest, value)
        elif key.startswith("text_encoder."):
            put(key, key, value)
        elif re.fullmatch(r"prompt_learner[12]\.(ctx|token_prefix|token_suffix)", key):
            prompts[key] = value
        elif key.startswith(fe_net + "."):
            rest = key[len(fe_net) + 1:]
            if rest in _FE_DIRECT:
                put(key, "fe_temporal." + rest, value)
                continue
            new = None
            if rest.startswith("temporal_transformer."):
                sub = rest[len("temporal_transformer."):]
                for pat, rep in _FE_TRANSFORMER:
                    renamed, n = re.subn("^" + pat, rep, sub)
                    if n:
                        new = renamed
                        break
            if new is None:
                unknown.append(key)
            else:
                put(key, "fe_temporal." + new, value)
        elif key.startswith(au_net + "."):
            rest = key[len(au_net) + 1:]
            if _AU_LOCAL.fullmatch(rest):
                put(key, "au_temporal." + rest, value)
            else:
                unknown.append(key)
        elif key in ("dfer_head.weight", "dfer_head.bias"):
            put(key, "head.fe_linear." + key.split(".")[1], rows(key, value, n_fe, fe_idx))
        elif key in ("au_head.weight", "au_head.bias"):
            put(key, "head.au_linear." + key.split(".")[1], rows(key, value, n_au, au_idx))
        elif key == "au_smooth.weight":
            put(key, "au_smooth.weight", rows(key, value, n_au, au_idx))
        elif key == "delta_map1":
            put(key, "dpm.delta_ae", cols(key, rows(key, value, n_fe, fe_idx), n_au, au_idx))
        elif key == "delta_map2":
            put(key, "dpm.delta_ea", cols(key, rows(key, value, n_au, au_idx), n_fe, fe_idx))
        elif key == "init_map":
            put(key, "dpm.prior", cols(key, rows(key, value, n_fe, fe_idx), n_au, au_idx))
        elif key in ("alpha", "beta"):
            put(key, f"dpm.{key}", value)
        elif key in ("row_targets_au2emo", "row_targets_emo2au"):
            prior = public.get("init_map")
            if prior is None:
                raise PublicCheckpointError(f"{key}: present, but init_map (whose sums it must equal) is missing")
            want = prior.sum(dim=1 if key.endswith("emo") else 0)
            if value.shape != want.shape or not torch.allclose(value, want, rtol=1e-5, atol=1e-6):
                raise PublicCheckpointError(f"{key}: {value.tolist()} is not init_map's "
                                            f"{'row' if key.endswith('emo') else 'column'} sums {want.tolist()}; "
                                            "our DPM derives them from the prior")
            sources[key] = "(checked equal to init_map's sums)"
        else:
            unknown.append(key)
    if unknown:
        raise PublicCheckpointError(f"{len(unknown)} public key(s) with no counterpart in the public model "
                                    f"layout: {unknown[:10]}")

    # Prompts: rows to our label order, end-of-text positions recomputed (tokenized_prompts is not saved).
    eot: dict[str, list[int]] = {}
    eot_sources: list[str] = []
    eot_vectors = []
    for pub, ours, n, index in (("prompt_learner1", "tsp_fe", n_fe, fe_idx), ("prompt_learner2", "tsp_au", n_au,
                                                                               au_idx)):
        parts = {p: prompts.get(f"{pub}.{p}") for p in ("ctx", "token_prefix", "token_suffix")}
        absent = [f"{pub}.{p}" for p, v in parts.items() if v is None]
        if absent:
            raise PublicCheckpointError(f"public checkpoint lacks {absent}")
        module = getattr(model, ours)
        ctx = parts["ctx"]
        if ctx.ndim == 3:
            ctx = rows(f"{pub}.ctx", ctx, n, index)
        elif ctx.ndim != 2:
            raise PublicCheckpointError(f"{pub}.ctx: shape {tuple(ctx.shape)}, expected n_cls x n_ctx x W or "
                                        "n_ctx x W")
        n_ctx = ctx.shape[-2]
        prefix = rows(f"{pub}.token_prefix", parts["token_prefix"], n, index)
        suffix = rows(f"{pub}.token_suffix", parts["token_suffix"], n, index)
        put(f"{pub}.ctx", f"{ours}.ctx", ctx)
        put(f"{pub}.token_prefix", f"{ours}.token_prefix", prefix)
        put(f"{pub}.token_suffix", f"{ours}.token_suffix", suffix)
        positions, how = _prompt_eot(module, prefix, suffix, n_ctx, pub)
        eot_vectors.append((prefix[0, 0], suffix[0, int(positions[0]) - 1 - n_ctx]))
        out[f"{ours}.eot"] = positions
        eot[ours] = positions.tolist()
        eot_sources.append(f"{ours}: {how}")
    if not all(torch.equal(a, b) for a, b in zip(eot_vectors[0], eot_vectors[1], strict=True)):
        raise PublicCheckpointError("prompt_learner1 and prompt_learner2 disagree on CLIP's start/end-of-text "
                                    "embeddings; they must come from the same token embedding")
    out["head.log_scale"] = torch.tensor(math.log(PUBLIC_SCALE))

    # Both directions complete: shapes agree, nothing of ours is left unset.
    ours = model.state_dict()
    extra = [k for k in out if k not in ours]
    if extra:
        origin = {v: k for k, v in sources.items()}
        raise PublicCheckpointError("public keys map to names our model lacks: "
                                    + ", ".join(f"{origin.get(k, '?')} -> {k}" for k in extra[:10]))
    origin = {v: k for k, v in sources.items()}
    wrong = [f"{origin.get(k, k)} {tuple(v.shape)} -> {k} {tuple(ours[k].shape)}" for k, v in out.items()
             if tuple(v.shape) != tuple(ours[k].shape)]
    if wrong:
        raise PublicCheckpointError("shape mismatch (public -> ours): " + "; ".join(wrong[:10]))
    unset = [k for k in ours if k not in out and k not in NOT_IN_PUBLIC]
    if unset:
        raise PublicCheckpointError(f"the public checkpoint provides nothing for our {unset[:10]}"
                                    f"{' ...' if len(unset) > 10 else ''}")
    kept = {k: NOT_IN_PUBLIC[k] for k in ours if k not in out}
    return Conversion(ds, out, sources, kept, eot, "; ".join(eot_sources), deviations)


def _prompt_eot(module: nn.Module, prefix: torch.Tensor, suffix: torch.Tensor, n_ctx: int,
                key: str) -> tuple[torch.Tensor, str]:
    """EOT positions: from CLIP's tokenizer on the public descriptions when one is installed, else from the
    token buffers; when both are available they must agree."""
    if not isinstance(module, PublicPrompts):
        raise PublicCheckpointError(f"{key}: our prompt module is {type(module).__name__}, not PublicPrompts")
    from_tok = None
    with contextlib.suppress(ImportError):  # no CLIP tokenizer installed
        from_tok = module.encoder.tokenize(module.texts).argmax(dim=-1)
    try:
        from_buf = eot_from_buffers(prefix, suffix, n_ctx, key)
    except PublicCheckpointError:
        if from_tok is None:
            raise
        from_buf = None
    if from_tok is not None and from_buf is not None and not torch.equal(from_tok, from_buf):
        raise PublicCheckpointError(f"{key}: end-of-text positions from tokenising the public descriptions "
                                    f"{from_tok.tolist()} differ from the checkpoint's token buffers "
                                    f"{from_buf.tolist()}: it was trained with other prompts")
    positions = from_tok if from_tok is not None else from_buf
    assert positions is not None
    lo, hi = 1 + n_ctx, prefix.shape[1] + n_ctx + suffix.shape[1]
    if int(positions.min()) < lo or int(positions.max()) >= hi:
        raise PublicCheckpointError(f"{key}: end-of-text positions {positions.tolist()} outside {lo}..{hi - 1}")
    how = ("tokenizer, matches the token buffers" if from_buf is not None else "tokenizer") if from_tok is not None \
        else "token buffers (no CLIP tokenizer installed)"
    return positions.to(torch.long), how


# ---------------------------------------------------------------------------------------------------- loading


def load_public_checkpoint(model: SSMTeacher, path: str | Path, au_dataset: str | None = None,
                           trust_pickle: bool = False) -> Conversion:
    """Load a public SSM `.pth` (either kind, with or without `module.`) into `model` in place, strictly."""
    file = read_public_checkpoint(path, trust_pickle=trust_pickle)
    try:
        conv = convert_public_state(file.state, model, au_dataset)
    except PublicCheckpointError as exc:
        raise PublicCheckpointError(f"{path}: {exc}") from None
    model.load_state_dict({**model.state_dict(), **conv.state}, strict=True)
    conv.file = file
    return conv


def build_public_teacher(path: str | Path, au_dataset: str | None = None, trust_pickle: bool = False,
                         text_encoder: ClipTextEncoder | None = None,
                         **overrides: Any) -> tuple[SSMTeacher, Conversion]:
    """An `SSMTeacher` configured like the public model in `path`, with its weights.

    The AU dataset comes from the checkpoint's module names; the context layout (per class or shared, n_ctx)
    from its `prompt_learner1.ctx`. `overrides` go to the config (e.g. smaller dims for tests);
    `text_encoder` replaces the CLIP text tower built from the config (tests pass one with a toy tokenizer).
    """
    from quantize.ssm.model import SSMTeacher

    file = read_public_checkpoint(path, trust_pickle=trust_pickle)
    ds = detect_au_dataset(file.state, au_dataset)
    ctx = file.state.get("prompt_learner1.ctx")
    if ctx is not None and ctx.ndim in (2, 3):
        overrides = {"n_ctx": int(ctx.shape[-2]), "ctx_per_class": ctx.ndim == 3, **overrides}
    model = SSMTeacher(public_config(ds, **overrides), text_encoder=text_encoder)
    try:
        conv = convert_public_state(file.state, model, ds)
    except PublicCheckpointError as exc:
        raise PublicCheckpointError(f"{path}: {exc}") from None
    model.load_state_dict({**model.state_dict(), **conv.state}, strict=True)
    conv.file = file
    return model.eval(), conv


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.ssm.public_ckpt",
                                     description="Load a public SSM checkpoint into the public teacher configuration")
    parser.add_argument("checkpoint", type=Path, help="best_au.pth or best_emotion.pth of MSA-LMC/SSM")
    parser.add_argument("--au-dataset", choices=sorted(PUBLIC_MODULES), default=None,
                        help="checked against the checkpoint (detected when omitted)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="read best_emotion.pth's pickled RecorderMeter as an inert stub (see module docstring)")
    parser.add_argument("--clip-weights", type=Path, default=None,
                        help="OpenAI-layout CLIP state dict, for the token embedding the checkpoint lacks")
    parser.add_argument("--save", type=Path, default=None,
                        help="write {model, model_config, step} (quantize.train.checkpoint layout) here")
    args = parser.parse_args(argv)
    overrides = {"clip_weights": args.clip_weights} if args.clip_weights else {}
    try:
        model, conv = build_public_teacher(args.checkpoint, args.au_dataset, args.trust_pickle, **overrides)
    except (PublicCheckpointError, FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    assert conv.file is not None
    print(f"{args.checkpoint}: {conv.file.kind}, AU dataset {conv.au_dataset}, {len(conv.sources)} public keys "
          f"mapped or checked, {len(conv.state)} of ours set; {conv.file.meta or ''}")
    print(f"end-of-text positions: {conv.eot} ({conv.eot_source})")
    for key, why in conv.kept.items():
        print(f"kept as built: {key}: {why}")
    if conv.file.stubbed:
        print(f"pickled objects dropped (stubs): {conv.file.stubbed}")
    if args.save:
        torch.save({"model": model.state_dict(), "model_config": model.cfg.model_dump(mode="json"), "step": 0,
                    "source": str(args.checkpoint)}, args.save)
        print(f"wrote {args.save}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
