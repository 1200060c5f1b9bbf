"""Offline nvcc build of ssm_head.cu into a cubin per GPU architecture.

Used by the compile test (sm_87 Orin, sm_90) and at install time on a Jetson,
where a prebuilt cubin spares each start an NVRTC compile:
`python -m edge.kernels.build --arch sm_87 --out /opt/affect-sensor/kernels` (docs/jetson.md).
The file name carries a hash of the kernel source, so a cubin left from an older
release is never loaded against a newer launcher (`head.kernel_dir` lookup).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edge.kernels.layout import ENTRY_POINTS, KERNEL_SOURCE

_ARCH = re.compile(r"^sm_\d{2,3}[a-z]?$")


class KernelBuildError(RuntimeError):
    """nvcc is missing or rejected the kernel; carries nvcc's output."""


@dataclass(frozen=True)
class BuildResult:
    arch: str
    cubin: Path
    entry_points: tuple[str, ...]  # the entry functions ptxas reported compiling
    log: str


def cubin_name(arch: str, source: Path = KERNEL_SOURCE) -> str:
    """`ssm_head.<first 12 hex of the source's sha256>.<arch>.cubin`: valid only for this exact source."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    return f"{source.stem}.{digest}.{arch}.cubin"


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return None


def build_cubin(arch: str, out_dir: Path, source: Path = KERNEL_SOURCE, timeout_s: float = 300.0) -> BuildResult:
    """Compile `source` for `arch` with warnings as errors; the cubin appears atomically."""
    if not _ARCH.match(arch):
        raise ValueError(f"architecture must look like sm_87, got {arch!r}")
    nvcc = find_nvcc()
    if nvcc is None:
        raise KernelBuildError("nvcc not found on PATH, in $CUDA_HOME/bin or /usr/local/cuda/bin")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / cubin_name(arch, source)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
        partial = Path(tmp) / target.name
        cmd = [
            nvcc,
            "-cubin",
            f"-arch={arch}",
            "-O3",
            "--Werror",
            "all-warnings",
            "-Xptxas",
            "-v",
            "-o",
            str(partial),
            str(source),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise KernelBuildError(f"nvcc for {arch} did not finish within {timeout_s:.0f} s") from None
        log = proc.stdout + proc.stderr
        if proc.returncode != 0 or not partial.is_file():
            raise KernelBuildError(f"nvcc failed for {source.name} ({arch}), exit {proc.returncode}:\n{log}")
        partial.replace(target)
    entries = tuple(re.findall(r"Compiling entry function '([^']+)'", log))
    missing = sorted(set(ENTRY_POINTS.values()) - set(entries))
    if missing:
        target.unlink(missing_ok=True)
        raise KernelBuildError(f"{source.name} ({arch}) compiled but lacks entry points {missing}:\n{log}")
    return BuildResult(arch, target, entries, log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.kernels.build", description=__doc__)
    parser.add_argument("--arch", action="append", required=True, help="e.g. sm_87 (Orin); repeatable")
    parser.add_argument("--out", type=Path, default=Path("."), help="output directory for the cubins")
    args = parser.parse_args(argv)
    try:
        for arch in args.arch:
            result = build_cubin(arch, args.out)
            print(f"{result.cubin}  ({', '.join(result.entry_points)})")
    except (KernelBuildError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
