"""SSM teacher pieces: text encoders, TSP, model shapes, head export, base construction, CLIP/public key maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edge.labels import DEFAULT_LABELS
from quantize.ssm.config import ssm_config
from quantize.ssm.model import SSMTeacher
from quantize.ssm.public_ckpt import PUBLIC_FE_ORDER, load_public_checkpoint
from quantize.ssm.text import ClipTextEncoder, HashedNgramEncoder
from quantize.ssm.tsp import TextualPrototypes

SMALL = dict(conv_widths=(8, 16, 16, 32), dim=32, temporal_heads=2, temporal_dim_head=8, temporal_mlp=32)


def toy_tokenize(texts, context_length=40):
    """Byte-level stand-in for CLIP's BPE: SOS=1, bytes+2 (<=257), EOT=300 (largest id), zero padding."""
    ids = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, t in enumerate(texts):
        body = [b + 2 for b in t.encode()[: context_length - 2]]
        row = [1, *body, 300]
        ids[i, : len(row)] = torch.tensor(row)
    return ids


def small_base(**kw):
    args = dict(dim=32, image_size=32, vit_patch=16, vit_width=32, vit_layers=2, vit_heads=2, moe_blocks=1,
                moe_hidden=16, text_width=32, text_layers=1, text_heads=2, n_ctx=2, temporal_heads=2,
                temporal_dim_head=8, temporal_mlp=32)
    return ssm_config("base", **{**args, **kw})


def small_base_model(**kw):
    cfg = small_base(**kw)
    text = ClipTextEncoder(toy_tokenize, vocab_size=301, context_length=48, width=32, layers=1, heads=2, out_dim=32)
    return SSMTeacher(cfg, text_encoder=text)


def test_hashed_encoder_is_deterministic_and_text_sensitive():
    texts = DEFAULT_LABELS.au_texts()[:3]
    a, b = HashedNgramEncoder(out_dim=16), HashedNgramEncoder(out_dim=16)
    ta, tb = a.tokens(texts), b.tokens(texts)
    ea, eb = a.encode(ta.embeds, ta.mask), b.encode(tb.embeds, tb.mask)
    assert torch.equal(ea, eb)
    assert not torch.allclose(ea[0], ea[1])


def test_tsp_prototypes_unit_norm_and_only_context_learns():
    enc = HashedNgramEncoder(out_dim=16)
    tsp = TextualPrototypes(DEFAULT_LABELS.expression_texts(), enc, n_ctx=3, dim=16)
    protos = tsp()
    assert protos.shape == (7, 16)
    assert torch.allclose(protos.norm(dim=-1), torch.ones(7), atol=1e-5)
    protos.sum().backward()
    assert tsp.ctx.grad is not None and tsp.ctx.grad.abs().sum() > 0
    assert [n for n, p in tsp.named_parameters()] == ["ctx"]


