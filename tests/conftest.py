"""Shared fixtures. Component-specific helpers live in their own modules (e.g. tests/mqtt_broker.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.alignment import TEMPLATE_112

REPO = Path(__file__).resolve().parents[1]
LONDON = REPO.parent / "shared" / "data" / "london_faces"


def manifest_fields(**overrides: Any) -> dict[str, Any]:
    """Manifest fields (all but files) of a small valid bundle."""
    fields: dict[str, Any] = {
        "name": "test-bundle",
        "version": "1.2.3",
        "build": 7,
        "description": "bundle written by the test suite",
        "training_data": "none",
        "labels": {"aus": [1, 2, 4, 6, 12], "expressions": ["neutral", "happiness", "sadness"]},
        "input": {
            "crop_size": 112,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "alignment": {"points": TEMPLATE_112.tolist()},
        },
        "output": {"feature_dim": 16},
        "golden": {"inputs": "golden/inputs.npy", "outputs": "golden/outputs.npz", "atol": {"onnx_cpu": 1e-4}},
    }
    fields.update(overrides)
    return fields


def bundle_files() -> dict[str, tuple[bytes, str]]:
    return {
        "student_cpu.onnx": (b"onnx-bytes-for-format-tests", "onnx_cpu"),
        "head.npz": (b"head-bytes", "head"),
        "golden/inputs.npy": (b"golden-in", "golden_inputs"),
        "golden/outputs.npz": (b"golden-out", "golden_outputs"),
    }


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A real (randomly initialised) exported bundle, built once per test session; treat as read-only."""
    from bundle_factory import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture
def london_dir() -> Path:
    if not LONDON.is_dir():
        pytest.skip(f"real photos not found at {LONDON}")
    return LONDON


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that needs the London photos skips, naming the folder, where they are absent: they live beside
    the repository (../shared/data, or $AFFECT_LONDON_DIR), not in it. Any other DataError still fails."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None or report.outcome != "failed":
        return
    from quantize.data.types import DataError

    exc = call.excinfo.value
    if isinstance(exc, DataError) and str(exc).startswith("London face directory ") and not LONDON.is_dir():
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {exc}")
