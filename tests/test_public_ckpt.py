"""Loading checkpoints of the public SSM code (MSA-LMC/SSM) into the public teacher configuration.

The synthetic checkpoints here are written from the public code's own module definitions (ssm/models/bp4d.py,
disfa.py, moe.py, prompting.py, temporal.py and the vendored OpenAI CLIP model.py), key by key, not from our
model's state dict: each block below names the public module it mirrors. Dimensions are small where the public
code has a free choice our config can follow (widths, depths, expert size); the structure is the public one:
16-frame temporal modules, 77-token CLIP prompts with 8 per-class context vectors, MoE on the last blocks,
two-frame AU smoothing of width 5.
"""

from __future__ import annotations

import sys
import types
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from edge.labels import BASIC_EXPRESSIONS
from quantize.ssm.config import ssm_config
from quantize.ssm.model import SSMTeacher
from quantize.ssm.public_ckpt import (
    NOT_IN_PUBLIC,
    PUBLIC_DESCRIPTIONS,
    PublicCheckpointError,
    PublicDispatchMoE,
    build_public_teacher,
    load_public_checkpoint,
)
from quantize.ssm.temporal import AUSmoothing, LocalFrameContext
from quantize.ssm.text import ClipTextEncoder

# The public code's label orders (ssm/semantics.py; the BP4D / DISFA configs' au_ids).
PUBLIC_FE = ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear")
PUBLIC_AUS = {"bp4d": (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24), "disfa": (1, 2, 4, 6, 9, 12, 25, 26)}
# Module names: Bp4dSSM vs DisfaSSM.
MODULES = {"bp4d": ("dfer_temporal_net", "au_temporal_net"), "disfa": ("temporal_net", "temporal_net_au")}
# End-of-text positions of the public prompts ("X X X X X X X X <description>", CLIP BPE), public row order:
# read off `tokenized_prompts.argmax(-1)` of the public models built with their own tokenizer.
PUBLIC_EOT = {"bp4d": ([18, 24, 14, 23, 18, 15, 23], [12, 12, 13, 11, 12, 12, 13, 11, 13, 11, 12, 11]),
              "disfa": ([18, 19, 24, 15, 21, 15, 26], [12, 12, 13, 11, 12, 13, 11, 11])}


@dataclass(frozen=True)
class Dims:
    """Free sizes of the public model (public values in comments)."""

    feat: int = 32  # 512: CLIP embed_dim = temporal input_dim = head input
    vit_width: int = 32  # 768
    vit_layers: int = 3  # 12
    moe_blocks: int = 2  # 6: patch_visual_moe replaces the last six MLPs
    patch: int = 16
    image: int = 32  # 224
    experts: int = 4
    expert_hidden: int = 16  # 512
    text_width: int = 32  # 512
    text_layers: int = 1  # 12
    context: int = 77
    n_ctx: int = 8
    heads: int = 2  # 8 (temporal modules; heads x dim_head = feat)
    dim_head: int = 16  # 64
    mlp: int = 64  # 1024
    frames: int = 16
    smooth_k: int = 2


FULL = Dims(feat=512, vit_width=768, vit_layers=12, moe_blocks=6, image=224, expert_hidden=512, text_width=512,
            text_layers=12, heads=8, dim_head=64, mlp=1024)
OVERRIDES = dict(dim=32, image_size=32, vit_width=32, vit_layers=3, vit_heads=2, moe_blocks=2, moe_hidden=16,
                 text_width=32, text_layers=1, text_heads=2, temporal_heads=2, temporal_dim_head=16, temporal_mlp=64)


def _linear(prefix: str, out_f: int, in_f: int, bias: bool = True) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (out_f, in_f), **({f"{prefix}.bias": (out_f,)} if bias else {})}


def _norm(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (width,), f"{prefix}.bias": (width,)}


