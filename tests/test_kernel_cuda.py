"""The fused CUDA kernel against the NumPy reference (needs a GPU + pycuda or CuPy; skips cleanly without).

The first tests check the host/kernel contract and the no-GPU fallback and run
everywhere; the `gpu` tests run the kernel through each available launcher.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from edge.head import NumpyHead, SmoothingSpec, TrackSlots, select_head
from edge.head.fp32_bound import assert_within, head_bound, smoothed_bound
from edge.head.params import HeadParams, synthetic_params
from edge.kernels.launcher import CudaUnavailableError, CupyHead, PycudaHead
from edge.kernels.layout import ENTRY_POINTS, DeviceBatch, kernel_args, kernel_source, pack_params

LAUNCHERS = {"pycuda": PycudaHead, "cupy": CupyHead}


@pytest.fixture(scope="module")
def params() -> HeadParams:
    return synthetic_params(n_fe=7, n_au=17, dim=512, seed=4)


def cuda_head(backend: str, params: HeadParams, spec: SmoothingSpec):
    try:
        return LAUNCHERS[backend](params, spec)
    except CudaUnavailableError as exc:
        pytest.skip(f"{backend} launcher unavailable: {exc}")


def available_backends() -> list[str]:
    names = []
    for name, cls in LAUNCHERS.items():
        try:
            cls(synthetic_params(2, 2, 32), SmoothingSpec("none", max_tracks=1))
        except CudaUnavailableError:
            continue
        names.append(name)
    return names


def features(batch: int, dim: int, dtype: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    f, g = rng.standard_normal((2, batch, dim)) * rng.uniform(0.2, 4.0, (2, batch, 1))
    return f.astype(dtype), g.astype(dtype)


class Tolerance:
    """Float32 bounds (docs/head.md, "Parity tolerance") for a sequence of frames through one smoother."""

    def __init__(self, params: HeadParams, spec: SmoothingSpec) -> None:
        self.params, self.depth = params, spec.depth
        self.worst_fe, self.worst_au = np.zeros(params.n_fe), np.zeros(params.n_au)

    def frame(self, f: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fe_prob, au_prob) bounds after this frame; smoothed rows are convex combinations of earlier ones."""
        raw = head_bound(self.params, f, g)
        self.worst_fe = np.maximum(self.worst_fe, raw.fe_prob.max(axis=0))
        self.worst_au = np.maximum(self.worst_au, raw.au_prob.max(axis=0))
        fe, au = smoothed_bound(self.worst_fe, self.depth), smoothed_bound(self.worst_au, self.depth)
        return np.broadcast_to(fe, (len(f), len(fe))), np.broadcast_to(au, (len(f), len(au)))


