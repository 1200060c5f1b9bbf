"""What a student shape costs on this CPU, before training one: MACs and batch-1 latency of its lowerings.

Each shape is built with random weights, BN-folded, exported and lowered exactly
as a bundle is (FP32 graph, then the onnxruntime INT8 CPU graph with the float
stem); both graphs are then timed at batch 1 in alternating blocks. Weights do
not change the latency, so this answers "how small must the student be to beat
X ms" without a training run.

    pip install "torch==2.13.0" -e ".[edge,quantize]"
    python benchmarks/student_sizes.py 112:48,96,128:3,2,1 80:48,96,128:3,2,1 [--threads 2] [--runs 400]

A shape is CROP:WIDTHS:BLOCKS[:STEM] (the `DistillSettings` fields crop_size, widths, blocks, stem_width);
a `g` after the crop (`48g:...`) makes a grey, one-channel student.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def parse_shape(text: str):
    from quantize.student.model import StudentConfig

    try:
        crop, widths, blocks, *stem = text.split(":")
        if len(stem) > 1:
            raise ValueError("too many fields")
        grey = crop.endswith("g")
        return StudentConfig(crop_size=int(crop.rstrip("g")), in_channels=1 if grey else 3,
                             widths=tuple(int(w) for w in widths.split(",")),
                             blocks=tuple(int(b) for b in blocks.split(",")), feature_dim=64,
                             stem_width=int(stem[0]) if stem else None)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected CROP[g]:W1,W2,..:B1,B2,..[:STEM] ({exc})") from exc


def lower(config, work: Path) -> tuple[Path, Path]:
    from quantize.export.cpu_lowering import quantize_for_cpu
    from quantize.export.onnx_graphs import export_onnx, simplify
    from quantize.qat.fold import fold_batchnorm
    from quantize.qat.layers import set_mode
    from quantize.student.model import StudentBackbone

    model = StudentBackbone(config).eval()
    fold_batchnorm(model)
    set_mode(model, "float")
    raw, fp32, int8 = work / "raw.onnx", work / "fp32.onnx", work / "int8.onnx"
    export_onnx(model, raw, config.crop_size, config.in_channels)
    simplify(raw, fp32)
    rng = np.random.default_rng(0)
    shape = (32, config.in_channels, config.crop_size, config.crop_size)
    quantize_for_cpu(fp32, int8, rng.normal(0, 1, shape).astype(np.float32))
    return fp32, int8


def time_graphs(paths: dict[str, Path], size: int, threads: int, runs: int, channels: int = 3) -> dict[str, float]:
    """Median ms per batch-1 run, the graphs measured in rotating blocks of about 50."""
    from edge.pipeline.bench import ort_session, time_rotating

    sessions = {k: ort_session(p, threads) for k, p in paths.items()}
    x = np.random.default_rng(1).normal(0, 1, (1, channels, size, size)).astype(np.float32)
    runners = {k: (lambda s=s: s.run(None, {"image": x})) for k, s in sessions.items()}
    times = time_rotating(runners, runs, rounds=max(1, runs // 50), warmup=30)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shapes", nargs="+", type=parse_shape,
                        help="CROP[g]:WIDTHS:BLOCKS[:STEM], e.g. 80:48,96,128:3,2,1 or 48g:32,64,128:1,1,1:24")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=400, help="timed runs per graph (default 400)")
    args = parser.parse_args(argv)
    from edge.pipeline.bench import machine, machine_line
    from quantize.bench_cmd import onnx_macs

    print(f"{machine_line(machine())}; {args.threads} threads, batch 1, random weights")
    print(f"{'crop':>5} {'widths':>14} {'blocks':>8} {'MACs':>9} {'INT8 ms':>9} {'FP32 ms':>9} {'FP32/INT8':>10}")
    for config in args.shapes:
        with tempfile.TemporaryDirectory() as work:
            fp32, int8 = lower(config, Path(work))
            macs = onnx_macs(fp32)["macs"]
            t = time_graphs({"int8": int8, "fp32": fp32}, config.crop_size, args.threads, args.runs,
                            config.in_channels)
        crop = f"{config.crop_size}{'g' if config.in_channels == 1 else ''}"
        print(f"{crop:>5} {','.join(map(str, config.widths)):>14} {','.join(map(str, config.blocks)):>8} "
              f"{macs / 1e6:>8.1f}M {t['int8']:>9.3f} {t['fp32']:>9.3f} {t['fp32'] / t['int8']:>9.2f}x",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
