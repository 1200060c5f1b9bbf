"""The fused CUDA kernel against the NumPy reference (needs a GPU and cuda-python; skips cleanly without).

The first tests check the host/kernel contract and the no-GPU fallback and run
everywhere; the `gpu` tests run the kernel through the one launcher the device
uses (edge/kernels/launcher.CudaHead on a CudaSession, NVRTC-compiled).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from edge.head import NumpyHead, SmoothingSpec, TrackSlots, select_head
from edge.head.fp32_bound import assert_within, head_bound, smoothed_bound
from edge.head.params import HeadParams, synthetic_params
from edge.kernels.launcher import CudaHead
from edge.kernels.layout import ENTRY_POINTS, DeviceBatch, kernel_args, kernel_source, pack_params
from edge.runtime.cuda_binding import CudaUnavailableError
from edge.runtime.cuda_session import CudaSession


@pytest.fixture(scope="module")
def params() -> HeadParams:
    return synthetic_params(n_fe=7, n_au=17, dim=512, seed=4)


@pytest.fixture(scope="module")
def session():
    try:
        s = CudaSession()
    except CudaUnavailableError as exc:
        pytest.skip(f"no CUDA here: {exc}")
    yield s
    s.close()


def cuda_head(session: CudaSession, params: HeadParams, spec: SmoothingSpec) -> CudaHead:
    return CudaHead(params, spec, session)


def cuda_works() -> bool:
    try:
        CudaSession().close()
    except CudaUnavailableError:
        return False
    return True


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
    if cuda_works():
        pytest.skip("CUDA works here")
    chosen = select_head(params, SmoothingSpec())  # no session: features are on the host
    assert chosen.backend == "numpy" and isinstance(chosen.runner, NumpyHead) and chosen.skipped["cuda"]
    with pytest.raises(CudaUnavailableError, match=r'head\.backend = "cuda" cannot run'):
        select_head(params, SmoothingSpec(), "cuda")
    with pytest.raises(CudaUnavailableError, match=r"cuda-python|CUDA cannot start"):
        CudaSession()


# --- the kernel on a GPU ---------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("batch", [1, 8, 64])
def test_kernel_matches_numpy(session, params: HeadParams, dtype: str, batch: int) -> None:
    spec = SmoothingSpec("none", max_tracks=64)
    head = cuda_head(session, params, spec)
    f, g = features(batch, params.dim, dtype, seed=batch)
    slots, fresh = np.full(batch, -1, np.int32), np.zeros(batch, bool)
    want = NumpyHead(params, spec).run(f, g, slots, fresh)
    tol = Tolerance(params, spec).frame(f, g)
    assert_batches_close(head.run(f, g, slots, fresh), want, params, tol, f"{dtype} B={batch}")
    head.close()


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["ema", "window"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_smoothing_over_frames_matches_numpy(session, params: HeadParams, mode: str, dtype: str) -> None:
    """Several frames with tracks appearing, leaving, and a freed slot reused: outputs and device state."""
    spec = SmoothingSpec(mode, alpha=0.35, window=3, max_tracks=8)
    head = cuda_head(session, params, spec)
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
        if t == 5:
            f[1, 3] = np.nan  # a broken row: never enters the state (issue 18)
        tol = tolerance.frame(np.nan_to_num(f), g)
        got, want = head.run(f, g, slots, fresh), ref.run(f, g, slots, fresh)
        ok = np.isfinite(want.fe_prob).all(axis=1)
        assert not np.isfinite(got.fe_prob[~ok]).all(axis=1).any()
        assert_batches_close(_rows(got, ok), _rows(want, ok), params, (tol[0][ok], tol[1][ok]), f"frame {t}")
    values, counters = head.state()
    np.testing.assert_array_equal(counters, ref.smoother.counters)
    state_tol = max(tolerance.worst_fe.max(), tolerance.worst_au.max())
    assert_within("smoothing state", values, ref.smoother.values,
                  np.broadcast_to(smoothed_bound(state_tol, spec.depth), values.shape))
    head.close()


def _rows(batch, keep):
    from edge.head.runner import HeadBatch

    return HeadBatch(batch.fe_prob[keep], batch.au_prob[keep], batch.au_active[keep], batch.top_expression[keep])


@pytest.mark.gpu
def test_launch_on_device_pointers_on_the_session_stream(session, params: HeadParams) -> None:
    """The engine path: caller-owned device buffers, the session stream, no host copies inside `launch`."""
    spec = SmoothingSpec("ema", max_tracks=4)
    head = cuda_head(session, params, spec)
    f, g = features(3, params.dim, "float16", seed=7)
    slots, fresh = np.array([0, 2, -1], np.int32), np.array([1, 1, 0], np.uint8)
    ins = {k: session.upload(v) for k, v in {"f": f, "g": g, "slots": slots, "fresh": fresh}.items()}
    host = head.outputs(3)
    outs = {k: session.alloc(v.nbytes) for k, v in host.items()}
    head.launch(DeviceBatch(3, *(b.ptr for b in ins.values()), **{k: b.ptr for k, b in outs.items()},
                            dtype="float16"))
    for k, v in host.items():
        session.copy_out(v, outs[k])
    session.synchronize()
    want = NumpyHead(params, spec).run(f, g, slots, fresh)
    fe_tol, au_tol = Tolerance(params, spec).frame(f, g)
    assert_within("fe_prob", host["fe_prob"], want.fe_prob, fe_tol)
    assert_within("au_prob", host["au_prob"], want.au_prob, au_tol)
    assert host["top"].tolist() == want.top_expression.tolist()
    for b in (*ins.values(), *outs.values()):
        session.free(b)
    head.close()


@pytest.mark.gpu
def test_auto_selection_prefers_cuda_with_a_session(session, params: HeadParams) -> None:
    chosen = select_head(params, SmoothingSpec(), "auto", session)
    assert chosen.backend == "cuda" and isinstance(chosen.runner, CudaHead)
    assert set(ENTRY_POINTS) == {"float32", "float16"}
    chosen.runner.close()
