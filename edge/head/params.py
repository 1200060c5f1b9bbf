"""The bundle's head file (`.npz`): the constant arrays of docs/head.md, validated.

A head file that loads but has a transposed matrix or a NaN would produce
plausible-looking garbage on every device, so everything is checked once here:
names, dtypes, shapes (one consistent E, A, D), finite values and ranges.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

PROTO_NORM_TOL = 1e-3


class HeadParamsError(ValueError):
    """A head file or array set that must not be used; names the source and the array."""

    def __init__(self, source: str, array: str, message: str) -> None:
        self.source, self.array, self.message = source, array, message
        where = f"array {array!r}: " if array else ""
        super().__init__(f"head file {source}: {where}{message}")


@dataclass(frozen=True)
class HeadParams:
    """Float32 constants of the semantic head; shapes use E expressions, A AUs, D feature dims."""

    fe_weight: np.ndarray  # E x D
    fe_bias: np.ndarray  # E
    au_weight: np.ndarray  # A x D
    au_bias: np.ndarray  # A
    fe_proto: np.ndarray  # E x D, unit rows
    au_proto: np.ndarray  # A x D, unit rows
    scale: np.ndarray  # ()
    mix_fe: np.ndarray  # ()
    mix_au: np.ndarray  # ()
    prior_expect: np.ndarray  # A x E
    prior_loglik: np.ndarray  # E x A
    prior_bias: np.ndarray  # E
    au_threshold: np.ndarray  # A

    @property
    def n_fe(self) -> int:
        return int(self.fe_weight.shape[0])

    @property
    def n_au(self) -> int:
        return int(self.au_weight.shape[0])

    @property
    def dim(self) -> int:
        return int(self.fe_weight.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


ARRAY_NAMES: tuple[str, ...] = tuple(f.name for f in fields(HeadParams))

# Symbolic shapes of docs/head.md; "E", "A", "D" must resolve to one value each.
SHAPES: dict[str, tuple[str, ...]] = {
    "fe_weight": ("E", "D"),
    "fe_bias": ("E",),
    "au_weight": ("A", "D"),
    "au_bias": ("A",),
    "fe_proto": ("E", "D"),
    "au_proto": ("A", "D"),
    "scale": (),
    "mix_fe": (),
    "mix_au": (),
    "prior_expect": ("A", "E"),
    "prior_loglik": ("E", "A"),
    "prior_bias": ("E",),
    "au_threshold": ("A",),
}


def _resolve_dims(arrays: Mapping[str, np.ndarray], source: str) -> dict[str, int]:
    # The weight matrices define the dimensions; every other array must agree with them.
    for name, spelled in (("fe_weight", "E x D"), ("au_weight", "A x D")):
        shape = arrays[name].shape
        if len(shape) != 2 or min(shape) < 1:
            raise HeadParamsError(source, name, f"expected a non-empty {spelled} matrix, got shape {shape}")
    dims = {"E": arrays["fe_weight"].shape[0], "A": arrays["au_weight"].shape[0], "D": arrays["fe_weight"].shape[1]}
    for name, symbolic in SHAPES.items():
        shape = arrays[name].shape
        expected = tuple(dims[s] for s in symbolic)
        if shape != expected:
            spelled = " x ".join(f"{s}={dims[s]}" for s in symbolic) or "scalar ()"
            raise HeadParamsError(source, name, f"shape {shape} does not match {spelled} (expected {expected})")
    return dims


def _check_ranges(p: HeadParams, source: str) -> None:
    if not float(p.scale) > 0:
        raise HeadParamsError(source, "scale", f"must be > 0, got {float(p.scale)}")
    for name in ("mix_fe", "mix_au"):
        value = float(getattr(p, name))
        if not 0.0 <= value < 1.0:  # 0: the output-level prior is off
            raise HeadParamsError(source, name, f"mixing weight must lie in [0, 1), got {value}")
    for name in ("prior_expect", "au_threshold"):
        arr = getattr(p, name)
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise HeadParamsError(source, name, f"values must lie in [0, 1], got [{arr.min()}, {arr.max()}]")
    for name in ("fe_proto", "au_proto"):
        norms = np.linalg.norm(getattr(p, name).astype(np.float64), axis=1)
        worst = int(np.argmax(np.abs(norms - 1.0)))
        if abs(norms[worst] - 1.0) > PROTO_NORM_TOL:
            raise HeadParamsError(
                source, name, f"prototype rows must be L2-normalised; row {worst} has norm {norms[worst]:.6f}"
            )


def head_params_from_arrays(arrays: Mapping[str, np.ndarray], source: str = "<arrays>") -> HeadParams:
    """Validate a name -> array mapping (as `SemanticHead.export_params` + `au_threshold` gives)."""
    names = set(arrays)
    missing = [n for n in ARRAY_NAMES if n not in names]
    if missing:
        raise HeadParamsError(source, missing[0], f"missing (missing arrays: {missing})")
    unknown = sorted(names - set(ARRAY_NAMES))
    if unknown:
        raise HeadParamsError(source, unknown[0], f"unknown array (unknown: {unknown}; known: {list(ARRAY_NAMES)})")
    checked: dict[str, np.ndarray] = {}
    for name in ARRAY_NAMES:
        arr = np.asarray(arrays[name])
        if arr.dtype != np.float32:
            raise HeadParamsError(source, name, f"dtype must be float32, got {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            bad = np.argwhere(~np.isfinite(arr))
            raise HeadParamsError(source, name, f"non-finite value at index {tuple(int(i) for i in bad[0])}")
        checked[name] = np.array(arr, order="C", copy=True)  # ascontiguousarray would make scalars 1-d
        checked[name].setflags(write=False)
    _resolve_dims(checked, source)
    params = HeadParams(**checked)
    _check_ranges(params, source)
    return params


def load_head_params(path: Path | str) -> HeadParams:
    """Read and validate a head `.npz` file (never unpickles: object arrays are refused)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise HeadParamsError(str(path), "", "file not found") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise HeadParamsError(str(path), "", f"not a readable .npz file ({exc})") from None
    return head_params_from_arrays(arrays, str(path))


