"""The head file loader: every kind of bad `.npz` is refused with the file and array named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.head import HeadParamsError, load_head_params
from edge.head.params import ARRAY_NAMES, save_head_params, synthetic_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in synthetic_params(n_fe=4, n_au=5, dim=16, seed=2).arrays().items()}


def write(tmp_path: Path, arrays: dict[str, np.ndarray], **kw) -> Path:
    path = tmp_path / "head.npz"
    np.savez(path, **arrays, **kw)
    return path


def test_round_trip(tmp_path: Path, arrays) -> None:
    params = load_head_params(write(tmp_path, arrays))
    assert (params.n_fe, params.n_au, params.dim) == (4, 5, 16)
    assert set(params.arrays()) == set(ARRAY_NAMES)
    again = tmp_path / "again.npz"
    save_head_params(params, again)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    for name, arr in load_head_params(again).arrays().items():
        np.testing.assert_array_equal(arr, arrays[name])
    assert params.fe_weight.flags.writeable is False


def _mutations():
    def drop(a):
        del a["au_threshold"]

    def extra(a):
        a["fe_temperature"] = np.float32(1.0)

    def f64(a):
        a["fe_bias"] = a["fe_bias"].astype(np.float64)

    def transposed(a):
        a["prior_loglik"] = np.ascontiguousarray(a["prior_loglik"].T)

    def other_dim(a):
        a["au_weight"] = np.zeros((5, 17), np.float32)

    def nan(a):
        a["au_proto"][2, 3] = np.nan

    def mix(a):
        a["mix_au"] = np.array(1.5, np.float32)

    def scale_vec(a):
        a["scale"] = np.array([10.0], np.float32)

    def proto(a):
        a["fe_proto"] = a["fe_proto"] * 2

    def threshold(a):
        a["au_threshold"][0] = 1.2

    def weight_vec(a):
        a["fe_weight"] = a["fe_weight"][0]

    return [
        (drop, "au_threshold", "missing"),
        (extra, "fe_temperature", "unknown array"),
        (f64, "fe_bias", "float32"),
        (transposed, "prior_loglik", r"E=4 x A=5"),
        (other_dim, "au_weight", r"A=5 x D=16"),
        (nan, "au_proto", r"non-finite value at index \(2, 3\)"),
        (mix, "mix_au", r"\[0, 1\)"),
        (scale_vec, "scale", "scalar"),
        (proto, "fe_proto", "L2-normalised"),
        (threshold, "au_threshold", r"\[0, 1\]"),
        (weight_vec, "fe_weight", "E x D matrix"),
    ]


@pytest.mark.parametrize(("mutate", "array", "message"), _mutations(), ids=lambda x: getattr(x, "__name__", None))
def test_bad_arrays_are_named(tmp_path: Path, arrays, mutate, array: str, message: str) -> None:
    mutate(arrays)
    path = write(tmp_path, arrays)
    with pytest.raises(HeadParamsError, match=message) as info:
        load_head_params(path)
    assert info.value.array == array
    assert str(path) in str(info.value) and repr(array) in str(info.value)


def test_unreadable_files(tmp_path: Path, arrays) -> None:
    with pytest.raises(HeadParamsError, match="file not found"):
        load_head_params(tmp_path / "absent.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip archive")
    with pytest.raises(HeadParamsError, match=r"not a readable \.npz"):
        load_head_params(junk)
    pickled = write(tmp_path, arrays, note=np.array([{"a": 1}], dtype=object))
    with pytest.raises(HeadParamsError, match=r"not a readable \.npz"):
        load_head_params(pickled)


def test_device_head_never_imports_torch() -> None:
    code = (
        "import sys, edge.head, edge.head.bench, edge.kernels.launcher, edge.kernels.build;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'quantize')];"
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
