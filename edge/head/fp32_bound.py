"""How far two correct float32 implementations of the head may differ: the tolerance of every parity check.

NumPy (any BLAS, any thread count), PyTorch, onnxruntime and the CUDA kernel sum
the same products in different orders, with or without FMA, so their results
differ by rounding alone. A hand-picked tolerance is either loose enough to hide
bugs or tight enough to fail on a new BLAS; this derives it per element from the
inputs instead (docs/head.md, "Parity tolerance"). The basis is the classic
bound for a float32 sum of n products (Higham, *Accuracy and Stability of
Numerical Algorithms*, 2nd ed., §3.1): whatever the order,

    |fl(x·y) - x·y| <= gamma(n) * sum_i |x_i| |y_i|,   gamma(n) = n u / (1 - n u),  u = 2**-24,

and two implementations each within that of the exact value are within twice
it of each other. Everything after the dot products (norms, softmax, sigmoid,
the prior mapping) is propagated to first order with its Lipschitz constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.head.params import HeadParams
from edge.head.reference import EPS, sigmoid, softmax

U = 2.0**-24  # unit roundoff of float32 (round to nearest)
IMPLEMENTATIONS = 2  # a parity check compares two implementations, each off the exact value by up to one bound
# Below float32's smallest normal number, results are subnormal or flushed to zero (GPUs, FTZ builds): both agree
# only to this absolute level.
PROB_FLOOR = float(np.finfo(np.float32).tiny)


def gamma(n: int | np.ndarray) -> np.ndarray:
    """Relative error bound of an n-term float32 sum of products."""
    nu = np.asarray(n, dtype=np.float64) * U
    return nu / (1.0 - nu)


@dataclass(frozen=True)
class HeadBound:
    """Elementwise bounds on |a - b| for two float32 implementations, one per field of `HeadLogits`."""

    fe_logits_raw: np.ndarray
    au_logits_raw: np.ndarray
    fe_logits: np.ndarray
    fe_prob: np.ndarray
    au_prob: np.ndarray


def _softmax_bound(p: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """Softmax under logit errors |dz| <= dz_i: each p_i and 1 - p_i move by at most a factor exp(2 max dz)."""
    spread = np.expm1(2.0 * dz.max(axis=-1, keepdims=True))
    rounding = IMPLEMENTATIONS * gamma(p.shape[-1] + 4)
    return np.minimum(p, 1.0 - p) * spread + (rounding * p) + PROB_FLOOR


def head_bound(params: HeadParams, f: np.ndarray, g: np.ndarray) -> HeadBound:
    """Bounds for `head_forward(params, f, g)` against any other correct float32 implementation of docs/head.md."""
    k = IMPLEMENTATIONS
    p64 = {name: np.abs(np.asarray(v, np.float64)) for name, v in params.arrays().items()}
    scale = float(params.scale)

    def logits(x: np.ndarray, weight: str, bias: str, proto: str) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, np.float64)
        exact = x @ np.asarray(getattr(params, weight), np.float64).T + np.asarray(getattr(params, bias), np.float64)
        norm = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)
        exact = exact + scale * (x @ np.asarray(getattr(params, proto), np.float64).T) / norm
        ax = np.abs(x)
        # The norm is a sum of D squares (relative error gamma(D)/2 after the square root) and feeds the prototype
        # term, so n = 2D + 4 covers the dot products, the norm, the division, the scale and the two additions.
        magnitude = ax @ p64[weight].T + p64[bias] + abs(scale) * (ax @ p64[proto].T) / norm
        return exact, k * gamma(2 * params.dim + 4) * magnitude

    z_fe, dz_fe = logits(f, "fe_weight", "fe_bias", "fe_proto")
    z_au, dz_au = logits(g, "au_weight", "au_bias", "au_proto")
    p_fe0, p_au0 = softmax(z_fe), sigmoid(z_au)
    # sigmoid' <= 1/4, and p, 1 - p each move by at most a factor exp(dz); its exp, add and divide round relative to p
    dp_au0 = np.minimum(dz_au / 4.0, np.minimum(p_au0, 1.0 - p_au0) * np.expm1(dz_au)) + k * gamma(4) * p_au0
    dp_au0 = dp_au0 + PROB_FLOOR
    dp_fe0 = _softmax_bound(p_fe0, dz_fe)

    mix_fe, mix_au, n_au = abs(float(params.mix_fe)), float(params.mix_au), params.n_au
    evidence = p_au0 @ p64["prior_loglik"].T + p64["prior_bias"]
    z_fe1 = z_fe + float(params.mix_fe) * (p_au0 @ np.asarray(params.prior_loglik, np.float64).T
                                           + np.asarray(params.prior_bias, np.float64)) / n_au
    dz_fe1 = (
        dz_fe
        + mix_fe / n_au * (dp_au0 @ p64["prior_loglik"].T + k * gamma(n_au + 3) * evidence)
        + k * U * np.abs(z_fe1)
    )
    expect = p_fe0 @ p64["prior_expect"].T
    dp_au = (
        abs(1.0 - mix_au) * dp_au0
        + abs(mix_au) * (dp_fe0 @ p64["prior_expect"].T)
        + k * gamma(params.n_fe + 3) * (abs(1.0 - mix_au) * p_au0 + abs(mix_au) * expect)
    )
    return HeadBound(dz_fe, dz_au, dz_fe1, _softmax_bound(softmax(z_fe1), dz_fe1), dp_au)


def smoothed_bound(worst: np.ndarray, depth: int) -> np.ndarray:
    """After EMA or a window mean of probabilities each within `worst`: a convex combination of values keeps the
    largest bound, plus its own rounding over `depth` terms (probabilities are at most 1)."""
    return np.asarray(worst, np.float64) + IMPLEMENTATIONS * gamma(depth + 2)


def assert_within(name: str, got: np.ndarray, want: np.ndarray, bound: np.ndarray) -> None:
    """Raise AssertionError naming the worst element if |got - want| exceeds its bound anywhere."""
    got64, want64 = np.asarray(got, np.float64), np.asarray(want, np.float64)
    excess = np.abs(got64 - want64) - bound
    if np.all(excess <= 0) and np.all(np.isfinite(got64) == np.isfinite(want64)):
        return
    i = np.unravel_index(int(np.nanargmax(np.where(np.isnan(excess), np.inf, excess))), excess.shape)
    bad = int(np.sum(~(excess <= 0)))
    raise AssertionError(
        f"{name}: {bad} / {excess.size} outside the float32 bound; worst at {tuple(int(j) for j in i)}: "
        f"{got64[i]!r} vs {want64[i]!r} (|difference| {abs(got64[i] - want64[i]):.3g} > bound {bound[i]:.3g})"
    )
