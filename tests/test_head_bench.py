"""The NumPy head micro-benchmark returns measured rows and a printable table."""

from __future__ import annotations

import math

import pytest

from edge.head.bench import bench_numpy_head, format_table, main


def test_rows_are_measured() -> None:
    rows = bench_numpy_head(batches=(1, 8), iterations=5, warmup=1)
    assert [(r.stage, r.batch) for r in rows] == [
        ("numpy head math", 1),
        ("folded head math", 1),
        ("numpy head step", 1),
        ("numpy head math", 8),
        ("folded head math", 8),
        ("numpy head step", 8),
    ]
    for r in rows:
        assert r.iterations == 5
        assert math.isfinite(r.mean_us) and 0 < r.p50_us <= r.p99_us
        assert r.per_face_us == pytest.approx(r.mean_us / r.batch)
    table = format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "numpy head step" in table


def test_main_prints_the_table(capsys) -> None:
    assert main(["--batch", "2", "--iterations", "3"]) == 0
    out = capsys.readouterr().out
    assert "E=7 A=17 D=512" in out and "numpy head math" in out


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="iterations"):
        bench_numpy_head(iterations=0)