def assert_batches_close(got, want, params: HeadParams, tol: tuple[np.ndarray, np.ndarray], where: str) -> None:
    fe_tol, au_tol = tol
    assert_within(f"{where}: fe_prob", got.fe_prob, want.fe_prob, fe_tol)
    assert_within(f"{where}: au_prob", got.au_prob, want.au_prob, au_tol)
    clear = np.abs(want.au_prob - params.au_threshold) > au_tol  # decisions inside the bound may flip
    np.testing.assert_array_equal(got.au_active[clear], want.au_active[clear], err_msg=f"{where}: au_active")
    top2 = np.sort(want.fe_prob, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > 2 * fe_tol.max(axis=1)
    np.testing.assert_array_equal(got.top_expression[decisive], want.top_expression[decisive], err_msg=where)


# --- contract checks: no GPU needed --------------------------------------------------------


def test_kernel_args_match_the_cu_signature(params: HeadParams) -> None:
    """Argument count and C types of layout.kernel_args against the entry-point macro in ssm_head.cu."""
    match = re.search(r"NAME\((.*?)\)\s*\{", kernel_source(), flags=re.DOTALL)
    assert match, "entry-point macro not found in ssm_head.cu"
    declared = [p.strip() for p in match.group(1).replace("\\", " ").split(",")]
    batch = DeviceBatch(1, 1, 2, 3, 4, 5, 6, 7, 8)
    args = kernel_args(batch, params, SmoothingSpec("window", window=3), 9, 10, 11)
    assert len(args) == len(declared)
    for decl, arg in zip(declared, args, strict=True):
        expected = np.uint64 if "*" in decl else np.int32 if decl.startswith("int ") else np.float32
        assert type(arg) is expected, (decl, type(arg))


def test_packed_parameter_layout(params: HeadParams) -> None:
    e, a, d = params.n_fe, params.n_au, params.dim
    blob = pack_params(params)
    rows = 2 * e + 2 * a
    assert blob.dtype == np.float32 and blob.size == rows * d + 2 * e + 2 * a + 2 * e * a
    mat = blob[: rows * d].reshape(rows, d)
    np.testing.assert_array_equal(mat[e : 2 * e], params.fe_proto)
    np.testing.assert_array_equal(mat[2 * e + a :], params.au_proto)
    tail = blob[rows * d :]
    np.testing.assert_array_equal(tail[e + a : e + a + e * a].reshape(e, a), params.prior_loglik)
    np.testing.assert_array_equal(tail[-a:], params.au_threshold)


def test_without_cuda_the_numpy_head_is_selected(params: HeadParams) -> None:
    if available_backends():
        pytest.skip("a CUDA launcher works here")
    chosen = select_head(params, SmoothingSpec())
    assert chosen.backend == "numpy" and isinstance(chosen.runner, NumpyHead)
    assert set(chosen.skipped) == {"pycuda", "cupy"} and all(chosen.skipped.values())
    for name in LAUNCHERS:
        with pytest.raises(CudaUnavailableError, match=name if name == "pycuda" else "CuPy"):
            select_head(params, SmoothingSpec(), name)  # type: ignore[arg-type]


# --- the kernel on a GPU ---------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("backend", list(LAUNCHERS))
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("batch", [1, 8, 64])
def test_kernel_matches_numpy(params: HeadParams, backend: str, dtype: str, batch: int) -> None:
    spec = SmoothingSpec("none", max_tracks=64)
    head = cuda_head(backend, params, spec)
    f, g = features(batch, params.dim, dtype, seed=batch)
    slots, fresh = np.full(batch, -1, np.int32), np.zeros(batch, bool)
    want = NumpyHead(params, spec).run(f, g, slots, fresh)
    tol = Tolerance(params, spec).frame(f, g)
    assert_batches_close(head.run(f, g, slots, fresh), want, params, tol, f"{backend} {dtype} B={batch}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", list(LAUNCHERS))
@pytest.mark.parametrize("mode", ["ema", "window"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_smoothing_over_frames_matches_numpy(params: HeadParams, backend: str, mode: str, dtype: str) -> None:
    """Several frames with tracks appearing, leaving, and a freed slot reused: outputs and device state."""
    spec = SmoothingSpec(mode, alpha=0.35, window=3, max_tracks=8)
    head = cuda_head(backend, params, spec)
    ref = NumpyHead(params, spec)
    table = TrackSlots(spec.max_tracks)
    tolerance = Tolerance(params, spec)
    script = [[1, 2, 3], [1, 2, 3], [2, 3], [4, 2, 3], [4, 3], [4, 2, 3], [2, 4], [5, 4, 2]]
    for t, ids in enumerate(script):
        for tid in set(table.active) - set(ids):  # the tracker lost it: a later return is a new track
            table.release(tid)
        slots, fresh = table.assign(ids)
        slots = np.append(slots, -1)  # plus one untracked face
        fresh = np.append(fresh, False)
        f, g = features(len(slots), params.dim, dtype, seed=100 + t)
        tol = tolerance.frame(f, g)
        assert_batches_close(head.run(f, g, slots, fresh), ref.run(f, g, slots, fresh), params, tol, f"frame {t}")
    values, counters = head.state()
    np.testing.assert_array_equal(counters, ref.smoother.counters)
    state_tol = max(tolerance.worst_fe.max(), tolerance.worst_au.max())
    assert_within("smoothing state", values, ref.smoother.values,
                  np.broadcast_to(smoothed_bound(state_tol, spec.depth), values.shape))


@pytest.mark.gpu
def test_cupy_launch_on_device_pointers_and_external_stream(params: HeadParams) -> None:
    """The engine path: caller-owned device buffers, a raw stream handle, no host copies inside `launch`."""
    spec = SmoothingSpec("ema", max_tracks=4)
    head = cuda_head("cupy", params, spec)
    import cupy as cp

    f, g = features(3, params.dim, "float16", seed=7)
    slots, fresh = np.array([0, 2, -1], np.int32), np.array([1, 1, 0], np.uint8)
    dev = {k: cp.asarray(v) for k, v in {"f": f, "g": g, "slots": slots, "fresh": fresh}.items()}
    out = {
        "fe_prob": cp.zeros((3, params.n_fe), cp.float32),
        "au_prob": cp.zeros((3, params.n_au), cp.float32),
        "au_active": cp.zeros((3, params.n_au), cp.uint8),
        "top": cp.full(3, -1, cp.int32),
    }
    stream = cp.cuda.Stream(non_blocking=True)
    ptrs = {k: v.data.ptr for k, v in {**dev, **out}.items()}
    head.launch(DeviceBatch(3, **ptrs, dtype="float16"), stream.ptr)
    stream.synchronize()
    want = NumpyHead(params, spec).run(f, g, slots, fresh)
    fe_tol, au_tol = Tolerance(params, spec).frame(f, g)
    assert_within("fe_prob", cp.asnumpy(out["fe_prob"]), want.fe_prob, fe_tol)
    assert_within("au_prob", cp.asnumpy(out["au_prob"]), want.au_prob, au_tol)
    assert cp.asnumpy(out["top"]).tolist() == want.top_expression.tolist()


@pytest.mark.gpu
def test_pycuda_launch_on_engine_stream(params: HeadParams) -> None:
    spec = SmoothingSpec("window", window=2, max_tracks=4)
    head = cuda_head("pycuda", params, spec)
    import pycuda.driver as cuda

    f, g = features(2, params.dim, "float32", seed=8)
    slots, fresh = np.array([3, 1], np.int32), np.array([1, 1], np.uint8)
    ins = [cuda.to_device(x) for x in (f, g, slots, fresh)]
    host = {
        "fe_prob": np.zeros((2, params.n_fe), np.float32),
        "au_prob": np.zeros((2, params.n_au), np.float32),
        "au_active": np.zeros((2, params.n_au), np.uint8),
        "top": np.full(2, -1, np.int32),
    }
    outs = {k: cuda.mem_alloc(v.nbytes) for k, v in host.items()}
    stream = cuda.Stream()
    batch = DeviceBatch(2, *(int(x) for x in ins), **{k: int(v) for k, v in outs.items()})
    head.launch(batch, stream)
    for k, v in host.items():
        cuda.memcpy_dtoh_async(v, outs[k], stream)
    stream.synchronize()
    want = NumpyHead(params, spec).run(f, g, slots, fresh)
    fe_tol, au_tol = Tolerance(params, spec).frame(f, g)
    assert_within("fe_prob", host["fe_prob"], want.fe_prob, fe_tol)
    assert_within("au_prob", host["au_prob"], want.au_prob, au_tol)
    with pytest.raises(TypeError, match=r"pycuda\.driver\.Stream"):
        head.launch(batch, 12345)


@pytest.mark.gpu
def test_auto_selection_prefers_cuda(params: HeadParams) -> None:
    if not available_backends():
        pytest.skip("no GPU with pycuda or CuPy here")
    chosen = select_head(params, SmoothingSpec())
    assert chosen.backend in LAUNCHERS and chosen.backend in available_backends()
    assert set(ENTRY_POINTS) == {"float32", "float16"}
