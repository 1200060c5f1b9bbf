"""Issue 4's CI end-to-end: teacher (tiny) -> distill with QAT -> export -> bundle verifies -> golden self-test.

Sizes are cut down so it runs in about a minute on two cores; the recipe for the
shipped default bundle runs the same commands at full size (docs/recipe.md).
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import LONDON

from edge.bundle import read_bundle
from edge.runtime.onnxruntime_backend import OnnxRuntimeBackend
from edge.runtime.selftest import run_selftest


def quantize_cli(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "quantize.cli", *args], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.skipif(not LONDON.is_dir(), reason=f"the generated faces need the London photos ({LONDON})")
def test_teacher_distill_export_selftest(tmp_path):
    teacher, distill, bundle_dir = tmp_path / "teacher", tmp_path / "distill", tmp_path / "bundle"
    quantize_cli("teacher", "train", "--config", "tiny", "--out", str(teacher), "--steps", "6", "--batch", "8",
                 "--n-train", "48", "--n-val", "24", "--n-holdout", "24", "--set", "dim=32",
                 "--set", "conv_widths=[8,16,32,32]", "--set", "image_size=64", "--no-progress",
                 "--val-every", "6", "--ckpt-every", "6")
    quantize_cli("distill", "--teacher", str(teacher), "--out", str(distill), "--fp32-steps", "4",
                 "--qat-steps", "3", "--batch", "8", "--crop-size", "48", "--no-progress")
    metrics = json.loads((distill / "distill_metrics.json").read_text())
    assert [m["model"] for m in metrics["metrics"]] == ["teacher", "student_fp32", "student_int8_qat"]
    quantize_cli("export", "--run", str(distill), "--out", str(bundle_dir), "--build", "3")

    bundle = read_bundle(bundle_dir)
    m = bundle.manifest
    # the student takes a 48 px crop of the teacher's 64 px faces: the bundle, its template and goldens say so
    assert m.build == 3 and m.input.crop_size == 48 and m.output.feature_dim == 32
    assert np.load(bundle.role("golden_inputs")).shape[1:] == (3, 48, 48)
    assert "NOT trained on FACS-coded data" in m.training_data
    assert {x.model for x in m.metrics} == {"teacher", "student_fp32", "student_int8_qat"}
    assert m.quantization["tensorrt_graph"]["quantize_linear"] > 0
    result = run_selftest(bundle, OnnxRuntimeBackend(bundle, threads=1))
    assert result.passed, str(result)
