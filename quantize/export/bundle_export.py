"""Turn a QAT-trained student plus its semantic-head constants into a verified device bundle.

Three lowerings of the same student go into the bundle: the TensorRT graph
(explicit Q/DQ, checked), the CPU INT8 graph (onnxruntime's own quantization)
and the FP32 graph. Golden outputs come from the fake-quantized PyTorch model,
and each lowering's measured deviation from them sets its self-test tolerance.
"""

from __future__ import annotations

import copy
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from edge.bundle import Bundle, write_bundle
from edge.fsutil import atomic_write
from edge.head.params import head_params_from_arrays
from edge.head.reference import head_forward
from edge.labels import LabelSpace
from quantize.export.cpu_lowering import quantize_for_cpu
from quantize.export.onnx_graphs import (
    INPUT_NAME,
    ExportError,
    check_tensorrt_int8,
    export_onnx,
    fold_weight_quantizers,
    op_counts,
    simplify,
)
from quantize.qat.layers import set_mode

TRT_FILE, CPU_FILE, FP32_FILE = "student_trt.onnx", "student_cpu.onnx", "student_fp32.onnx"
HEAD_FILE, GOLDEN_IN, GOLDEN_OUT = "head.npz", "golden/inputs.npy", "golden/outputs.npz"
# Self-test tolerance = this factor x the deviation measured at export, with a floor:
# roomy enough for thread-count and CPU-ISA differences, tight enough to catch a wrong model.
TOL_FACTOR, TOL_FLOOR = 3.0, 0.01
# TensorRT's INT8 kernels round differently from onnxruntime's Q/DQ reference; this
# margin on top of the measured Q/DQ deviation is an allowance, not a measurement.
TENSORRT_TOL_FLOOR = 0.03


@dataclass
class ExportSpec:
    name: str
    version: str
    build: int
    labels: LabelSpace
    crop_size: int
    mean: list[float]
    std: list[float]
    alignment: list[list[float]]
    channels: int = 3
    color_order: str = "RGB"
    description: str = ""
    training_data: str = ""
    metrics: list[dict[str, Any]] = field(default_factory=list)
    quantization_extra: dict[str, Any] = field(default_factory=dict)


def _probabilities(head_arrays: dict[str, np.ndarray], f: np.ndarray, g: np.ndarray) -> dict[str, np.ndarray]:
    out = head_forward(head_params_from_arrays(head_arrays), f.astype(np.float32), g.astype(np.float32))
    return {"fe_prob": out.fe_prob, "au_prob": out.au_prob}


def _run_onnx(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    f, g = session.run(["f", "g"], {INPUT_NAME: images.astype(np.float32)})
    return f, g


def export_bundle(
    student: nn.Module,
    head_arrays: dict[str, np.ndarray],
    spec: ExportSpec,
    calibration: np.ndarray,
    golden_inputs: np.ndarray,
    dest: Path,
    *,
    overwrite: bool = False,
) -> Bundle:
    """Export `student` (BN folded, calibrated, in fake-quant mode) into a bundle at `dest`."""
    head_params_from_arrays(head_arrays, source="export")  # fail early on bad head constants
    student = student.eval()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".export-") as work_dir:
        work = Path(work_dir)
        raw_trt, simple_trt, trt = work / "raw_trt.onnx", work / "simple_trt.onnx", work / TRT_FILE
        export_onnx(student, raw_trt, spec.crop_size, spec.channels)
        simplify(raw_trt, simple_trt)
        # Weights go in as INT8 read by DequantizeLinear only: a quarter of the FP32 bytes, same outputs.
        folded = fold_weight_quantizers(onnx.load(str(simple_trt)))
        atomic_write(trt, folded.SerializeToString())
        expect_qdq = op_counts(onnx.load(str(raw_trt)))
        weights = expect_qdq["Conv"] + expect_qdq["Gemm"] + expect_qdq["MatMul"]
        expect_qdq["QuantizeLinear"] -= weights  # one weight quantizer per Conv/Gemm, each folded
        qdq = check_tensorrt_int8(folded, expect_qdq=expect_qdq)
        if qdq["int8_weights"] != weights:
            raise ExportError(f"TensorRT graph: {qdq['int8_weights']} of {weights} Conv/Gemm weights stored as INT8")

        float_student = copy.deepcopy(student)
        set_mode(float_student, "float")
        raw_fp32, fp32 = work / "raw_fp32.onnx", work / FP32_FILE
        export_onnx(float_student, raw_fp32, spec.crop_size, spec.channels)
        simplify(raw_fp32, fp32)
        cpu = work / CPU_FILE
        float_nodes = quantize_for_cpu(fp32, cpu, calibration)

        with torch.no_grad():
            f, g = student(torch.from_numpy(golden_inputs.astype(np.float32)))
        golden = {"f": f.numpy(), "g": g.numpy(), **_probabilities(head_arrays, f.numpy(), g.numpy())}

        deviation: dict[str, float] = {}
        for role, path in (("onnx_tensorrt", trt), ("onnx_cpu", cpu), ("onnx_fp32", fp32)):
            probs = _probabilities(head_arrays, *_run_onnx(path, golden_inputs))
            deviation[role] = float(max(np.abs(probs[k] - golden[k]).max() for k in probs))
        atol = {role: max(TOL_FACTOR * dev, TOL_FLOOR) for role, dev in deviation.items()}
        atol["onnx_tensorrt"] = max(atol["onnx_tensorrt"], TENSORRT_TOL_FLOOR)

        files = {
            TRT_FILE: (trt, "onnx_tensorrt"),
            CPU_FILE: (cpu, "onnx_cpu"),
            FP32_FILE: (fp32, "onnx_fp32"),
            HEAD_FILE: (_npz_bytes(head_arrays), "head"),
            GOLDEN_IN: (_npy_bytes(golden_inputs.astype(np.float32)), "golden_inputs"),
            GOLDEN_OUT: (_npz_bytes(golden), "golden_outputs"),
        }
        fields = {
            "name": spec.name,
            "version": spec.version,
            "build": spec.build,
            "description": spec.description,
            "training_data": spec.training_data,
            "labels": {"aus": list(spec.labels.aus), "expressions": list(spec.labels.expressions)},
            "input": {
                "crop_size": spec.crop_size, "channels": spec.channels, "color_order": spec.color_order,
                "mean": spec.mean, "std": spec.std,
                "alignment": {"points": spec.alignment},
            },
            "output": {"feature_dim": int(golden["f"].shape[1])},
            "quantization": {
                "scheme": "int8 symmetric, zero point 0, per-channel weights (axis 0), per-tensor activations",
                "tensorrt_graph": {**qdq, "opset": onnx.load(str(trt)).opset_import[0].version},
                "cpu_graph": "onnxruntime quantize_static QDQ (uint8 activations, int8 per-channel weights), "
                             "MinMax calibration"
                             + (f"; left in float: {', '.join(float_nodes)} (the stem conv on the image)"
                                if float_nodes else ""),
                "calibration_images": len(calibration),
                "golden_max_abs_deviation": deviation,
                **spec.quantization_extra,
            },
            "metrics": spec.metrics,
            "golden": {"inputs": GOLDEN_IN, "outputs": GOLDEN_OUT, "atol": atol},
        }
        return write_bundle(dest, fields, files, overwrite=overwrite)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
