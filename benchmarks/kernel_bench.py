"""GPU benchmark: the fused head kernel as the device ships it vs its two alternatives.

- fused: `edge.kernels.launcher.CudaHead.launch` on device pointers, on its
  CudaSession's stream (cuda-python, NVRTC-compiled): what runs after the
  TensorRT engine on a Jetson;
- torch ops: the same math as separate PyTorch CUDA ops (one launch per op);
- numpy head: `NumpyHead.run` on host arrays, what the device runs when the
  fused kernel does not load (and on CPU-only boxes).

Needs an NVIDIA GPU, torch with CUDA and cuda-python; exits with status 2 and a
message saying what is missing otherwise. EMA smoothing of every face:

    python benchmarks/kernel_bench.py [--iterations 1000]

Times are wall-clock per call over back-to-back calls after a warm-up, each
path synchronised once at the end (fused, torch) or none needed (numpy). The
`max |diff|` columns compare the fused outputs with torch's and with NumPy's.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np

from edge.head import NumpyHead, SmoothingSpec
from edge.head.params import HeadParams, synthetic_params
from edge.kernels.launcher import CudaHead
from edge.kernels.layout import DeviceBatch
from edge.runtime.cuda_binding import CudaUnavailableError
from edge.runtime.cuda_session import CudaSession


@dataclass(frozen=True)
class Row:
    batch: int
    dtype: str
    fused_us: float
    torch_us: float
    numpy_us: float
    diff_torch: float
    diff_numpy: float


class TorchHead:
    """docs/head.md as plain PyTorch ops (one kernel each), EMA state in a device tensor."""

    def __init__(self, params: HeadParams, spec: SmoothingSpec, torch) -> None:
        self.t = torch
        dev = torch.device("cuda")
        self.p = {k: torch.from_numpy(np.asarray(v)).to(dev) for k, v in params.arrays().items()}
        self.n_fe, self.n_au = params.n_fe, params.n_au
        self.alpha = spec.alpha
        self.state = torch.zeros(spec.max_tracks, params.n_fe + params.n_au, device=dev)

    def __call__(self, f, g, slots, fresh):
        t, p = self.t, self.p
        f, g = f.float(), g.float()
        n_f = f.norm(dim=1, keepdim=True).clamp_min(1e-6)
        n_g = g.norm(dim=1, keepdim=True).clamp_min(1e-6)
        z_fe = f @ p["fe_weight"].T + p["fe_bias"] + p["scale"] * (f @ p["fe_proto"].T) / n_f
        z_au = g @ p["au_weight"].T + p["au_bias"] + p["scale"] * (g @ p["au_proto"].T) / n_g
        p_fe0, p_au0 = t.softmax(z_fe, dim=1), t.sigmoid(z_au)
        z_fe2 = z_fe + p["mix_fe"] * (p_au0 @ p["prior_loglik"].T + p["prior_bias"]) / self.n_au
        p_au = (1 - p["mix_au"]) * p_au0 + p["mix_au"] * (p_fe0 @ p["prior_expect"].T)
        prob = t.cat([t.softmax(z_fe2, dim=1), p_au], dim=1)
        prev = self.state[slots]
        smoothed = t.where(fresh[:, None], prob, self.alpha * prob + (1 - self.alpha) * prev)
        self.state[slots] = smoothed
        au = smoothed[:, self.n_fe :]
        return smoothed[:, : self.n_fe], au, au >= p["au_threshold"], smoothed[:, : self.n_fe].argmax(dim=1)


def _time(step, sync, iterations: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    sync()
    return (time.perf_counter() - start) * 1e6 / iterations


def run(iterations: int, warmup: int) -> int:
    try:
        import torch
    except ImportError:
        print("kernel_bench: torch is not installed; this benchmark needs torch with CUDA", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("kernel_bench: no CUDA GPU visible to torch; nothing measured", file=sys.stderr)
        return 2
    torch.cuda.init()
    try:
        session = CudaSession()  # the primary context, the one torch uses too: its pointers are valid here
    except CudaUnavailableError as exc:
        print(f"kernel_bench: {exc}", file=sys.stderr)
        return 2
    params = synthetic_params(seed=0)
    spec = SmoothingSpec("ema", alpha=0.4, max_tracks=64)
    fused = CudaHead(params, spec, session)
    e, a = params.n_fe, params.n_au
    rows: list[Row] = []
    for dtype in ("float32", "float16"):
        for batch in (1, 8, 64):
            gen = torch.Generator(device="cuda").manual_seed(batch)
            tdt = getattr(torch, dtype)
            f = torch.randn(batch, params.dim, device="cuda", generator=gen).to(tdt)
            g = torch.randn(batch, params.dim, device="cuda", generator=gen).to(tdt)
            slots = torch.arange(batch, device="cuda", dtype=torch.int32)
            fresh = torch.ones(batch, device="cuda", dtype=torch.uint8)
            out = {
                "fe_prob": torch.empty(batch, e, device="cuda"),
                "au_prob": torch.empty(batch, a, device="cuda"),
                "au_active": torch.empty(batch, a, device="cuda", dtype=torch.uint8),
                "top": torch.empty(batch, device="cuda", dtype=torch.int32),
            }
            ptrs = {k: v.data_ptr() for k, v in out.items()}
            dev_batch = DeviceBatch(
                batch, f.data_ptr(), g.data_ptr(), slots.data_ptr(), fresh.data_ptr(), **ptrs, dtype=dtype
            )
            torch.cuda.synchronize()
            reference = TorchHead(params, spec, torch)
            numpy_head = NumpyHead(params, spec)
            f_host, g_host = f.cpu().numpy(), g.cpu().numpy()
            slots_host = slots.cpu().numpy()
            slots64, fresh_b = slots.long(), torch.ones(batch, device="cuda", dtype=torch.bool)
            reference(f, g, slots64, fresh_b)  # all three start from the same first frame
            fused.launch(dev_batch)
            numpy_head.run(f_host, g_host, slots_host, np.ones(batch, bool))
            session.synchronize()
            fresh.fill_(0)
            fresh_b.fill_(False)
            torch.cuda.synchronize()
            not_fresh = np.zeros(batch, bool)
            fused_us = _time(lambda b=dev_batch: fused.launch(b), session.synchronize, iterations, warmup)
            step = lambda f=f, g=g, r=reference, s=slots64, n=fresh_b: r(f, g, s, n)  # noqa: E731
            torch_us = _time(step, torch.cuda.synchronize, iterations, warmup)
            numpy_step = lambda h=numpy_head, x=f_host, y=g_host, s=slots_host, n=not_fresh: h.run(x, y, s, n)  # noqa: E731
            numpy_us = _time(numpy_step, lambda: None, iterations, warmup)
            # Same number of smoothing steps on every side, so the states agree.
            fe_ref = reference.state[:batch, :e]
            torch.cuda.synchronize()
            fe_fused = out["fe_prob"].cpu().numpy()
            diff_torch = float(np.abs(fe_fused - fe_ref.cpu().numpy()).max())
            diff_numpy = float(np.abs(fe_fused - numpy_head.smoother.values[:batch, 0, :e]).max())
            rows.append(Row(batch, dtype, fused_us, torch_us, numpy_us, diff_torch, diff_numpy))
    fused.close()
    session.close()
    name = torch.cuda.get_device_name()
    cap = ".".join(map(str, torch.cuda.get_device_capability()))
    print(f"GPU: {name} (sm {cap}), torch {torch.__version__}, fused kernel: {fused.source}")
    print(f"E={e} A={a} D={params.dim}, EMA smoothing, {iterations} calls after {warmup} warm-up")
    print(f"{'batch':>5} {'input':>8} {'fused us':>9} {'torch ops us':>13} {'numpy us':>9} "
          f"{'vs torch':>9} {'vs numpy':>9} {'|diff| torch':>13} {'|diff| numpy':>13}")
    for r in rows:
        print(f"{r.batch:>5} {r.dtype:>8} {r.fused_us:>9.1f} {r.torch_us:>13.1f} {r.numpy_us:>9.1f} "
              f"{r.torch_us / r.fused_us:>8.1f}x {r.numpy_us / r.fused_us:>8.1f}x {r.diff_torch:>13.2e} "
              f"{r.diff_numpy:>13.2e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args(argv)
    return run(args.iterations, args.warmup)


if __name__ == "__main__":
    raise SystemExit(main())
