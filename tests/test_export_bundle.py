"""Student -> fold BN -> calibrate -> export: the bundle verifies, graphs pass their checks, golden vectors hold."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from bundle_factory import CROP, calibrated_student
from onnx import numpy_helper

from edge.bundle import read_bundle
from edge.head.params import load_head_params
from edge.head.reference import head_forward
from quantize.export.onnx_graphs import (
    ExportError,
    check_tensorrt_int8,
    export_onnx,
    fold_weight_quantizers,
    op_counts,
    simplify,
)


def test_bundle_verifies_and_lists_all_lowerings(tiny_bundle):
    bundle = read_bundle(tiny_bundle)
    roles = {entry.role for entry in bundle.manifest.files.values()}
    assert {"onnx_tensorrt", "onnx_cpu", "onnx_fp32", "head", "golden_inputs", "golden_outputs"} <= roles
    facts = bundle.manifest.quantization["tensorrt_graph"]
    # weights are INT8 initializers read by DequantizeLinear alone; activations keep Q -> DQ
    assert facts["int8_weights"] == facts["conv"] + facts["gemm"] > 0
    assert facts["quantize_linear"] + facts["int8_weights"] == facts["dequantize_linear"]
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


# --- fold_weight_quantizers: FP32 weight -> Q -> DQ becomes INT8 weight -> DQ -------------------------


def _constant_tensor(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    for init in model.graph.initializer:
        if init.name == name:
            return init
    return next(n.attribute[0].t for n in model.graph.node if n.op_type == "Constant" and n.output[0] == name)


def _weight_quantizers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    inits = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits]


@pytest.fixture(scope="module")
def qdq_graph(tmp_path_factory) -> onnx.ModelProto:
    """The tiny student's TensorRT Q/DQ graph as export writes it before folding (export_onnx + simplify).

    The stem conv's weights are set to exact .5 multiples of power-of-two scales (ties for the
    rounding, some past +-127.5 for saturation), so a fold that rounds half away from zero, or
    does not saturate, stores different integers.
    """
    torch.manual_seed(1)
    student, _ = calibrated_student(np.random.default_rng(1))
    work = tmp_path_factory.mktemp("qdq")
    export_onnx(student, work / "raw.onnx", CROP)
    simplify(work / "raw.onnx", work / "simple.onnx")
    model = onnx.load(str(work / "simple.onnx"))

    producers = {out: node for node in model.graph.node for out in node.output}
    stem = next(n for n in model.graph.node if n.op_type == "Conv")
    dq = producers[stem.input[1]]
    q = producers[dq.input[0]]
    assert q.op_type == "QuantizeLinear" and q.input[1] == dq.input[1]
    scale_tensor = _constant_tensor(model, q.input[1])
    scale = numpy_helper.to_array(scale_tensor)
    scale = (2.0 ** np.round(np.log2(scale))).astype(np.float32)
    scale_tensor.CopyFrom(numpy_helper.from_array(scale, scale_tensor.name))
    weight_tensor = _constant_tensor(model, q.input[0])
    shape = tuple(weight_tensor.dims)
    ticks = np.random.default_rng(2).integers(-131, 131, size=shape) + 0.5
    weight = (ticks * scale.reshape(-1, *[1] * (len(shape) - 1))).astype(np.float32)
    weight_tensor.CopyFrom(numpy_helper.from_array(weight, weight_tensor.name))
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, feeds: dict, outputs: list[str] | None = None, optimize: bool = True):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(outputs, feeds)


def test_folded_graph_gives_bit_identical_outputs(qdq_graph):
    folded = fold_weight_quantizers(qdq_graph)
    images = np.random.default_rng(3).standard_normal((6, 3, CROP, CROP)).astype(np.float32) * 2
    for optimize in (False, True):
        expected = _run(qdq_graph, {"image": images}, ["f", "g"], optimize)
        got = _run(folded, {"image": images}, ["f", "g"], optimize)
        for e, o in zip(expected, got, strict=True):
            assert np.isfinite(e).all()
            np.testing.assert_array_equal(o, e)


def test_folded_weights_equal_what_quantizelinear_computes_in_onnxruntime(qdq_graph):
    quantizers = _weight_quantizers(qdq_graph)
    assert quantizers
    # Run the original graph with every weight QuantizeLinear output exposed: onnxruntime's own integers.
    probe = onnx.ModelProto()
    probe.CopyFrom(qdq_graph)
    for q in quantizers:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(q.output[0], onnx.TensorProto.INT8, None))
    image = np.zeros((1, 3, CROP, CROP), np.float32)
    reference = dict(zip([q.output[0] for q in quantizers],
                         _run(probe, {"image": image}, [q.output[0] for q in quantizers], optimize=False),
                         strict=True))

    folded = fold_weight_quantizers(qdq_graph)
    stored = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    dq_reads = {n.output[0]: n.input[0] for n in folded.graph.node if n.op_type == "DequantizeLinear"}
    original_dq = {n.input[0]: n.output[0] for n in qdq_graph.graph.node if n.op_type == "DequantizeLinear"}
    for q in quantizers:
        values = stored[dq_reads[original_dq[q.output[0]]]]
        assert values.dtype == np.int8
        np.testing.assert_array_equal(values, reference[q.output[0]], err_msg=q.name)

    # The planted ties make the test sensitive to the rounding rule and to saturation.
    stem_q = quantizers[0]
    x = numpy_helper.to_array(_constant_tensor(qdq_graph, stem_q.input[0]))
    s = numpy_helper.to_array(_constant_tensor(qdq_graph, stem_q.input[1])).reshape(-1, 1, 1, 1)
    ratio = x / s
    assert np.all(ratio - np.floor(ratio) == 0.5)
    half_away = np.clip(np.sign(ratio) * np.floor(np.abs(ratio) + 0.5), -128, 127)
    stem = reference[stem_q.output[0]]
    assert np.mean(stem != half_away) > 0.3  # about half the ties differ between the two rules
    assert (stem == 127).any() and (stem == -128).any() and (np.abs(ratio) > 128).any()


def test_only_weight_quantizers_are_folded_and_the_tensorrt_check_passes(qdq_graph):
    before = qdq_graph.SerializeToString()
    folded = fold_weight_quantizers(qdq_graph)
    assert qdq_graph.SerializeToString() == before  # pure: the input model is left as it was
    n_weights = len(_weight_quantizers(qdq_graph))
    counts, folded_counts = op_counts(qdq_graph), op_counts(folded)
    assert n_weights == counts["Conv"] + counts["Gemm"] > 0
    assert _weight_quantizers(folded) == []
    assert folded_counts["QuantizeLinear"] == counts["QuantizeLinear"] - n_weights > 0
    assert folded_counts["DequantizeLinear"] == counts["DequantizeLinear"]
    activation_q = sorted(n.name for n in qdq_graph.graph.node if n.op_type == "QuantizeLinear"
                          and n not in _weight_quantizers(qdq_graph))
    assert sorted(n.name for n in folded.graph.node if n.op_type == "QuantizeLinear") == activation_q
    float_weights = {q.input[0] for q in _weight_quantizers(qdq_graph)}
    assert not float_weights & {t.name for t in folded.graph.initializer}

    facts = check_tensorrt_int8(folded, expect_qdq=counts - Counter(QuantizeLinear=n_weights))
    assert facts["int8_weights"] == n_weights and check_tensorrt_int8(qdq_graph)["int8_weights"] == 0
    assert fold_weight_quantizers(folded).SerializeToString() == folded.SerializeToString()  # idempotent


def test_folding_stores_weights_in_a_quarter_of_the_bytes(qdq_graph):
    float_weights = {q.input[0] for q in _weight_quantizers(qdq_graph)}
    weight_bytes = sum(numpy_helper.to_array(_constant_tensor(qdq_graph, n)).nbytes for n in float_weights)
    folded = fold_weight_quantizers(qdq_graph)
    int8_bytes = sum(numpy_helper.to_array(t).nbytes for t in folded.graph.initializer
                     if numpy_helper.to_array(t).dtype == np.int8 and t.dims)
    assert int8_bytes * 4 == weight_bytes
    before, after = len(qdq_graph.SerializeToString()), len(folded.SerializeToString())
    # 3/4 of the weight bytes go, plus the removed QuantizeLinear nodes and their tensor infos;
    # the tiny graph's names weigh much, the real student's 5.1 MB graph becomes 1.3 MB.
    assert 0.75 * weight_bytes <= before - after < weight_bytes