def test_tiny_shapes_clip_aggregation_and_export():
    torch.manual_seed(0)
    model = SSMTeacher(ssm_config("tiny", **SMALL)).eval()
    imgs, clips = torch.randn(3, 3, 112, 112), torch.randn(2, 4, 3, 112, 112)
    fe_out, au_out = model(clips, imgs)
    assert fe_out.f.shape == (2, 32) and fe_out.g.shape == (2, 4, 32)
    assert fe_out.fe_logits.shape == (2, 7) and fe_out.au_prob.shape == (2, 4, 17)
    assert au_out.au_prob.shape == (3, 1, 17)
    with torch.no_grad():
        single = model.predict(imgs)
    assert torch.allclose(single.au_prob, au_out.au_prob, atol=1e-5)

    params = model.export_head(au_threshold=np.full(17, 0.4))
    expected = {"fe_weight", "fe_bias", "au_weight", "au_bias", "fe_proto", "au_proto", "scale", "mix_fe",
                "mix_au", "prior_expect", "prior_loglik", "prior_bias", "au_threshold"}
    assert set(params) == expected
    # docs/head.md per-face formulas, in NumPy, reproduce the model's per-face outputs.
    f, g = single.f.numpy(), single.g[:, 0].numpy()
    p = params
    zf = f @ p["fe_weight"].T + p["fe_bias"] + p["scale"] * (f @ p["fe_proto"].T) / np.linalg.norm(f, axis=1,
                                                                                                   keepdims=True)
    za = g @ p["au_weight"].T + p["au_bias"] + p["scale"] * (g @ p["au_proto"].T) / np.linalg.norm(g, axis=1,
                                                                                                   keepdims=True)
    pe0 = np.exp(zf - zf.max(1, keepdims=True))
    pe0 /= pe0.sum(1, keepdims=True)
    pa0 = 1 / (1 + np.exp(-za))
    zf2 = zf + p["mix_fe"] * (pa0 @ p["prior_loglik"].T + p["prior_bias"]) / 17
    pa = (1 - p["mix_au"]) * pa0 + p["mix_au"] * pe0 @ p["prior_expect"].T
    np.testing.assert_allclose(zf2, single.fe_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(pa, single.au_prob[:, 0].numpy(), atol=1e-5)


def test_bad_input_shape_is_named():
    model = SSMTeacher(ssm_config("tiny", **SMALL))
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        model.predict(torch.randn(2, 112, 112))
    with pytest.raises(ValueError, match="exceeds"):
        model.predict(torch.randn(1, 17, 3, 112, 112))
    with pytest.raises(ValueError, match="unknown teacher config"):
        ssm_config("huge")


def test_base_construction_loads_local_clip_weights(tmp_path):
    """A reduced `base` (2 ViT blocks, last one MoE) loads an OpenAI-layout CLIP state dict from disk."""
    donor = small_base_model(moe_blocks=0)
    state = {f"visual.{k}": v for k, v in donor.backbone.state_dict().items()}
    state.update(donor.text_encoder.state_dict())
    path = tmp_path / "clip.pt"
    torch.save(state, path)
    model = small_base_model(clip_weights=path)
    moe = model.backbone.transformer.resblocks[1].mlp
    assert torch.equal(moe.shared_fc1.weight, state["visual.transformer.resblocks.1.mlp.c_fc.weight"])
    assert torch.equal(model.backbone.conv1.weight, state["visual.conv1.weight"])
    assert torch.equal(model.text_encoder.text_projection, state["text_projection"])
    out = model.predict(torch.randn(2, 3, 3, 32, 32))
    assert out.fe_logits.shape == (2, 7) and out.au_prob.shape == (2, 3, 17)
    assert not any(p.requires_grad for p in model.text_encoder.parameters())


def _public_state(model: SSMTeacher) -> dict[str, torch.Tensor]:
    """A synthetic checkpoint with the public SSM code's key names and shapes (BP4D: 12 AUs, 7 expressions)."""
    d, gen = model.cfg.dim, torch.Generator().manual_seed(1)

    def rnd(*shape):
        return torch.randn(shape, generator=gen)

    state: dict[str, torch.Tensor] = {}
    for k, v in model.backbone.state_dict().items():
        state[f"encoder.{k}"] = rnd(*v.shape)
        if ".mlp.shared_fc" in k:  # the public MoE keeps Sequential aliases of its shared expert
            alias = k.replace("shared_fc1", "shared_expert.0").replace("shared_fc2", "shared_expert.2")
            state[f"encoder.{alias}"] = state[f"encoder.{k}"]
    for k, v in model.text_encoder.state_dict().items():
        if not k.startswith("token_embedding"):
            state[f"text_encoder.{k}"] = rnd(*v.shape)
    n_ctx, width = model.tsp_fe.ctx.shape
    for i, n_cls in ((1, 7), (2, 12)):
        state[f"prompt_learner{i}.ctx"] = rnd(n_ctx, width)
        state[f"prompt_learner{i}.token_prefix"] = rnd(n_cls, 1, width)
        state[f"prompt_learner{i}.token_suffix"] = rnd(n_cls, 77 - 1 - n_ctx, width)
    inner, mlp = model.cfg.temporal_heads * model.cfg.temporal_dim_head, model.cfg.temporal_mlp
    for net, extra in (("dfer_temporal_net", 1), ("au_temporal_net", 0)):
        if extra:
            state[f"{net}.cls_token"] = rnd(1, 1, d)
        state[f"{net}.pos_embedding"] = rnd(1, 16 + extra, d)
        p = f"{net}.temporal_transformer.layers.0"
        state.update({
            f"{p}.0.fn.norm.weight": rnd(d), f"{p}.0.fn.norm.bias": rnd(d),
            f"{p}.0.fn.fn.to_qkv.weight": rnd(3 * inner, d),
            f"{p}.0.fn.fn.to_out.0.weight": rnd(d, inner), f"{p}.0.fn.fn.to_out.0.bias": rnd(d),
            f"{p}.1.fn.norm.weight": rnd(d), f"{p}.1.fn.norm.bias": rnd(d),
            f"{p}.1.fn.fn.net.0.weight": rnd(mlp, d), f"{p}.1.fn.fn.net.0.bias": rnd(mlp),
            f"{p}.1.fn.fn.net.3.weight": rnd(d, mlp), f"{p}.1.fn.fn.net.3.bias": rnd(d),
            f"{net}.ln.weight": rnd(d), f"{net}.ln.bias": rnd(d), f"{net}.gate": rnd(1),
        })
    state.update({"au_head.weight": rnd(12, d), "au_head.bias": rnd(12), "dfer_head.weight": rnd(7, d),
                  "dfer_head.bias": rnd(7), "init_map": rnd(7, 12), "row_targets_au2emo": rnd(7),
                  "row_targets_emo2au": rnd(12), "delta_map1": rnd(7, 12), "delta_map2": rnd(12, 7),
                  "alpha": torch.tensor(math.log(0.1 / 0.9)), "beta": torch.tensor(0.0)})
    return state


def test_public_ssm_checkpoint_mapping(tmp_path):
    model = small_base_model()
    public = _public_state(model)
    path = tmp_path / "ssm_bp4d.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in public.items()}}, path)
    au_before = model.head.au_linear.weight.detach().clone()
    conv = load_public_checkpoint(model, path, au_dataset="bp4d")

    sd = model.state_dict()
    assert torch.equal(sd["fe_temporal.blocks.0.attn.qkv.weight"],
                       public["dfer_temporal_net.temporal_transformer.layers.0.0.fn.fn.to_qkv.weight"])
    assert torch.equal(sd["au_temporal.blocks.0.fc2.bias"],
                       public["au_temporal_net.temporal_transformer.layers.0.1.fn.fn.net.3.bias"])
    assert torch.equal(sd["backbone.transformer.resblocks.1.mlp.gate.weight"],
                       public["encoder.transformer.resblocks.1.mlp.gate.weight"])
    assert torch.equal(sd["text_encoder.ln_final.weight"], public["text_encoder.ln_final.weight"])
    assert torch.equal(sd["tsp_au.ctx"], public["prompt_learner2.ctx"])
    # Head rows follow labels: public expression row 0 is happiness; public AU row 6 is AU12 (BP4D order).
    fe_row = DEFAULT_LABELS.expressions.index("happiness")
    assert torch.equal(sd["head.fe_linear.weight"][fe_row], public["dfer_head.weight"][PUBLIC_FE_ORDER.index(
        "happiness")])
    assert torch.equal(sd["head.au_linear.weight"][DEFAULT_LABELS.aus.index(12)], public["au_head.weight"][6])
    # AUs BP4D does not code keep their previous rows.
    for au in conv.uncovered_aus:
        assert torch.equal(sd["head.au_linear.weight"][DEFAULT_LABELS.aus.index(au)],
                           au_before[DEFAULT_LABELS.aus.index(au)])
    assert conv.uncovered_aus == [5, 9, 20, 25, 26]
    assert model.dpm.gate_ae.detach().item() == pytest.approx(0.1)
    assert model.head.scale.detach().item() == pytest.approx(10.0)
    assert any(k.endswith("shared_expert.0.weight") for k in conv.dropped)
    assert "delta_map1" in conv.dropped


def test_public_checkpoint_with_unknown_key_is_refused(tmp_path):
    model = small_base_model()
    public = _public_state(model)
    public["mystery.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(public, path)
    with pytest.raises(KeyError, match=r"mystery\.weight"):
        load_public_checkpoint(model, path)