def save_head_params(params: HeadParams, path: Path | str) -> None:
    """Write a head file atomically (edge.fsutil: unique temp file, fsync, rename), e.g. for bundles and tests."""
    from edge.fsutil import atomic_writer

    with atomic_writer(path) as handle:
        np.savez(handle, **params.arrays())


def synthetic_params(n_fe: int = 7, n_au: int = 17, dim: int = 512, seed: int = 0) -> HeadParams:
    """Random but valid parameters of realistic size: for benchmarks and tests, never for inference."""
    rng = np.random.default_rng(seed)

    def unit_rows(n: int) -> np.ndarray:
        x = rng.standard_normal((n, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    mapping = np.clip(rng.uniform(0.02, 0.98, (n_fe, n_au)), 1e-4, 1 - 1e-4)
    f32 = np.float32
    return head_params_from_arrays(
        {
            "fe_weight": (rng.standard_normal((n_fe, dim)) / np.sqrt(dim)).astype(f32),
            "fe_bias": (0.1 * rng.standard_normal(n_fe)).astype(f32),
            "au_weight": (rng.standard_normal((n_au, dim)) / np.sqrt(dim)).astype(f32),
            "au_bias": (0.1 * rng.standard_normal(n_au)).astype(f32),
            "fe_proto": unit_rows(n_fe),
            "au_proto": unit_rows(n_au),
            "scale": np.array(10.0, dtype=f32),
            "mix_fe": np.array(0.3, dtype=f32),
            "mix_au": np.array(0.25, dtype=f32),
            "prior_expect": mapping.T.astype(f32),
            "prior_loglik": (np.log(mapping) - np.log1p(-mapping)).astype(f32),
            "prior_bias": np.log1p(-mapping).sum(axis=1).astype(f32),
            "au_threshold": rng.uniform(0.3, 0.7, n_au).astype(f32),
        },
        source=f"<synthetic seed={seed}>",
    )