def _clip_block(p: str, w: int, moe: Dims | None = None) -> dict[str, tuple[int, ...]]:
    """OpenAI CLIP ResidualAttentionBlock (nn.MultiheadAttention, ln_1, mlp c_fc/gelu/c_proj, ln_2); with `moe`,
    its mlp replaced by TrueMoE_FFN (alpha, shared_fc1/2 = CLIP's c_fc/c_proj, the same modules again inside the
    `shared_expert` Sequential, private_experts[k].fc1/fc2, gate)."""
    s = {f"{p}attn.in_proj_weight": (3 * w, w), f"{p}attn.in_proj_bias": (3 * w,),
         **_linear(f"{p}attn.out_proj", w, w), **_norm(f"{p}ln_1", w), **_norm(f"{p}ln_2", w)}
    if moe is None:
        s.update({**_linear(f"{p}mlp.c_fc", 4 * w, w), **_linear(f"{p}mlp.c_proj", w, 4 * w)})
        return s
    s[f"{p}mlp.alpha"] = ()
    for name, alias, shape in (("shared_fc1", "shared_expert.0", (4 * w, w)), ("shared_fc2", "shared_expert.2",
                                                                              (w, 4 * w))):
        s.update(_linear(f"{p}mlp.{name}", *shape))
        s.update(_linear(f"{p}mlp.{alias}", *shape))
    for k in range(moe.experts):
        s.update({**_linear(f"{p}mlp.private_experts.{k}.fc1", moe.expert_hidden, w),
                  **_linear(f"{p}mlp.private_experts.{k}.fc2", w, moe.expert_hidden)})
    s.update(_linear(f"{p}mlp.gate", moe.experts, w))
    return s


