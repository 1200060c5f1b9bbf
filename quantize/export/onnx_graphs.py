"""ONNX export of the student and the structural checks a TensorRT INT8 graph must pass.

The TorchScript exporter (`dynamo=False`) is used on purpose: the dynamo
exporter cannot export a dynamic batch through fake-quant ops (DESIGN.md).
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from edge.fsutil import atomic_write

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAMES = ("f", "g")


class ExportError(RuntimeError):
    """A graph that fails a check; the message lists what is wrong, node by node."""


def export_onnx(model: nn.Module, path: Path, crop_size: int, channels: int = 3) -> None:
    """Export `model` (image -> f, g) with a dynamic batch axis, written atomically."""
    model = model.eval()
    dummy = torch.zeros(1, channels, crop_size, crop_size)
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (dummy,), buffer, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    onnx.checker.check_model(onnx.load_from_string(buffer.getvalue()))
    atomic_write(path, buffer.getvalue())


def simplify(src: Path, dest: Path) -> None:
    import onnxsim

    model, ok = onnxsim.simplify(onnx.load(str(src)))
    if not ok:
        raise ExportError(f"onnxsim could not validate the simplified graph of {src}")
    atomic_write(dest, model.SerializeToString())


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def check_tensorrt_int8(model: onnx.ModelProto, expect_qdq: Counter | None = None) -> dict[str, int]:
    """Check a Q/DQ graph for TensorRT explicit quantization; returns its Q/DQ facts.

    Every Conv/Gemm must read both its activation and its weight through a
    DequantizeLinear; zero points must be INT8 zeros; weight scales must be
    per-channel on axis 0 with one scale per output channel.
    """
    onnx.checker.check_model(model)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    problems: list[str] = []
    counts = op_counts(model)
    if expect_qdq is not None:
        for op in ("QuantizeLinear", "DequantizeLinear"):
            if counts[op] != expect_qdq[op]:
                problems.append(f"{op} count changed: {expect_qdq[op]} -> {counts[op]}")

    def constant(name: str) -> np.ndarray | None:
        if name in inits:
            return inits[name]
        node = producers.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero = constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if zero is None:
                problems.append(f"{node.name}: zero point missing or not constant")
            elif zero.dtype != np.int8 or np.any(zero != 0):
                problems.append(f"{node.name}: zero point must be INT8 0, got {zero.dtype} {zero.ravel()[:4]}")
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        for idx, what in ((0, "activation"), (1, "weight")):
            src = producers.get(node.input[idx])
            if src is None or src.op_type != "DequantizeLinear":
                problems.append(f"{node.name}: {what} input is not read through DequantizeLinear")
                continue
            if what == "weight":
                scale = constant(src.input[1])
                axis = next((a.i for a in src.attribute if a.name == "axis"), 1)
                weight = _weight_of(src, constant, producers)
                out_channels = None if weight is None else weight.shape[0]
                if scale is None or scale.ndim != 1 or axis != 0 or len(scale) != out_channels:
                    problems.append(f"{node.name}: weight scale must be per-channel on axis 0 "
                                    f"(got shape {None if scale is None else scale.shape}, axis {axis})")
    if problems:
        raise ExportError("TensorRT INT8 graph check failed:\n  " + "\n  ".join(problems))
    return {"quantize_linear": counts["QuantizeLinear"], "dequantize_linear": counts["DequantizeLinear"],
            "conv": counts["Conv"], "gemm": counts["Gemm"] + counts["MatMul"]}


def _weight_of(dq: onnx.NodeProto, constant, producers) -> np.ndarray | None:
    value = constant(dq.input[0])
    if value is not None:
        return value
    q = producers.get(dq.input[0])
    return constant(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
