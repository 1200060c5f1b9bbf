"""Host-side layout of the fused kernel's inputs: packed parameters, shared memory, arguments.

Pure NumPy, no CUDA: the launcher (cuda-python) and the test emulator use it, and it is the one
place that must agree with the offsets in ssm_head.cu (the GPU parity test checks
that they do).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from edge.head.params import HeadParams
from edge.head.smoothing import MODE_CODES, SmoothingSpec

KERNEL_SOURCE = Path(__file__).with_name("ssm_head.cu")
ENTRY_POINTS: dict[str, str] = {"float32": "ssm_head_f32", "float16": "ssm_head_f16"}
MAX_THREADS = 256  # the kernel's __launch_bounds__
SHARED_LIMIT = 48 * 1024  # dynamic shared memory available without opt-in on every target
FeatureDType = Literal["float32", "float16"]


def kernel_source() -> str:
    return KERNEL_SOURCE.read_text(encoding="utf-8")


def pack_params(params: HeadParams) -> np.ndarray:
    """[W_E; T_E'; W_A; T_A'] rows, then b_E, b_A, loglik, prior_bias, expect, au_threshold (float32)."""
    parts = [
        params.fe_weight,
        params.fe_proto,
        params.au_weight,
        params.au_proto,
        params.fe_bias,
        params.au_bias,
        params.prior_loglik,
        params.prior_bias,
        params.prior_expect,
        params.au_threshold,
    ]
    return np.ascontiguousarray(np.concatenate([p.astype(np.float32).ravel() for p in parts]))


def shared_mem_bytes(dim: int, n_fe: int, n_au: int) -> int:
    rows = 2 * n_fe + 2 * n_au
    return 4 * (2 * dim + rows + 2 + 4 * n_fe + 3 * n_au)


@dataclass(frozen=True)
class LaunchShape:
    threads: int
    shared_bytes: int

    @classmethod
    def for_params(cls, params: HeadParams, threads: int = 256) -> LaunchShape:
        if threads % 32 or not 32 <= threads <= MAX_THREADS:
            raise ValueError(f"threads per block must be a multiple of 32 in [32, {MAX_THREADS}], got {threads}")
        shared = shared_mem_bytes(params.dim, params.n_fe, params.n_au)
        if shared > SHARED_LIMIT:
            raise ValueError(f"head of D={params.dim} needs {shared} bytes of shared memory (limit {SHARED_LIMIT})")
        return cls(threads, shared)


@dataclass(frozen=True)
class DeviceBatch:
    """Device pointers (integers) for one launch; the caller owns all of this memory.

    f, g: B x D features (`dtype`), as the engine wrote them. slots: int32[B]
    (-1 = no track), fresh: uint8[B] (1 = first frame of a new track in that
    slot). Outputs: fe_prob float32[B x E], au_prob float32[B x A], au_active
    uint8[B x A], top int32[B].
    """

    batch: int
    f: int
    g: int
    slots: int
    fresh: int
    fe_prob: int
    au_prob: int
    au_active: int
    top: int
    dtype: FeatureDType = "float32"


def kernel_args(
    batch: DeviceBatch, params: HeadParams, spec: SmoothingSpec, param_ptr: int, state_ptr: int, counters_ptr: int
) -> tuple[np.generic, ...]:
    """The kernel's argument list as sized NumPy scalars (pointers as uint64), in signature order."""
    if batch.dtype not in ENTRY_POINTS:
        raise ValueError(f"feature dtype must be one of {list(ENTRY_POINTS)}, got {batch.dtype!r}")
    ptr = np.uint64
    return (
        ptr(batch.f),
        ptr(batch.g),
        ptr(param_ptr),
        ptr(batch.slots),
        ptr(batch.fresh),
        ptr(state_ptr),
        ptr(counters_ptr),
        ptr(batch.fe_prob),
        ptr(batch.au_prob),
        ptr(batch.au_active),
        ptr(batch.top),
        np.int32(params.dim),
        np.int32(params.n_fe),
        np.int32(params.n_au),
        np.int32(spec.max_tracks),
        np.int32(MODE_CODES[spec.mode]),
        np.int32(spec.window),
        np.float32(spec.alpha),
        np.float32(params.scale),
        np.float32(params.mix_fe),
        np.float32(params.mix_au),
    )


def state_sizes(params: HeadParams, spec: SmoothingSpec) -> tuple[int, int]:
    """Element counts of the smoothing state: float32 values and int32 counters."""
    return spec.max_tracks * spec.depth * (params.n_fe + params.n_au), spec.max_tracks * 2