def public_shapes(ds: str, d: Dims) -> dict[str, tuple[int, ...]]:
    """Every state-dict entry of Bp4dSSM / DisfaSSM (7 expressions), with its shape."""
    n_fe, n_au, f = len(PUBLIC_FE), len(PUBLIC_AUS[ds]), d.feat
    fe_net, au_net = MODULES[ds]
    s: dict[str, tuple[int, ...]] = {
        # Root: DPM parameters and buffers.
        "delta_map1": (n_fe, n_au), "delta_map2": (n_au, n_fe), "alpha": (), "beta": (),
        "init_map": (n_fe, n_au), "row_targets_au2emo": (n_fe,), "row_targets_emo2au": (n_au,),
    }
    # PromptLearner (class_specific_contexts "True"): ctx, token_prefix = SOT, token_suffix = after the ctx slots.
    for i, n in ((1, n_fe), (2, n_au)):
        s[f"prompt_learner{i}.ctx"] = (n, d.n_ctx, d.text_width)
        s[f"prompt_learner{i}.token_prefix"] = (n, 1, d.text_width)
        s[f"prompt_learner{i}.token_suffix"] = (n, d.context - 1 - d.n_ctx, d.text_width)
    # TextEncoder: CLIP's transformer, positional_embedding, ln_final, text_projection (no token_embedding).
    s["text_encoder.positional_embedding"] = (d.context, d.text_width)
    s["text_encoder.text_projection"] = (d.text_width, f)
    for layer in range(d.text_layers):
        s.update(_clip_block(f"text_encoder.transformer.resblocks.{layer}.", d.text_width))
    s.update(_norm("text_encoder.ln_final", d.text_width))
    # encoder: CLIP VisionTransformer, last `moe_blocks` MLPs patched to MoE.
    w = d.vit_width
    s.update({"encoder.class_embedding": (w,), "encoder.positional_embedding": ((d.image // d.patch) ** 2 + 1, w),
              "encoder.proj": (w, f), "encoder.conv1.weight": (w, 3, d.patch, d.patch),
              **_norm("encoder.ln_pre", w), **_norm("encoder.ln_post", w)})
    for layer in range(d.vit_layers):
        moe = d if layer >= d.vit_layers - d.moe_blocks else None
        s.update(_clip_block(f"encoder.transformer.resblocks.{layer}.", w, moe))
    # Temporal_Transformer_Cls: cls_token, pos_embedding (frames + 1), Residual(PreNorm(Attention / FeedForward)).
    inner, t = d.heads * d.dim_head, f"{fe_net}.temporal_transformer.layers.0"
    s.update({f"{fe_net}.cls_token": (1, 1, f), f"{fe_net}.pos_embedding": (1, d.frames + 1, f), f"{fe_net}.gate": (1,),
              **_norm(f"{fe_net}.ln", f), **_norm(f"{t}.0.fn.norm", f), f"{t}.0.fn.fn.to_qkv.weight": (3 * inner, f),
              **_linear(f"{t}.0.fn.fn.to_out.0", f, inner), **_norm(f"{t}.1.fn.norm", f),
              **_linear(f"{t}.1.fn.fn.net.0", d.mlp, f), **_linear(f"{t}.1.fn.fn.net.3", f, d.mlp)})
    # Temporal_Transformer_All: one _LocalFrameAttention (radius 1; its masks are non-persistent buffers).
    a = f"{au_net}.layers.0"
    s.update({f"{a}.relative_position_bias": (d.heads, 3), f"{a}.channel_gate": (f,), **_norm(f"{a}.norm", f),
              f"{a}.to_q.weight": (f, f), f"{a}.to_k.weight": (f, f)})
    # Heads and the depthwise AU smoother (Conv1d(A, A, 2K + 1, groups=A, bias=False)).
    s.update({**_linear("au_head", n_au, f), **_linear("dfer_head", n_fe, f),
              "au_smooth.weight": (n_au, 1, 2 * d.smooth_k + 1)})
    return s


@dataclass
class Fixture:
    state: dict[str, torch.Tensor]
    ids: dict[str, torch.Tensor]  # prompt_learner1 / 2 -> token ids (public row order), as clip.tokenize gives
    vocab: int


def public_state(ds: str, d: Dims = Dims(), seed: int = 0, vocab: int = 64) -> Fixture:
    """Random values in the public layout; the structured parts are built the public code's way."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=gen) for k, shape in public_shapes(ds, d).items()}
    # MoE: shared_expert is a Sequential around the very same Linear modules.
    for k in list(state):
        if ".mlp.shared_expert." in k:
            state[k] = state[k.replace("shared_expert.0", "shared_fc1").replace("shared_expert.2", "shared_fc2")]
    # DPM prior: 1.0 where linked, 0.02 elsewhere, neutral (row 2) links nothing; row targets are its sums.
    links = torch.rand(state["init_map"].shape, generator=gen) < 0.3
    links[PUBLIC_FE.index("neutral")] = False
    init_map = torch.where(links, 1.0, 0.02)
    state.update(init_map=init_map, row_targets_au2emo=init_map.sum(1), row_targets_emo2au=init_map.sum(0))
    # Prompts: clip.tokenize("X X X X X X X X <description>") -> [SOT, X * 8, description, EOT, 0 ...] (EOT is the
    # largest id), embedded with one token embedding; prefix = position 0, suffix = after the 8 context slots.
    table = torch.randn(vocab, d.text_width, generator=gen)
    sot, eot_id, x_id = vocab - 2, vocab - 1, 3
    ids = {}
    for i, eots in ((1, PUBLIC_EOT[ds][0]), (2, PUBLIC_EOT[ds][1])):
        rows = torch.zeros(len(eots), d.context, dtype=torch.long)
        for r, eot in enumerate(eots):
            body = torch.randint(4, vocab - 2, (eot - 1 - d.n_ctx,), generator=gen)
            rows[r, : eot + 1] = torch.cat([torch.tensor([sot] + [x_id] * d.n_ctx), body, torch.tensor([eot_id])])
        emb = table[rows]
        state[f"prompt_learner{i}.token_prefix"] = emb[:, :1].clone()
        state[f"prompt_learner{i}.token_suffix"] = emb[:, 1 + d.n_ctx:].clone()
        ids[f"prompt_learner{i}"] = rows
    return Fixture(state, ids, vocab)


def no_tokenizer(texts):
    raise ImportError("no CLIP tokenizer in this test")


def fixture_tokenizer(fx: Fixture, ds: str, n_ctx: int = 8):
    """A stand-in for CLIP's tokenizer that knows exactly the public prompts (and their ids in `fx`)."""
    table = PUBLIC_DESCRIPTIONS[ds]
    known = {}
    for learner, names in (("prompt_learner1", [table["expressions"][e] for e in PUBLIC_FE]),
                           ("prompt_learner2", [table["aus"][a] for a in PUBLIC_AUS[ds]])):
        for row, text in enumerate(names):
            known[" ".join(["X"] * n_ctx) + " " + text] = fx.ids[learner][row]
    return lambda texts: torch.stack([known[t] for t in texts])


def word_tokenize(texts, context_length=77):
    """Word-level stand-in for CLIP's BPE (SOT 1, hashed words, EOT 300 = the largest id, zero padding)."""
    ids = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, t in enumerate(texts):
        row = [1, *(2 + zlib.crc32(w.encode()) % 290 for w in t.split()), 300]
        ids[i, : len(row)] = torch.tensor(row)
    return ids


def text_tower(tokenize, vocab: int = 64) -> ClipTextEncoder:
    return ClipTextEncoder(tokenize, vocab_size=vocab, context_length=77, width=32, layers=1, heads=2, out_dim=32)


def save(tmp_path, state, name="best_au.pth", prefix="module."):
    path = tmp_path / name
    torch.save({f"{prefix}{k}": v for k, v in state.items()}, path)
    return path


def build(path, tokenize=no_tokenizer, **kw):
    return build_public_teacher(path, text_encoder=text_tower(tokenize), **{**OVERRIDES, **kw})


def test_fixture_has_the_public_models_478_keys():
    for ds in ("bp4d", "disfa"):
        shapes = public_shapes(ds, FULL)
        assert len(shapes) == 478
        fe_net, au_net = MODULES[ds]
        assert shapes["prompt_learner1.token_suffix"] == (7, 68, 512)
        assert shapes[f"{au_net}.layers.0.relative_position_bias"] == (8, 3)
        assert shapes[f"{fe_net}.pos_embedding"] == (1, 17, 512)
        assert shapes["encoder.transformer.resblocks.6.mlp.private_experts.3.fc1.weight"] == (512, 768)
        assert "encoder.transformer.resblocks.5.mlp.c_fc.weight" in shapes


@pytest.mark.parametrize(("ds", "prefix"), [("bp4d", "module."), ("disfa", ""), ("bp4d", "")])
def test_best_au_state_dict_maps_every_key(tmp_path, ds, prefix):
    fx = public_state(ds)
    pub = fx.state
    model, conv = build(save(tmp_path, pub, prefix=prefix))
    cfg = model.cfg
    assert conv.au_dataset == ds and conv.file.kind == "state_dict"
    assert set(conv.sources) == set(pub)  # every public key consumed
    assert set(conv.kept) == set(NOT_IN_PUBLIC)
    assert cfg.aus == PUBLIC_AUS[ds] and cfg.expressions == BASIC_EXPRESSIONS
    sd = model.state_dict()
    fe_net, au_net = MODULES[ds]
    same = {
        "backbone.conv1.weight": "encoder.conv1.weight",
        "backbone.transformer.resblocks.2.mlp.private_experts.1.fc2.weight":
            "encoder.transformer.resblocks.2.mlp.private_experts.1.fc2.weight",
        "backbone.transformer.resblocks.1.mlp.shared_fc1.weight":
            "encoder.transformer.resblocks.1.mlp.shared_fc1.weight",
        "backbone.transformer.resblocks.0.mlp.c_proj.bias": "encoder.transformer.resblocks.0.mlp.c_proj.bias",
        "text_encoder.text_projection": "text_encoder.text_projection",
        "fe_temporal.blocks.0.attn.qkv.weight": f"{fe_net}.temporal_transformer.layers.0.0.fn.fn.to_qkv.weight",
        "fe_temporal.blocks.0.fc2.bias": f"{fe_net}.temporal_transformer.layers.0.1.fn.fn.net.3.bias",
        "fe_temporal.cls_token": f"{fe_net}.cls_token",
        "au_temporal.layers.0.relative_position_bias": f"{au_net}.layers.0.relative_position_bias",
        "au_temporal.layers.0.to_k.weight": f"{au_net}.layers.0.to_k.weight",
        "dpm.alpha": "alpha",
    }
    for ours, theirs in same.items():
        assert torch.equal(sd[ours], pub[theirs]), ours
    # Rows follow labels: our expression order differs from the public one; AU columns go by AU number.
    fe, au = list(cfg.expressions), list(cfg.aus)
    happy, au12 = fe.index("happiness"), au.index(12)
    cols = [PUBLIC_AUS[ds].index(a) for a in au]
    assert torch.equal(sd["dpm.delta_ae"][happy], pub["delta_map1"][0, cols])
    assert torch.equal(sd["dpm.delta_ea"][au12], pub["delta_map2"][PUBLIC_AUS[ds].index(12),
                                                                   [PUBLIC_FE.index(e) for e in fe]])
    assert torch.equal(sd["dpm.prior"][fe.index("fear")], pub["init_map"][PUBLIC_FE.index("fear"), cols])
    assert torch.equal(sd["head.fe_linear.weight"][fe.index("anger")], pub["dfer_head.weight"][3])
    assert torch.equal(sd["head.au_linear.bias"][au12], pub["au_head.bias"][PUBLIC_AUS[ds].index(12)])
    assert torch.equal(sd["au_smooth.weight"][au12], pub["au_smooth.weight"][PUBLIC_AUS[ds].index(12)])
    assert torch.equal(sd["tsp_fe.ctx"][happy], pub["prompt_learner1.ctx"][0])
    assert torch.equal(sd["tsp_fe.token_suffix"][fe.index("neutral")], pub["prompt_learner1.token_suffix"][2])
    assert torch.equal(sd["tsp_au.ctx"][au12], pub["prompt_learner2.ctx"][PUBLIC_AUS[ds].index(12)])
    # End-of-text positions recomputed from the token buffers (no tokenizer here), in our order.
    assert conv.eot["tsp_fe"] == [PUBLIC_EOT[ds][0][PUBLIC_FE.index(e)] for e in fe]
    assert conv.eot["tsp_au"] == [PUBLIC_EOT[ds][1][PUBLIC_AUS[ds].index(a)] for a in au]
    assert "token buffers" in conv.eot_source
    # Fixed similarity scale 10 (a buffer: nothing trains it); no output-level prior.
    assert model.head.scale.item() == pytest.approx(10.0)
    assert "head.log_scale" not in dict(model.named_parameters())
    assert model.head.mixing()[0].item() == 0.0 and conv.deviations == []
    # Outputs: finite, right shapes, for a public-length clip, an odd clip and single images.
    torch.manual_seed(0)
    with torch.no_grad():
        clip = model.predict(torch.randn(1, 16, 3, 32, 32))
        odd = model.predict(torch.randn(2, 3, 3, 32, 32))
        fe_out, au_out = model(torch.randn(2, 3, 32, 32), torch.randn(1, 16, 3, 32, 32))
    n_au = len(PUBLIC_AUS[ds])
    assert clip.fe_logits.shape == (1, 7) and clip.au_prob.shape == (1, 16, n_au)
    assert odd.au_prob.shape == (2, 3, n_au) and fe_out.fe_logits.shape == (2, 7) and au_out.au_prob.shape[1] == 16
    for out in (clip, odd, fe_out, au_out):
        assert all(torch.isfinite(t).all() for t in (out.fe_logits, out.au_prob, out.fe_proto_logits))
    # The public model encodes the expression and AU batches in separate passes (its MoE dispatch is batch-wide).
    with torch.no_grad():
        xs, ys = torch.randn(1, 16, 3, 32, 32), torch.randn(1, 16, 3, 32, 32)
        joint_fe, joint_au = model(xs, ys)
        torch.testing.assert_close(joint_fe.fe_logits, model.predict(xs).fe_logits)
        torch.testing.assert_close(joint_au.au_prob, model.predict(ys).au_prob)
    # The prototypes use the loaded text tower and prompts: a different context vector changes them.
    before = model.prototypes()[1].clone()
    with torch.no_grad():
        model.tsp_fe.ctx[0] += torch.randn(model.tsp_fe.ctx[0].shape)
    assert not torch.allclose(model.prototypes()[1], before)


def test_load_into_a_built_model_and_reject_a_different_configuration(tmp_path):
    pub = public_state("bp4d").state
    path = save(tmp_path, pub)
    model = SSMTeacher(ssm_config("public-bp4d", **OVERRIDES), text_encoder=text_tower(no_tokenizer))
    conv = load_public_checkpoint(model, path, au_dataset="bp4d")
    assert torch.equal(model.state_dict()["dpm.beta"], pub["beta"]) and set(conv.sources) == set(pub)
    with pytest.raises(PublicCheckpointError, match="module names are bp4d"):
        load_public_checkpoint(model, path, au_dataset="disfa")
    # Our own base configuration (17 AUs, shared context, transformer AU module) is not the public model.
    base = SSMTeacher(ssm_config("base", **OVERRIDES), text_encoder=text_tower(word_tokenize, vocab=301))
    with pytest.raises(PublicCheckpointError, match="not configured like the public bp4d model"):
        load_public_checkpoint(base, path)


def test_unknown_missing_or_misshapen_keys_fail_with_their_names(tmp_path):
    pub = public_state("bp4d").state
    with pytest.raises(PublicCheckpointError, match=r"mystery\.weight"):
        build(save(tmp_path, {**pub, "mystery.weight": torch.zeros(1)}))
    with pytest.raises(PublicCheckpointError, match=r"au_temporal_net\.layers\.0\.to_v\.weight"):
        build(save(tmp_path, {**pub, "au_temporal_net.layers.0.to_v.weight": torch.zeros(32, 32)}))
    without = {k: v for k, v in pub.items() if k != "au_smooth.weight"}
    with pytest.raises(PublicCheckpointError, match=r"au_smooth\.weight"):
        build(save(tmp_path, without))
    bad = {**pub, "encoder.proj": torch.zeros(32, 16)}
    with pytest.raises(PublicCheckpointError, match=r"encoder\.proj \(32, 16\) -> backbone\.proj \(32, 32\)"):
        build(save(tmp_path, bad))
    alias = {**pub, "encoder.transformer.resblocks.2.mlp.shared_expert.0.bias": torch.zeros(128)}
    with pytest.raises(PublicCheckpointError, match=r"shared_expert\.0\.bias.*differ"):
        build(save(tmp_path, alias))
    targets = {**pub, "row_targets_emo2au": pub["row_targets_emo2au"] + 1}
    with pytest.raises(PublicCheckpointError, match="row_targets_emo2au"):
        build(save(tmp_path, targets))
    mixed = {("module." + k if i % 2 else k): v for i, (k, v) in enumerate(pub.items())}
    with pytest.raises(PublicCheckpointError, match=r"'module\.' prefix"):
        build(save(tmp_path, mixed, prefix=""))


def test_tokenizer_recomputes_end_of_text_and_must_agree_with_the_buffers(tmp_path):
    fx = public_state("disfa")
    path = save(tmp_path, fx.state)
    model, conv = build(path, tokenize=fixture_tokenizer(fx, "disfa"))
    assert "tokenizer, matches the token buffers" in conv.eot_source
    assert conv.eot["tsp_au"] == [PUBLIC_EOT["disfa"][1][PUBLIC_AUS["disfa"].index(a)] for a in model.cfg.aus]

    def shifted(texts):  # a tokenizer that sees other prompts than the checkpoint was trained with
        ids = fixture_tokenizer(fx, "disfa")(texts).clone()
        ids[0] = torch.roll(ids[0], 1)
        return ids

    with pytest.raises(PublicCheckpointError, match="trained with other prompts"):
        build(path, tokenize=shifted)


def _save_best_emotion(tmp_path, state, extra=None):
    """best_emotion.pth as the public runner writes it: a dict whose `recorder` is a pickled training-curve object
    of a module that does not exist when loading (the public scripts ran as __main__ / their own package)."""
    mod = types.ModuleType("public_ssm_train_main")

    class RecorderMeter:
        def __init__(self, epochs):
            self.total_epoch = epochs
            self.epoch_losses = np.zeros((epochs, 2), dtype=np.float32)

    RecorderMeter.__module__, RecorderMeter.__qualname__ = mod.__name__, "RecorderMeter"
    mod.RecorderMeter = RecorderMeter
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=1e-4)
    payload = {"epoch": 12, "state_dict": {f"module.{k}": v for k, v in state.items()}, "best_acc": 55.5,
               "best_uar": np.float64(0.5), "optimizer": opt.state_dict(), "recorder": RecorderMeter(30),
               **(extra or {})}
    path = tmp_path / "best_emotion.pth"
    sys.modules[mod.__name__] = mod
    try:
        torch.save(payload, path)
    finally:
        del sys.modules[mod.__name__]
    return path


def test_best_emotion_checkpoint_needs_trust_pickle(tmp_path):
    pub = public_state("bp4d", seed=3).state
    path = _save_best_emotion(tmp_path, pub)
    with pytest.raises(PublicCheckpointError, match="trust_pickle"):
        build(path)
    model, conv = build(path, trust_pickle=True)
    assert conv.file.kind == "checkpoint" and conv.file.meta == {"epoch": 12, "best_acc": 55.5}
    assert "public_ssm_train_main.RecorderMeter" in conv.file.stubbed
    assert set(conv.sources) == set(pub)
    ref, _ = build(save(tmp_path, pub))
    for k, v in ref.state_dict().items():
        if k not in NOT_IN_PUBLIC:
            assert torch.equal(model.state_dict()[k], v), k


class _Trap:
    """Pickles as a call to `open(path, "w")`: executed, it would create the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_trust_pickle_runs_nothing_from_the_file(tmp_path):
    target = tmp_path / "created_by_unpickling"
    path = _save_best_emotion(tmp_path, public_state("bp4d").state, extra={"trap": _Trap(target)})
    _, conv = build(path, trust_pickle=True)
    assert not target.exists()
    assert any(name.endswith(".open") for name in conv.file.stubbed)


def test_local_frame_attention_matches_its_formula():
    torch.manual_seed(1)
    layer_mod = LocalFrameContext(dim=8, depth=1, heads=2, dim_head=4, radius=1)
    layer = layer_mod.layers[0]
    with torch.no_grad():
        layer.channel_gate.normal_()
        layer.relative_position_bias.normal_()
        layer.to_k.weight.normal_()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        got = layer_mod(x)
        y = layer.norm(x)
        q, k = layer.to_q(y), layer.to_k(y)
    want = torch.empty_like(x)
    for b in range(2):
        for i in range(5):
            for h in range(2):
                ch = slice(4 * h, 4 * h + 4)
                js = [j for j in (i - 1, i, i + 1) if 0 <= j < 5]
                s = torch.stack([q[b, i, ch] @ k[b, j, ch] / 2.0 + layer.relative_position_bias[h, j - i + 1]
                                 for j in js])
                ctx = (s.softmax(0)[:, None] * x[b, js][:, ch]).sum(0)
                gate = 0.25 * torch.tanh(layer.channel_gate[ch])
                want[b, i, ch] = x[b, i, ch] + gate * (ctx - x[b, i, ch])
    torch.testing.assert_close(got, want.detach())
    assert torch.equal(LocalFrameContext(8, heads=2, dim_head=4)(x[:, :1]), x[:, :1])  # one frame: unchanged
    fresh = LocalFrameContext(8, heads=2, dim_head=4)
    assert torch.equal(fresh(x), x)  # the gate starts at 0: identity


def test_public_moe_dispatch_follows_the_flattened_topk_order():
    """Slot s of token j runs expert idx.flatten()[s * N + j] of the N x k top-k matrix, weighted by token j's
    own s-th gate value (the public TrueMoE_FFN's dispatch loop); tokens are flattened sequence-major."""
    torch.manual_seed(3)
    moe = PublicDispatchMoE(8, n_experts=4, hidden=6).eval()
    with torch.no_grad():
        moe.gate.weight.normal_()
        moe.alpha.fill_(0.7)
    x = torch.randn(3, 2, 8)  # L x N x width, as the ViT blocks pass it
    with torch.no_grad():
        got = moe(x)
        flat = x.reshape(-1, 8)
        top, idx = moe.gate(flat).softmax(-1).topk(2, dim=-1)
        order = idx.flatten()
        want = torch.stack([
            moe.shared_fc2(moe.shared_act(moe.shared_fc1(flat[j])))
            + 0.7 * sum(top[j, s] * moe.private_experts[int(order[s * 6 + j])](flat[j]) for s in range(2))
            for j in range(6)])
    torch.testing.assert_close(got, want.view(3, 2, 8))


def test_au_smoothing_filters_frame_pairs():
    torch.manual_seed(2)
    smooth = AUSmoothing(3, half_window=2)
    with torch.no_grad():
        smooth.weight.normal_()
    w = smooth.weight[:, 0].detach()  # A x 5, centre index 2
    z = torch.randn(2, 4, 3)
    got = smooth(z).detach()
    for t0 in (0, 2):
        x0, x1 = z[:, t0], z[:, t0 + 1]
        torch.testing.assert_close(got[:, t0], w[:, 2] * x0 + w[:, 3] * x1)
        torch.testing.assert_close(got[:, t0 + 1], w[:, 1] * x0 + w[:, 2] * x1)
    one = smooth(z[:, :1]).detach()  # a still: the frame paired with itself
    torch.testing.assert_close(one[:, 0], (w[:, 2] + w[:, 3]) * z[:, 0])
    assert torch.allclose(AUSmoothing(3)(z[:, :2]), z[:, :2].sum(1, keepdim=True).expand(-1, 2, -1) / 5)


def test_presets_keep_their_behaviour_and_public_head_is_not_exportable(tmp_path):
    for name in ("tiny", "real", "base"):
        cfg = ssm_config(name)
        assert (cfg.au_temporal, cfg.au_smooth, cfg.learn_scale, cfg.moe_shared_act, cfg.public_prompts) == \
            ("transformer", None, True, "quick_gelu", None)
    tiny = SSMTeacher(ssm_config("tiny", conv_widths=(8, 16, 16, 32), dim=32, temporal_heads=2, temporal_dim_head=8,
                                 temporal_mlp=32))
    assert "head.log_scale" in dict(tiny.named_parameters()) and tiny.au_smooth is None
    assert not any(k.startswith("au_temporal.layers") for k in tiny.state_dict())
    public = ssm_config("public-disfa")
    assert (public.dim, public.n_ctx, public.ctx_per_class, public.aus) == (512, 8, True, (1, 2, 4, 6, 9, 12, 25, 26))
    model, _ = build(save(tmp_path, public_state("bp4d").state))
    with pytest.raises(ValueError, match="au_smooth"):
        model.export_head()
    # Without a checkpoint or a tokenizer the public prompts are unset: a clear error, not garbage prototypes.
    fresh = SSMTeacher(replace_cfg(public, **OVERRIDES), text_encoder=text_tower(no_tokenizer))
    with pytest.raises(RuntimeError, match="not set"):
        fresh.prototypes()


def replace_cfg(cfg, **kw):
    return type(cfg)(**{**cfg.model_dump(), **kw})
