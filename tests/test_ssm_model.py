"""SSM teacher pieces: text encoders, TSP, model shapes, head export, base construction, CLIP key map
(public SSM checkpoints: tests/test_public_ckpt.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge.head import head_forward, head_params_from_arrays
from edge.head.fp32_bound import assert_within, head_bound
from edge.labels import DEFAULT_LABELS
from quantize.ssm.config import ssm_config
from quantize.ssm.model import SSMTeacher
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
    # docs/head.md per-face formulas (the NumPy reference) reproduce the model's per-face outputs to float32 rounding.
    head = head_params_from_arrays(params, "<export_head>")
    f, g = single.f.numpy(), single.g[:, 0].numpy()
    out, bound = head_forward(head, f, g), head_bound(head, f, g)
    assert_within("fe_logits", out.fe_logits, single.fe_logits.numpy(), bound.fe_logits)
    assert_within("au_prob", out.au_prob, single.au_prob[:, 0].numpy(), bound.au_prob)


def test_bad_input_shape_is_named():
    model = SSMTeacher(ssm_config("tiny", **SMALL))
    with pytest.raises(ValueError, match="B x C x H x W"):
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


def test_public_style_dpm_starts_at_the_prior_and_keeps_its_mass():
    """SSMPriorMapping (the public code's DPM): both maps equal M0 at init; learning moves mass, never adds it;
    the neutral row and column stay fixed."""
    from quantize.ssm.dpm import SSMPriorMapping

    dpm = SSMPriorMapping(DEFAULT_LABELS)
    assert torch.allclose(dpm.map_ae(), dpm.prior) and torch.allclose(dpm.map_ea(), dpm.prior.t())
    with torch.no_grad():
        dpm.delta_ae.normal_(0, 2.0)
        dpm.delta_ea.normal_(0, 2.0)
    neutral = list(DEFAULT_LABELS.expressions).index("neutral")
    assert torch.allclose(dpm.map_ae().sum(1), dpm.prior.sum(1), atol=1e-5)
    assert torch.equal(dpm.map_ae()[neutral], dpm.prior[neutral])
    assert torch.equal(dpm.map_ea()[:, neutral], dpm.prior[neutral])
    assert torch.allclose(dpm.map_ea().sum(1), dpm.prior.t().sum(1), atol=1e-5)
    assert not torch.allclose(dpm.map_ae(), dpm.prior)  # the corrections do something
    m = dpm.mapping()
    assert m.min() > 0 and m.max() < 1  # a probability for the output-level prior
    t_au, t_fe = dpm.transfer(torch.randn(17, 8), torch.randn(7, 8))
    assert torch.allclose(t_au.norm(dim=1), torch.ones(17)) and torch.allclose(t_fe.norm(dim=1), torch.ones(7))
