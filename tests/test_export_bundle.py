"""Student -> fold BN -> calibrate -> export: the bundle verifies, graphs pass their checks, golden vectors hold."""

import numpy as np
import onnx
import pytest

from edge.bundle import read_bundle
from edge.head.params import load_head_params
from edge.head.reference import head_forward
from quantize.export.onnx_graphs import ExportError, check_tensorrt_int8


def test_bundle_verifies_and_lists_all_lowerings(tiny_bundle):
    bundle = read_bundle(tiny_bundle)
    roles = {entry.role for entry in bundle.manifest.files.values()}
    assert {"onnx_tensorrt", "onnx_cpu", "onnx_fp32", "head", "golden_inputs", "golden_outputs"} <= roles
    facts = bundle.manifest.quantization["tensorrt_graph"]
    assert facts["quantize_linear"] == facts["dequantize_linear"] > 0
    assert facts["opset"] >= 13
    load_head_params(bundle.role("head"))


def test_tensorrt_graph_passes_checks_and_fails_when_broken(tiny_bundle):
    model = onnx.load(str(tiny_bundle / "student_trt.onnx"))
    check_tensorrt_int8(model)
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear")
    zero_name = dq.input[2]
    bad_zero = onnx.numpy_helper.from_array(np.array(3, dtype=np.int8), zero_name)
    for init in model.graph.initializer:
        if init.name == zero_name:
            init.CopyFrom(bad_zero)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == zero_name:
            node.attribute[0].t.CopyFrom(bad_zero)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.input[1] = next(i.name for i in model.graph.initializer if i.name not in (zero_name,) and
                         onnx.numpy_helper.to_array(i).ndim == 4)
    with pytest.raises(ExportError) as err:
        check_tensorrt_int8(model)
    assert "zero point must be INT8 0" in str(err.value)
    assert "weight input is not read through DequantizeLinear" in str(err.value)


@pytest.mark.parametrize("role", ["onnx_cpu", "onnx_tensorrt", "onnx_fp32"])
def test_onnxruntime_matches_golden_outputs(tiny_bundle, role):
    import onnxruntime as ort

    bundle = read_bundle(tiny_bundle)
    golden = bundle.manifest.golden
    inputs = np.load(bundle.file(golden.inputs))
    expected = np.load(bundle.file(golden.outputs))
    session = ort.InferenceSession(str(bundle.role(role)), providers=["CPUExecutionProvider"])
    f, g = session.run(["f", "g"], {"image": inputs})
    out = head_forward(load_head_params(bundle.role("head")), f, g)
    atol = golden.atol[role]
    np.testing.assert_allclose(out.fe_prob, expected["fe_prob"], atol=atol, rtol=0)
    np.testing.assert_allclose(out.au_prob, expected["au_prob"], atol=atol, rtol=0)
    # The tolerance must be tight enough to catch a different model: shuffled features fail it.
    wrong = head_forward(load_head_params(bundle.role("head")), f[::-1] * 3, g[::-1] * 3)
    assert np.abs(wrong.fe_prob - expected["fe_prob"]).max() > atol


def test_cpu_graph_is_int8_except_the_stem_conv(tiny_bundle):
    bundle = read_bundle(tiny_bundle)
    model = onnx.load(str(bundle.role("onnx_cpu")))
    producers = {out: node for node in model.graph.node for out in node.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    stem = [n for n in convs if "image" in n.input]
    assert len(stem) == 1  # the conv on the 3-channel image reads the float input directly
    for conv in convs:
        if conv is stem[0]:
            continue
        assert producers[conv.input[0]].op_type == "DequantizeLinear", conv.name
    assert "left in float" in bundle.manifest.quantization["cpu_graph"]
