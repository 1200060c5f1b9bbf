"""The semantic head and output-level prior mapping in NumPy: the reference of docs/head.md.

Pure functions on float32 arrays. The CUDA kernel (edge/kernels/ssm_head.cu) and
the training module (quantize/ssm/head.py) are tested against this, so it
follows the spec's formulas line by line rather than being clever.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.head.params import HeadParams

EPS = 1e-6


@dataclass(frozen=True)
class HeadLogits:
    """Unsmoothed per-face outputs (B rows)."""

    fe_logits_raw: np.ndarray  # z_E, B x E
    au_logits_raw: np.ndarray  # z_A, B x A
    fe_logits: np.ndarray  # z_E' after the AU -> FE prior mapping, B x E
    fe_prob: np.ndarray  # p_E = softmax(z_E'), B x E
    au_prob: np.ndarray  # p_A after the FE -> AU prior mapping, B x A


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    # exp of -|z| only: no overflow warnings for large logits of either sign.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


def _features(x: np.ndarray, name: str, dim: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"feature {name!r} must have shape (batch, {dim}), got {x.shape}")
    if x.dtype not in (np.float32, np.float16):
        raise ValueError(f"feature {name!r} must be float32 or float16, got {x.dtype}")
    return x.astype(np.float32, copy=False)


def head_forward(params: HeadParams, f: np.ndarray, g: np.ndarray) -> HeadLogits:
    """docs/head.md "Per face" for a batch: f, g are B x D (FP32 or FP16; computed in FP32)."""
    f = _features(f, "f", params.dim)
    g = _features(g, "g", params.dim)
    if f.shape[0] != g.shape[0]:
        raise ValueError(f"f and g need the same batch size, got {f.shape[0]} and {g.shape[0]}")
    scale = params.scale.astype(np.float32)
    n_f = np.maximum(np.linalg.norm(f, axis=1, keepdims=True), np.float32(EPS))
    n_g = np.maximum(np.linalg.norm(g, axis=1, keepdims=True), np.float32(EPS))
    z_fe = f @ params.fe_weight.T + params.fe_bias + scale * ((f @ params.fe_proto.T) / n_f)
    z_au = g @ params.au_weight.T + params.au_bias + scale * ((g @ params.au_proto.T) / n_g)
    p_fe0 = softmax(z_fe)
    p_au0 = sigmoid(z_au)
    fe_logits = z_fe + params.mix_fe * (p_au0 @ params.prior_loglik.T + params.prior_bias) / np.float32(params.n_au)
    au_prob = (1 - params.mix_au) * p_au0 + params.mix_au * (p_fe0 @ params.prior_expect.T)
    return HeadLogits(z_fe, z_au, fe_logits, softmax(fe_logits), au_prob.astype(np.float32, copy=False))
