"""Runtime backends on a real tiny_bundle bundle, the golden self-test, and TensorRT's cache/error paths.

The TensorRT and CUDA decisions themselves are in tests/test_runtime_tensorrt.py (fake GPU)."""

import os
from pathlib import Path

import numpy as np
import pytest
from fleet_helpers import nan_on_real_faces, variant

from edge.bundle import read_bundle
from edge.config import load_config
from edge.config.models import ModelConfig
from edge.pipeline.model_runtime import ModelRuntime
from edge.runtime.backend import BackendError
from edge.runtime.engine_cache import EngineCache, EngineKey
from edge.runtime.onnxruntime_backend import OnnxRuntimeBackend
from edge.runtime.preprocess import to_tensor
from edge.runtime.select import open_backend
from edge.runtime.selftest import run_selftest

SHA = "ab" * 32


def cpu_runtime(bundle_dir: Path, bundle=None) -> ModelRuntime:
    config = load_config(None, [f'model.bundle="{bundle_dir}"', 'model.backend="onnxruntime"', "model.threads=1"])
    return ModelRuntime(bundle if bundle is not None else read_bundle(bundle_dir), config)


def test_onnxruntime_backend_passes_selftest(tiny_bundle):
    bundle = read_bundle(tiny_bundle)
    runtime = cpu_runtime(tiny_bundle)
    assert runtime.role == "onnx_cpu" and runtime.head_backend == "numpy"
    result = run_selftest(bundle, runtime)
    assert result.passed, str(result)
    assert result.faces == 4 and result.face_problem is None


