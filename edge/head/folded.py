"""The head's math with its constants folded once: the CPU path's per-face cost.

`reference.head_forward` follows docs/head.md line by line and costs ~20 NumPy
calls a batch; for one face on a CPU those calls, not the arithmetic, are the
cost (0.05-0.08 ms of a ~0.5 ms face). Here the four GEMVs become one against
a block-diagonal stack of `[W; T']` for each feature (the CUDA kernel does one
per feature) and the prior's scalings are folded into its matrices at load
time. Same function, other summation order:
tests/test_head_folded.py holds it to the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.head.params import HeadParams
from edge.head.reference import EPS, softmax


@dataclass(frozen=True)
class FoldedHead:
    """Constants of one head, pre-multiplied for `forward`."""

    dim: int
    n_fe: int
    n_au: int
    stack: np.ndarray  # 2D x (2E + 2A): [f g] -> [W_E f, W_A g, T_E' f, T_A' g], block-diagonal
    bias: np.ndarray  # E + A: [b_E, b_A]
    scale: np.float32
    evidence: np.ndarray  # A x E: lambda_E * prior_loglik^T / A
    evidence_bias: np.ndarray  # E: lambda_E * prior_bias / A
    expect: np.ndarray  # E x A: lambda_A * prior_expect^T
    keep_au: np.float32  # 1 - lambda_A

    @staticmethod
    def of(params: HeadParams) -> FoldedHead:
        f32 = np.float32
        d, e, a = params.dim, params.n_fe, params.n_au
        # Half the stack is zeros: one GEMV of twice the size costs less than two calls at this size.
        stack = np.zeros((2 * d, 2 * (e + a)), f32)
        stack[:d, :e] = params.fe_weight.T
        stack[d:, e:e + a] = params.au_weight.T
        stack[:d, e + a:2 * e + a] = params.fe_proto.T
        stack[d:, 2 * e + a:] = params.au_proto.T
        mix_fe, mix_au = f32(params.mix_fe), f32(params.mix_au)
        return FoldedHead(
            dim=d, n_fe=e, n_au=a, stack=stack,
            bias=np.concatenate([params.fe_bias, params.au_bias]).astype(f32), scale=f32(params.scale),
            evidence=np.ascontiguousarray(mix_fe * params.prior_loglik.T / f32(a), f32),
            evidence_bias=(mix_fe * params.prior_bias / f32(a)).astype(f32),
            expect=np.ascontiguousarray(mix_au * params.prior_expect.T, f32),
            keep_au=f32(1) - mix_au,
        )

    def forward(self, f: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """B x D features (float32 or float16) -> (p_E, p_A) before smoothing, B x E and B x A float32."""
        if f.ndim != 2 or g.ndim != 2 or f.shape[1] != self.dim or g.shape != f.shape:
            raise ValueError(f"features f and g must both have shape (batch, {self.dim}), got {f.shape} and "
                             f"{g.shape}")
        e, a = self.n_fe, self.n_au
        x = np.concatenate([f, g], axis=1, dtype=np.float32)
        both = x @ self.stack
        norms = np.sqrt(np.square(x).reshape(len(x), 2, self.dim).sum(axis=2))  # B x 2: |f|, |g|
        per_row = np.repeat(self.scale / np.maximum(norms, np.float32(EPS)), (e, a), axis=1)
        z = both[:, :e + a] + self.bias + both[:, e + a:] * per_row
        z_fe = z[:, :e]
        p_au0 = np.float32(0.5) + np.float32(0.5) * np.tanh(np.float32(0.5) * z[:, e:])  # sigmoid, no overflow
        fe_prob = softmax(z_fe + p_au0 @ self.evidence + self.evidence_bias)
        au_prob = self.keep_au * p_au0 + softmax(z_fe) @ self.expect
        return fe_prob, au_prob
