"""The CPU lowering: an INT8 graph that onnxruntime actually runs fast.

onnxruntime's CPU provider does not fuse the TensorRT-style Q/DQ pattern (it ran
about 2x slower than float here), so the CPU graph is produced separately with
onnxruntime's own static quantization (QDQ, per-channel weights), calibrated on
the same images as QAT. Accuracy of this graph is measured, not assumed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge.fsutil import atomic_write
from quantize.export.onnx_graphs import INPUT_NAME


class _Reader:
    """onnxruntime CalibrationDataReader over a fixed array of images."""

    def __init__(self, images: np.ndarray, batch: int) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [images[i : i + batch] for i in range(0, len(images), batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch.astype(np.float32)}


def input_convs(model_path: Path) -> list[str]:
    """Names of the Conv nodes that read the graph input directly (the stem)."""
    import onnx

    model = onnx.load(str(model_path))
    return [node.name for node in model.graph.node if node.op_type == "Conv" and INPUT_NAME in node.input]


def quantize_for_cpu(fp32_onnx: Path, dest: Path, calibration_images: np.ndarray, batch: int = 16,
                     float_stem: bool = True) -> list[str]:
    """Write the CPU INT8 graph; returns the names of the nodes left in float.

    With `float_stem`, the conv that reads the 3-channel image stays float: with 27 values per
    output pixel it is too thin for onnxruntime's INT8 GEMM (it ran about 2x slower than its float
    NCHWc kernel here), and keeping the first layer in float is also the usual accuracy choice.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration_images) == 0:
        raise ValueError("CPU INT8 lowering needs calibration images")
    with tempfile.TemporaryDirectory(dir=dest.parent) as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        excluded = input_convs(prepared) if float_stem else []
        out = Path(work) / "int8.onnx"
        quantize_static(
            str(prepared), str(out), _Reader(calibration_images, batch),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded,
        )
        atomic_write(dest, out.read_bytes())
    return excluded
