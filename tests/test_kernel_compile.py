"""nvcc compiles the fused head kernel for Jetson Orin (sm_87) and Hopper (sm_90); a broken kernel fails.

Skips only where nvcc is absent; any compile error is a test failure.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.kernels.build import KernelBuildError, build_cubin, cubin_name, find_nvcc
from edge.kernels.layout import ENTRY_POINTS, KERNEL_SOURCE

pytestmark = pytest.mark.skipif(find_nvcc() is None, reason="nvcc not installed")


@pytest.mark.parametrize("arch", ["sm_87", "sm_90"])
def test_kernel_compiles(arch: str, tmp_path: Path) -> None:
    result = build_cubin(arch, tmp_path)
    assert result.cubin.is_file() and result.cubin.stat().st_size > 1000
    assert set(result.entry_points) == set(ENTRY_POINTS.values())
    spills = [line for line in result.log.splitlines() if "spill stores" in line]
    assert len(spills) == len(ENTRY_POINTS) and all(", 0 bytes spill stores" in line for line in spills), spills
    assert sorted(p.name for p in tmp_path.iterdir()) == [cubin_name(arch)]  # no build debris
    assert cubin_name(arch).startswith("ssm_head.") and cubin_name(arch).endswith(f".{arch}.cubin")


def _broken_copy(tmp_path: Path, old: str, new: str) -> Path:
    text = KERNEL_SOURCE.read_text()
    assert old in text, f"test fixture out of date: {old!r} not in the kernel"
    path = tmp_path / "ssm_head.cu"
    path.write_text(text.replace(old, new, 1))
    return path


def test_syntax_error_fails(tmp_path: Path) -> None:
    broken = _broken_copy(tmp_path, "acc = warp_sum(acc);", "acc = warp_sum(acc)")
    with pytest.raises(KernelBuildError, match="error"):
        build_cubin("sm_87", tmp_path / "out", source=broken)
    assert not list((tmp_path / "out").glob("*.cubin"))


def test_type_error_fails(tmp_path: Path) -> None:
    broken = _broken_copy(tmp_path, "xf[i] = load_feature(fr, i);", "xf[i] = load_feature(fr, i, lane);")
    with pytest.raises(KernelBuildError, match=r"ssm_head\.cu"):
        build_cubin("sm_90", tmp_path / "out", source=broken)


def test_missing_entry_point_fails(tmp_path: Path) -> None:
    broken = _broken_copy(tmp_path, "SSM_HEAD_ENTRY(ssm_head_f16, unsigned short)", "")
    with pytest.raises(KernelBuildError, match="ssm_head_f16"):
        build_cubin("sm_87", tmp_path / "out", source=broken)


def test_bad_arch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sm_87"):
        build_cubin("orin", tmp_path)
