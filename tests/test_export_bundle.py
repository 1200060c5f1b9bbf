"""Student -> fold BN -> calibrate -> export: the bundle verifies, graphs pass their checks, golden vectors hold."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edge.alignment import TEMPLATE_112
from edge.bundle import read_bundle
from edge.head.params import load_head_params
from edge.head.reference import head_forward
from edge.labels import DEFAULT_LABELS
from quantize.export.bundle_export import ExportSpec, export_bundle
from quantize.export.onnx_graphs import ExportError, check_tensorrt_int8
from quantize.qat.calibrate import calibrate
from quantize.qat.fold import fold_batchnorm
from quantize.ssm.dpm import DynamicPriorMapping
from quantize.ssm.head import SemanticHead
from quantize.student.model import StudentBackbone, StudentConfig

CROP = 48
CONFIG = StudentConfig(crop_size=CROP, widths=(8, 16), blocks=(1, 1), feature_dim=16)


def head_arrays(dim: int) -> dict[str, np.ndarray]:
    """Head constants the way training produces them: SemanticHead + DPM over random prototypes."""
    n_au, n_fe = len(DEFAULT_LABELS.aus), len(DEFAULT_LABELS.expressions)
    dpm = DynamicPriorMapping(DEFAULT_LABELS)
    head = SemanticHead(dim, n_au, n_fe)
    t_au = torch.nn.functional.normalize(torch.randn(n_au, dim), dim=-1)
    t_fe = torch.nn.functional.normalize(torch.randn(n_fe, dim), dim=-1)
    arrays = head.export_params(*dpm.transfer(t_au, t_fe), dpm.mapping())
    return {**arrays, "au_threshold": np.full(n_au, 0.5, dtype=np.float32)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    student = StudentBackbone(CONFIG)
    student.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics before folding
        for _ in range(4):
            student(torch.randn(8, 3, CROP, CROP))
    student.eval()
    assert fold_batchnorm(student) > 0
    calibration = rng.standard_normal((32, 3, CROP, CROP)).astype(np.float32)
    calibrate(student, [torch.from_numpy(calibration[i : i + 8]) for i in range(0, 32, 8)])
    head = head_arrays(dim=16)
    spec = ExportSpec(
        name="unit-test", version="0.0.1", build=1, labels=DEFAULT_LABELS, crop_size=CROP,
        mean=[0.5] * 3, std=[0.25] * 3, alignment=(TEMPLATE_112 * CROP / 112).tolist(),
        training_data="random tensors (export mechanics test only)",
    )
    dest = tmp_path_factory.mktemp("export") / "bundle"
    golden = rng.standard_normal((4, 3, CROP, CROP)).astype(np.float32)
    export_bundle(student, head, spec, calibration, golden, dest)
    return dest


def test_bundle_verifies_and_lists_all_lowerings(exported):
    bundle = read_bundle(exported)
    roles = {entry.role for entry in bundle.manifest.files.values()}
    assert {"onnx_tensorrt", "onnx_cpu", "onnx_fp32", "head", "golden_inputs", "golden_outputs"} <= roles
    facts = bundle.manifest.quantization["tensorrt_graph"]
    assert facts["quantize_linear"] == facts["dequantize_linear"] > 0
    assert facts["opset"] >= 13
    load_head_params(bundle.role("head"))


def test_tensorrt_graph_passes_checks_and_fails_when_broken(exported):
    model = onnx.load(str(exported / "student_trt.onnx"))
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
def test_onnxruntime_matches_golden_outputs(exported, role):
    import onnxruntime as ort

    bundle = read_bundle(exported)
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
