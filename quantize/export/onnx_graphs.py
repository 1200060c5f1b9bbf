"""ONNX export of the student and the structural checks a TensorRT INT8 graph must pass.

The TorchScript exporter (`dynamo=False`) is used on purpose: the dynamo
exporter cannot export a dynamic batch through fake-quant ops (DESIGN.md).
"""

from __future__ import annotations

import io
import warnings
from collections import Counter, defaultdict
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
    per-channel on axis 0 with one scale per output channel. A weight may be a
    float constant behind QuantizeLinear or an INT8 constant (`int8_weights`
    counts those, see `fold_weight_quantizers`).
    """
    onnx.checker.check_model(model)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    problems: list[str] = []
    counts = op_counts(model)
    int8_weights = 0
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
                stored = constant(src.input[0])
                int8_weights += stored is not None and stored.dtype == np.int8
                axis = next((a.i for a in src.attribute if a.name == "axis"), 1)
                weight = _weight_of(src, constant, producers)
                out_channels = None if weight is None else weight.shape[0]
                if scale is None or scale.ndim != 1 or axis != 0 or len(scale) != out_channels:
                    problems.append(f"{node.name}: weight scale must be per-channel on axis 0 "
                                    f"(got shape {None if scale is None else scale.shape}, axis {axis})")
    if problems:
        raise ExportError("TensorRT INT8 graph check failed:\n  " + "\n  ".join(problems))
    return {"quantize_linear": counts["QuantizeLinear"], "dequantize_linear": counts["DequantizeLinear"],
            "conv": counts["Conv"], "gemm": counts["Gemm"] + counts["MatMul"], "int8_weights": int(int8_weights)}


def _weight_of(dq: onnx.NodeProto, constant, producers) -> np.ndarray | None:
    value = constant(dq.input[0])
    if value is not None:
        return value
    q = producers.get(dq.input[0])
    return constant(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None


def fold_weight_quantizers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store constant weights as the INT8 tensors their QuantizeLinear computes, read through DequantizeLinear only.

    The Q/DQ export keeps every weight in FP32 behind QuantizeLinear -> DequantizeLinear,
    so the TensorRT graph is as large as the FP32 one; TensorRT also takes INT8 weight
    initializers read by a DequantizeLinear alone (Model Optimizer's dq-only form).
    Folded: a QuantizeLinear whose input is a float32 initializer (not a graph input),
    whose scale and zero point (int8/uint8) are constants and whose only consumers are
    DequantizeLinear nodes reading it as data. The stored integers are exactly
    saturate(round_half_to_even(x / scale) + zero_point), per-axis for a 1-D scale, so
    the graph computes the same outputs. Activation quantizers are kept. `model` is not
    modified; a new model is returned.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and len(n.output) == 1}

    def constant(name: str) -> np.ndarray | None:
        if name in inits and name not in graph_inputs:
            return numpy_helper.to_array(inits[name])
        node = constants.get(name)
        attr = node.attribute[0] if node is not None and len(node.attribute) == 1 else None
        return numpy_helper.to_array(attr.t) if attr is not None and attr.name == "value" else None

    consumers = _consumers(graph)
    taken = set(inits) | graph_inputs | {name for n in graph.node for name in n.output}
    folded: dict[str, str] = {}  # QuantizeLinear output -> its INT8 initializer
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or not node.input[2]:
            continue
        users = consumers[node.output[0]]
        if not users or not all(u is not None and u.op_type == "DequantizeLinear" and u.input[0] == node.output[0]
                                and node.output[0] not in u.input[1:] for u in users):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("block_size", 0) or attrs.get("saturate", 1) != 1:
            continue
        x_name = node.input[0]
        if x_name not in inits or x_name in graph_inputs:
            continue  # an activation quantizer: kept
        values = _quantize_linear(constant(x_name), constant(node.input[1]), constant(node.input[2]),
                                  attrs.get("axis", 1))
        if values is None:
            continue
        name, k = f"{x_name}_int8", 0
        while name in taken:
            k += 1
            name = f"{x_name}_int8_{k}"
        taken.add(name)
        graph.initializer.append(numpy_helper.from_array(values, name))
        folded[node.output[0]] = name
    if not folded:
        return out

    removed = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.output[0] in folded]
    for q in removed:
        for user in consumers[q.output[0]]:
            user.input[0] = folded[q.output[0]]
        graph.node.remove(q)
    # The float weights, and scale/zero-point constants only the removed nodes read, go too.
    candidates = {name for q in removed for name in q.input if name}
    still_read = set(_consumers(graph))
    dead = candidates - still_read
    dead_nodes = [n for n in graph.node if n.op_type == "Constant" and n.output[0] in dead]
    for node in dead_nodes:
        graph.node.remove(node)
    keep = [t for t in graph.initializer if t.name not in dead or t.name in graph_inputs]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    gone = set(folded) | {n.output[0] for n in dead_nodes}
    info = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(info)
    return out


def _quantize_linear(x, scale, zero, axis: int) -> np.ndarray | None:
    """ONNX QuantizeLinear on constants, or None where folding would not be exact or well defined."""
    if x is None or scale is None or zero is None:
        return None
    if x.dtype != np.float32 or scale.dtype != np.float32 or zero.dtype not in (np.int8, np.uint8):
        return None
    if scale.shape != zero.shape or scale.ndim > 1:
        return None
    if scale.ndim == 1:  # per-axis
        if not -x.ndim <= axis < x.ndim or x.shape[axis] != scale.size:
            return None
        shape = [1] * x.ndim
        shape[axis % x.ndim] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = x / scale  # float32 division, as QuantizeLinear defines it
    if not np.all(np.isfinite(ratio)):
        return None
    info = np.iinfo(zero.dtype)
    q = np.rint(ratio).astype(np.float64) + zero.astype(np.float64)  # np.rint rounds half to even
    return np.clip(q, info.min, info.max).astype(zero.dtype)


def _graphs_in(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [g for a in node.attribute for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs)]


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Every name the nodes of `graph` and of its nested subgraphs read."""
    names = {name for node in graph.node for name in node.input}
    for node in graph.node:
        for sub in _graphs_in(node):
            names |= _names_read(sub)
    return names


def _consumers(graph: onnx.GraphProto) -> defaultdict[str, list]:
    """Name -> the main-graph nodes reading it; None stands for a graph output or a read inside a subgraph."""
    users: defaultdict[str, list] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                users[name].append(node)
        for sub in _graphs_in(node):
            for name in _names_read(sub):
                users[name].append(None)
    for output in graph.output:
        users[output.name].append(None)
    return users
