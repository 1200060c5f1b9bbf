"""Micro-benchmark of the NumPy head path (the CPU fallback), as rows for `affect-sensor bench`.

Times the whole per-frame step a CPU device runs (math, EMA smoothing,
thresholds) and the math alone, on parameters of the default model's size.
`python -m edge.head.bench` prints the table.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edge.head.params import HeadParams, synthetic_params
from edge.head.reference import head_forward
from edge.head.runner import NumpyHead
from edge.head.smoothing import SmoothingSpec


@dataclass(frozen=True)
class BenchRow:
    stage: str
    batch: int
    iterations: int
    mean_us: float
    p50_us: float
    p99_us: float

    @property
    def per_face_us(self) -> float:
        return self.mean_us / self.batch


def _time(step: Callable[[], object], iterations: int, warmup: int) -> np.ndarray:
    for _ in range(warmup):
        step()
    samples = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter_ns()
        step()
        samples[i] = (time.perf_counter_ns() - start) / 1e3
    return samples


def _row(stage: str, batch: int, samples: np.ndarray) -> BenchRow:
    return BenchRow(stage, batch, len(samples), float(samples.mean()), *map(float, np.percentile(samples, [50, 99])))


def bench_numpy_head(
    batches: Sequence[int] = (1, 8),
    iterations: int = 500,
    warmup: int = 50,
    params: HeadParams | None = None,
    seed: int = 0,
) -> list[BenchRow]:
    """Three rows per batch size: "numpy head math" (the reference), "folded head math" (the CPU path's) and
    "numpy head step" (the CPU path: folded math + EMA + thresholds)."""
    if iterations < 1 or warmup < 0 or not batches or min(batches) < 1:
        raise ValueError("need iterations >= 1, warmup >= 0 and batch sizes >= 1")
    params = params or synthetic_params(seed=seed)
    rng = np.random.default_rng(seed)
    rows: list[BenchRow] = []
    for batch in batches:
        f = rng.standard_normal((batch, params.dim)).astype(np.float32)
        g = rng.standard_normal((batch, params.dim)).astype(np.float32)
        rows.append(
            _row("numpy head math", batch, _time(lambda f=f, g=g: head_forward(params, f, g), iterations, warmup))
        )
        head = NumpyHead(params, SmoothingSpec("ema", max_tracks=max(batches)))
        rows.append(_row("folded head math", batch,
                         _time(lambda f=f, g=g, head=head: head.folded.forward(f, g), iterations, warmup)))
        slots = np.arange(batch, dtype=np.int32)
        head.run(f, g, slots, np.ones(batch, bool))
        not_fresh = np.zeros(batch, bool)
        step = lambda f=f, g=g, head=head, slots=slots, nf=not_fresh: head.run(f, g, slots, nf)  # noqa: E731
        rows.append(_row("numpy head step", batch, _time(step, iterations, warmup)))
    return rows


def format_table(rows: Sequence[BenchRow]) -> str:
    header = f"{'stage':<18} {'batch':>5} {'iters':>6} {'mean us':>9} {'p50 us':>9} {'p99 us':>9} {'us/face':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.stage:<18} {r.batch:>5} {r.iterations:>6} {r.mean_us:>9.1f} {r.p50_us:>9.1f} {r.p99_us:>9.1f} "
            f"{r.per_face_us:>9.1f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.head.bench", description=__doc__)
    parser.add_argument("--batch", type=int, action="append", help="batch size (repeatable; default 1 and 8)")
    parser.add_argument("--iterations", type=int, default=500)
    args = parser.parse_args(argv)
    rows = bench_numpy_head(tuple(args.batch or (1, 8)), iterations=args.iterations)
    p = synthetic_params()
    print(
        f"NumPy head, E={p.n_fe} A={p.n_au} D={p.dim}, numpy {np.__version__}, {platform.machine()} "
        f"{platform.processor() or ''}".rstrip()
    )
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
