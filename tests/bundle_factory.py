"""A small real bundle for tests: a randomly initialised student, exported through the real pipeline.

Its outputs are meaningless as affect estimates, but every file in it is real
(Q/DQ ONNX, CPU INT8 ONNX, head constants from SemanticHead + DPM, golden
vectors), so it exercises export, verification, backends and the daemon.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edge.alignment import TEMPLATE_112
from edge.labels import DEFAULT_LABELS
from quantize.export.bundle_export import ExportSpec, export_bundle
from quantize.qat.calibrate import calibrate
from quantize.qat.fold import fold_batchnorm
from quantize.ssm.dpm import DynamicPriorMapping
from quantize.ssm.head import SemanticHead
from quantize.student.model import StudentBackbone, StudentConfig

CROP = 48
DIM = 16
CONFIG = StudentConfig(crop_size=CROP, widths=(8, 16), blocks=(1, 1), feature_dim=DIM)


def head_arrays(dim: int = DIM) -> dict[str, np.ndarray]:
    """Head constants the way training produces them: SemanticHead + DPM over random prototypes."""
    n_au, n_fe = len(DEFAULT_LABELS.aus), len(DEFAULT_LABELS.expressions)
    dpm = DynamicPriorMapping(DEFAULT_LABELS)
    head = SemanticHead(dim, n_au, n_fe)
    t_au = torch.nn.functional.normalize(torch.randn(n_au, dim), dim=-1)
    t_fe = torch.nn.functional.normalize(torch.randn(n_fe, dim), dim=-1)
    arrays = head.export_params(*dpm.transfer(t_au, t_fe), dpm.mapping())
    return {**arrays, "au_threshold": np.full(n_au, 0.5, dtype=np.float32)}


def calibrated_student(rng: np.random.Generator) -> tuple[StudentBackbone, np.ndarray]:
    """A random student, BN folded and calibrated (fake-quant mode, ready to export), and its calibration images."""
    student = StudentBackbone(CONFIG)
    student.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics before folding
        for _ in range(4):
            student(torch.randn(8, 3, CROP, CROP))
    student.eval()
    fold_batchnorm(student)
    calibration = rng.standard_normal((32, 3, CROP, CROP)).astype(np.float32)
    calibrate(student, [torch.from_numpy(calibration[i : i + 8]) for i in range(0, 32, 8)])
    return student, calibration


def make_tiny_bundle(dest: Path, *, build: int = 1, version: str = "0.0.1", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    student, calibration = calibrated_student(rng)
    spec = ExportSpec(
        name="unit-test", version=version, build=build, labels=DEFAULT_LABELS, crop_size=CROP,
        mean=[0.5] * 3, std=[0.25] * 3, alignment=(TEMPLATE_112 * CROP / 112).tolist(),
        training_data="random tensors (export mechanics test only)",
    )
    golden = rng.standard_normal((4, 3, CROP, CROP)).astype(np.float32)
    export_bundle(student, head_arrays(), spec, calibration, golden, dest)
    return dest
