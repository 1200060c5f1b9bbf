"""GPU benchmark: the fused head kernel vs the same math as separate PyTorch CUDA ops.

Needs an NVIDIA GPU, torch with CUDA and pycuda or CuPy; exits with status 2 and
a message saying what is missing otherwise. Both paths run on the same GPU, on
the same torch-allocated buffers and stream, with EMA smoothing of every face:

    python benchmarks/kernel_bench.py [--iterations 1000] [--backend cupy]

Times are CUDA-event time per call over back-to-back calls (launch overhead
included), after a warm-up. The `max |diff|` column checks that both agree.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from edge.head import SmoothingSpec
from edge.head.params import HeadParams, synthetic_params
from edge.kernels.launcher import CudaUnavailableError, CupyHead, PycudaHead
from edge.kernels.layout import DeviceBatch


@dataclass(frozen=True)
class Row:
    batch: int
    dtype: str
    fused_us: float
    torch_us: float
    max_diff: float


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


def _time(torch, step, iterations: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iterations):
        step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / iterations


def run(backend: str, iterations: int, warmup: int) -> int:
    try:
        import torch
    except ImportError:
        print("kernel_bench: torch is not installed; this benchmark needs torch with CUDA", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("kernel_bench: no CUDA GPU visible to torch; nothing measured", file=sys.stderr)
        return 2
    torch.cuda.init()
    params = synthetic_params(seed=0)
    spec = SmoothingSpec("ema", alpha=0.4, max_tracks=64)
    launchers = {"cupy": CupyHead, "pycuda": PycudaHead}
    order = [backend] if backend != "auto" else ["cupy", "pycuda"]
    fused = None
    for name in order:
        try:
            fused = launchers[name](params, spec)
            break
        except CudaUnavailableError as exc:
            print(f"kernel_bench: {name} launcher unavailable: {exc}", file=sys.stderr)
    if fused is None:
        print("kernel_bench: no CUDA launcher (pycuda or CuPy); nothing measured", file=sys.stderr)
        return 2
    # CuPy takes torch's stream handle; pycuda launches on the legacy default stream, torch's default too.
    stream = torch.cuda.current_stream().cuda_stream if fused.backend == "cupy" else None
    e, a = params.n_fe, params.n_au
    rows: list[Row] = []
    for dtype in ("float32", "float16"):
        for batch in (1, 8, 64):
            gen = torch.Generator(device="cuda").manual_seed(batch)
            tdt = getattr(torch, dtype)
            f = torch.randn(batch, params.dim, device="cuda", generator=gen).to(tdt)
            g = torch.randn(batch, params.dim, device="cuda", generator=gen).to(tdt)
            slots = torch.arange(batch, device="cuda", dtype=torch.int32)
            fresh = torch.zeros(batch, device="cuda", dtype=torch.uint8)
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
            reference = TorchHead(params, spec, torch)
            slots64, fresh_b = slots.long(), fresh.bool()
            fresh_b.fill_(True)
            reference(f, g, slots64, fresh_b)  # both start from the same first frame
            fresh.fill_(1)
            fused.launch(dev_batch, stream)
            fresh.fill_(0)
            fresh_b.fill_(False)
            fused_us = _time(torch, lambda b=dev_batch: fused.launch(b, stream), iterations, warmup)
            step = lambda f=f, g=g, r=reference, s=slots64, n=fresh_b: r(f, g, s, n)  # noqa: E731
            torch_us = _time(torch, step, iterations, warmup)
            # Same number of smoothing steps on both sides, so the states agree.
            fe_ref = reference.state[:batch, :e]
            torch.cuda.synchronize()
            diff = float((out["fe_prob"] - fe_ref).abs().max())
            rows.append(Row(batch, dtype, fused_us, torch_us, diff))
    name = torch.cuda.get_device_name()
    cap = ".".join(map(str, torch.cuda.get_device_capability()))
    print(f"GPU: {name} (sm {cap}), torch {torch.__version__}, fused launcher: {fused.backend}")
    print(f"E={e} A={a} D={params.dim}, EMA smoothing, {iterations} calls after {warmup} warm-up")
    print(f"{'batch':>5} {'input':>8} {'fused us':>9} {'torch ops us':>13} {'speed-up':>9} {'max |diff|':>11}")
    for r in rows:
        print(
            f"{r.batch:>5} {r.dtype:>8} {r.fused_us:>9.1f} {r.torch_us:>13.1f} "
            f"{r.torch_us / r.fused_us:>8.1f}x {r.max_diff:>11.2e}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--backend", choices=["auto", "cupy", "pycuda"], default="auto")
    args = parser.parse_args(argv)
    return run(args.backend, args.iterations, args.warmup)


if __name__ == "__main__":
    raise SystemExit(main())