def test_single_faces_take_the_one_thread_session_with_the_same_numbers(tiny_bundle):
    """With threads > 1 one face runs on a one-thread session; its features equal the batched session's."""
    bundle = read_bundle(tiny_bundle)
    backend = OnnxRuntimeBackend(bundle, threads=2, use_cuda=False, spin_wait=False)
    assert backend.single is not backend.session and "1 for a single face" in backend.describe()
    spec = bundle.manifest.input
    images = np.random.default_rng(0).random((2, spec.channels, spec.crop_size, spec.crop_size), dtype=np.float32)
    both = backend.infer(images)
    first = backend.infer(images[:1])
    np.testing.assert_allclose(first.f, both.f[:1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(first.g, both.g[:1], rtol=1e-4, atol=1e-4)
    one_thread = OnnxRuntimeBackend(bundle, threads=1, use_cuda=False)
    assert one_thread.single is one_thread.session and "single face" not in one_thread.describe()


def test_selftest_refuses_a_model_that_fails_only_on_real_faces(tiny_bundle, tmp_path):
    """Exact on its golden tensors, NaN on every camera face: the real-face step of the self-test catches it."""
    broken = variant(tiny_bundle, tmp_path / "nan", build=5, replace=nan_on_real_faces(tiny_bundle))
    result = run_selftest(read_bundle(broken), cpu_runtime(broken))
    assert result.max_abs_error <= result.atol  # the golden part passes
    assert not result.passed and "non-finite" in str(result)


def test_selftest_fails_on_a_different_model(tiny_bundle, tmp_path):
    import shutil

    import onnx

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    bundle = read_bundle(copy)
    backend = OnnxRuntimeBackend(bundle, threads=1)
    graph = onnx.load(str(backend.path))
    gemm = next(i for i in graph.graph.initializer if len(i.dims) == 2)  # a feature-head weight
    weights = onnx.numpy_helper.to_array(gemm)
    gemm.CopyFrom(onnx.numpy_helper.from_array(weights[::-1].copy(), gemm.name))
    onnx.save(graph, str(backend.path))
    result = run_selftest(bundle, cpu_runtime(copy, bundle))  # the bundle as read before the graph changed
    assert not result.passed and "FAILED" in str(result)


def test_auto_backend_falls_back_to_onnxruntime_without_tensorrt(tiny_bundle, tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    bundle = read_bundle(tiny_bundle)
    backend = open_backend(bundle, ModelConfig(backend="auto", engine_cache_dir=tmp_path))
    assert backend.name == "onnxruntime" and backend.role == "onnx_cpu"
    assert list(tmp_path.iterdir()) == []  # nothing half-built left in the engine cache


def test_forced_tensorrt_without_tensorrt_is_a_clear_error(tiny_bundle, tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(BackendError, match="TensorRT Python bindings are not importable"):
        open_backend(read_bundle(tiny_bundle), ModelConfig(backend="tensorrt", engine_cache_dir=tmp_path))


def test_engine_key_and_cache_paths(tmp_path):
    a = EngineKey("10.3.0", "8.7", SHA)
    b = EngineKey("10.3.0", "8.6", SHA)
    c = EngineKey("10.4.0", "8.7", SHA)
    d = EngineKey("10.3.0", "8.7", "cd" * 32)
    cache = EngineCache(tmp_path)
    paths = {cache.engine_path(k) for k in (a, b, c, d)}
    assert len(paths) == 4
    assert cache.timing_cache_path(a) == cache.timing_cache_path(d) != cache.timing_cache_path(b)
    with pytest.raises(ValueError, match="compute capability"):
        EngineKey("10.3.0", "sm87", SHA)
    with pytest.raises(ValueError, match="TensorRT version"):
        EngineKey("ten", "8.7", SHA)


def test_engine_cache_writes_atomically(tmp_path, monkeypatch):
    cache = EngineCache(tmp_path / "engines")
    key = EngineKey("10.3.0", "8.7", SHA)
    assert cache.load(key) is None
    cache.store(key, b"engine-v1")
    assert cache.load(key) == b"engine-v1"

    def crash(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        cache.store(key, b"engine-v2-partial")
    monkeypatch.undo()
    assert cache.load(key) == b"engine-v1"
    assert sorted(p.name for p in (tmp_path / "engines").iterdir()) == [
        cache.engine_path(key).name, cache.engine_path(key).with_suffix(".json").name]  # the key, spelled out
    with pytest.raises(ValueError, match="empty engine"):
        cache.store(key, b"")


def test_preprocess_matches_the_input_spec(tiny_bundle):
    spec = read_bundle(tiny_bundle).manifest.input
    crop = np.zeros((spec.crop_size, spec.crop_size, 3), dtype=np.uint8)
    crop[..., 0] = 255  # blue in BGR
    x = to_tensor([crop], spec, color_order="BGR")
    assert x.shape == (1, 3, spec.crop_size, spec.crop_size) and x.dtype == np.float32
    # RGB model: channel 2 is blue; value (1.0 - mean) / std
    np.testing.assert_allclose(x[0, 2, 0, 0], (1.0 - spec.mean[2]) / spec.std[2], rtol=1e-6)
    np.testing.assert_allclose(x[0, 0, 0, 0], (0.0 - spec.mean[0]) / spec.std[0], rtol=1e-6)
    with pytest.raises(ValueError, match="crops must be"):
        to_tensor([crop[:10]], spec)
    assert Path(tiny_bundle).is_dir()


@pytest.mark.parametrize("model_order", ["RGB", "BGR", "GRAY"])
@pytest.mark.parametrize("crop_order", ["RGB", "BGR"])
def test_preprocess_lookup_table_equals_the_float_arithmetic(model_order, crop_order):
    from edge.alignment import TEMPLATE_112
    from edge.bundle.manifest import InputSpec

    gray = model_order == "GRAY"
    spec = InputSpec(crop_size=112, color_order=model_order, channels=1 if gray else 3,
                     mean=[0.45] if gray else [0.4, 0.5, 0.6], std=[0.22] if gray else [0.2, 0.25, 0.3],
                     alignment={"points": TEMPLATE_112.tolist()})
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(3)]
    batch = np.stack(crops).astype(np.float32)
    if gray:
        weights = [0.114, 0.587, 0.299] if crop_order == "BGR" else [0.299, 0.587, 0.114]
        batch = (batch @ np.float32(weights))[..., None].round()
    elif model_order != crop_order:
        batch = batch[..., ::-1]
    want = ((batch / 255 - np.float32(spec.mean)) / np.float32(spec.std)).transpose(0, 3, 1, 2)
    got = to_tensor(crops, spec, crop_order)
    assert got.shape == (3, spec.channels, 112, 112) and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, atol=1e-5 if not gray else 0.02)
