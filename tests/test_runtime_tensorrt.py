"""The GPU runtime's decisions, without a GPU: a fake `tensorrt` and cuda-python (tests/fake_gpu.py) record calls.

Covered: build vs cache vs prebuilt engine, the shape profile and precision in
the key and the build, TensorRT version branches, the fused path (head kernel
on the engine's f/g buffers, only probabilities copied back), teardown on
close and on a swap, the self-test through the CUDA head, fallbacks in "auto"
and clear errors when TensorRT or the CUDA head is forced. Nothing here says
how the real TensorRT or a real GPU behaves: docs/jetson.md lists what has
not run on hardware.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from fake_gpu import CUresult, FakeGpu, install

from edge.bundle import read_bundle
from edge.bundle.store import write_bundle
from edge.config import load_config
from edge.config.models import ModelConfig
from edge.head.runner import NumpyHead
from edge.kernels.build import cubin_name
from edge.pipeline.daemon import BundleLoadError, load_processor, load_runtime
from edge.pipeline.model_runtime import ModelRuntime
from edge.runtime.backend import BackendError
from edge.runtime.engine_cache import EngineCache
from edge.runtime.platform import JetsonPlatform, PlatformError
from edge.runtime.select import open_backend
from edge.runtime.tensorrt_engine import BuildOptions, TensorRTBackend

ORIN_NANO = JetsonPlatform("36.4.3", "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super")


@pytest.fixture
def gpu(monkeypatch) -> FakeGpu:
    return install(monkeypatch, FakeGpu())


def builds(gpu: FakeGpu) -> list[dict]:
    return [c[1] for c in gpu.calls if c[0] == "build"]


def backend(bundle_dir: Path, cache: Path, max_batch: int = 4, platform=None) -> TensorRTBackend:
    return TensorRTBackend(read_bundle(bundle_dir), EngineCache(cache), BuildOptions(max_batch), platform=platform)


def config(tmp_path: Path, bundle: Path, *extra: str):
    return load_config(None, [f'model.bundle="{bundle}"', 'model.backend="tensorrt"',
                              f'model.engine_cache_dir="{tmp_path / "engines"}"', "model.batch_max=4",
                              f'head.kernel_dir="{tmp_path / "kernels"}"', *extra])


def test_an_engine_is_built_once_then_loaded_from_the_cache(gpu, tiny_bundle, tmp_path):
    first = backend(tiny_bundle, tmp_path / "engines")
    assert first.source == "built" and len(builds(gpu)) == 1
    plan = builds(gpu)[0]
    assert plan["profile"] == [[1, 3, 48, 48], [1, 3, 48, 48], [4, 3, 48, 48]]  # (min, opt, max) of the key
    assert plan["network_flags"] == 1 << 1 and plan["flags"] == []  # TensorRT 10: strongly typed, no flags
    stored = sorted(p.name for p in (tmp_path / "engines").iterdir())
    key = first.key
    assert stored == sorted([f"{key.stem}.engine", f"{key.stem}.json", f"timing-{key.device_stem}.cache"])
    first.close()
    second = backend(tiny_bundle, tmp_path / "engines")
    assert second.source == "cache" and len(builds(gpu)) == 1
    second.close()


def test_the_shape_profile_and_precision_are_part_of_the_key(gpu, tiny_bundle, tmp_path):
    four = backend(tiny_bundle, tmp_path / "engines", max_batch=4)
    four.close()
    eight = backend(tiny_bundle, tmp_path / "engines", max_batch=8)  # model.batch_max changed: never the old engine
    assert eight.source == "built" and eight.key.stem != four.key.stem
    assert builds(gpu)[-1]["profile"][2] == [8, 3, 48, 48]
    eight.close()
    # A stale engine under the right name (say a copy from another device) is refused by its own profile.
    cache = EngineCache(tmp_path / "engines")
    shutil.copy(cache.engine_path(four.key), cache.engine_path(eight.key))
    with pytest.raises(BackendError, match=r"engine profile allows batch 4, model\.batch_max is 8"):
        backend(tiny_bundle, tmp_path / "engines", max_batch=8)
    assert gpu.contexts == 0 and not gpu.memory  # the failed open freed what it had


def with_prebuilt(src: Path, dest: Path, engine: bytes, **target) -> Path:
    b = read_bundle(src)
    manifest = b.manifest.model_dump(mode="json", exclude_none=True)
    for key in ("files", "schema_version", "created"):
        manifest.pop(key)
    onnx_sha = b.manifest.files["student_trt.onnx"].sha256
    manifest["engines"] = [{"file": "prebuilt.engine", "onnx_sha256": onnx_sha,
                            "target": {"tensorrt": "10.3.0", "compute_capability": "8.7", **target}}]
    files = {name: (src / name, entry.role) for name, entry in b.manifest.files.items()}
    files["prebuilt.engine"] = (engine, "engine")
    return write_bundle(dest, manifest, files).path


def test_a_prebuilt_engine_is_used_only_when_it_was_built_for_this_exact_device_and_profile(gpu, tiny_bundle,
                                                                                           tmp_path, caplog):
    made = backend(tiny_bundle, tmp_path / "scratch", platform=ORIN_NANO)
    engine = EngineCache(tmp_path / "scratch").load(made.key)
    made.close()
    exact = {"device_model": ORIN_NANO.model_slug, "l4t": "36.4.3", "max_batch": 4, "precision": "strongly-typed"}
    good = with_prebuilt(tiny_bundle, tmp_path / "good", engine, **exact)
    chosen = backend(good, tmp_path / "engines", platform=ORIN_NANO)
    assert chosen.source == "prebuilt" and not (tmp_path / "engines").exists()  # nothing built or cached
    chosen.close()
    caplog.set_level(logging.INFO)
    for name, wrong in {"agx": {**exact, "device_model": "nvidia-jetson-agx-orin-developer-kit"},
                        "l4t": {**exact, "l4t": "36.3.0"}, "batch": {**exact, "max_batch": 16},
                        "unkeyed": {}}.items():
        other = with_prebuilt(tiny_bundle, tmp_path / name, engine, **wrong)
        caplog.clear()
        used = backend(other, tmp_path / f"engines-{name}", platform=ORIN_NANO)
        assert used.source == "built", name  # same compute capability 8.7, but not built for this device
        assert "prebuilt engine not used: prebuilt.engine" in caplog.text, name
        used.close()


def test_tensorrt_8_6_builds_explicit_batch_with_int8_flags(monkeypatch, tiny_bundle, tmp_path):
    gpu = install(monkeypatch, FakeGpu(trt_version="8.6.2"))
    b = backend(tiny_bundle, tmp_path / "engines")
    plan = builds(gpu)[0]
    assert plan["network_flags"] == 1 << 0  # EXPLICIT_BATCH: create_network(0) is implicit batch on 8.6
    assert plan["flags"] == ["INT8", "FP16"] and b.key.precision == "int8+fp16"
    b.close()


def test_tensorrt_11_builds_strongly_typed_without_the_removed_flags(monkeypatch, tiny_bundle, tmp_path):
    gpu = install(monkeypatch, FakeGpu(trt_version="11.0.0"))
    b = backend(tiny_bundle, tmp_path / "engines")
    assert builds(gpu)[0]["network_flags"] == 1 << 1 and b.key.precision == "strongly-typed"
    b.close()


@pytest.mark.parametrize(("trt_version", "platform", "message"), [
    ("8.5.2", None, "TensorRT 8.5.2 is older than supported"),
    ("8.6.2", JetsonPlatform("35.4.1", "NVIDIA Jetson AGX Orin"), "L4T R35.4.1 \\(JetPack 5 or older\\)"),
])
def test_unsupported_jetpack_or_tensorrt_is_one_clear_error(monkeypatch, tiny_bundle, tmp_path, trt_version,
                                                             platform, message):
    gpu = install(monkeypatch, FakeGpu(trt_version=trt_version))
    with pytest.raises(PlatformError, match=message):
        backend(tiny_bundle, tmp_path / "engines", platform=platform)
    monkeypatch.setattr("edge.runtime.platform.read_platform", lambda root=None: platform)
    with pytest.raises(BackendError, match=f"model.backend = \"tensorrt\" cannot run: {message}.*JetPack 6"):
        open_backend(read_bundle(tiny_bundle), ModelConfig(backend="tensorrt", engine_cache_dir=tmp_path))
    fallback = open_backend(read_bundle(tiny_bundle), ModelConfig(backend="auto", engine_cache_dir=tmp_path))
    assert fallback.name == "onnxruntime" and gpu.contexts == 0


def test_auto_falls_back_to_onnxruntime_on_a_cuda_init_error_and_tensorrt_mode_says_why(gpu, tiny_bundle, tmp_path,
                                                                                       caplog):
    gpu.init_error = CUresult.CUDA_ERROR_OPERATING_SYSTEM  # what a sandbox without the GPU device nodes gives
    bundle = read_bundle(tiny_bundle)
    caplog.set_level(logging.INFO)
    chosen = open_backend(bundle, ModelConfig(backend="auto", engine_cache_dir=tmp_path / "engines"))
    assert chosen.name == "onnxruntime" and chosen.role == "onnx_cpu"
    assert "CUDA_ERROR_OPERATING_SYSTEM" in caplog.text and "falling back to onnxruntime" in caplog.text
    with pytest.raises(BackendError, match="tensorrt\" cannot run: CUDA cannot start on device 0: cuInit failed: "
                                           "CUDA_ERROR_OPERATING_SYSTEM"):
        open_backend(bundle, ModelConfig(backend="tensorrt", engine_cache_dir=tmp_path / "engines"))
    assert gpu.contexts == 0 and not (tmp_path / "engines").exists()


def test_auto_falls_back_on_a_failed_engine_build(gpu, tiny_bundle, tmp_path):
    gpu.parse_ok = False
    chosen = open_backend(read_bundle(tiny_bundle), ModelConfig(backend="auto", engine_cache_dir=tmp_path / "e"))
    assert chosen.name == "onnxruntime"
    assert gpu.contexts == 0 and not gpu.memory and not gpu.streams  # the half-open TensorRT path was torn down


def test_the_fused_path_reads_the_engines_buffers_and_copies_back_only_probabilities(gpu, tiny_bundle, tmp_path):
    runtime = ModelRuntime(read_bundle(tiny_bundle), config(tmp_path, tiny_bundle))
    assert runtime.head_backend == "cuda" and runtime.fused
    engine = runtime.backend
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, 48, 48)).astype(np.float32)
    slots, fresh = np.array([0, 1, -1], np.int32), np.array([True, True, False])
    gpu.calls.clear()
    got = runtime.run_tensor(x, slots, fresh)
    (launch,) = gpu.launches
    assert (launch["f"], launch["g"]) == (engine.f_ptr, engine.g_ptr)  # no copy of f/g anywhere
    session = engine.cuda_session
    assert launch["stream"] == session.stream and launch["grid"] == 3
    assert [c[1] for c in gpu.calls if c[0] == "execute_async_v3"] == [session.stream_handle]  # the same stream
    back = [c[1] for c in gpu.calls if c[0] == "cuMemcpyDtoHAsync"]
    assert sorted(back) == sorted(launch["out"])  # fe_prob, au_prob, au_active, top: nothing else comes back
    assert [c[0] for c in gpu.calls].count("cuStreamSynchronize") == 1  # one synchronisation per batch
    # The same faces through the host path (engine f/g back, NumPy head) give the same probabilities.
    features = engine.infer(x)
    want = NumpyHead(runtime.params, runtime.spec).run(features.f, features.g, slots, fresh)
    np.testing.assert_allclose(got.fe_prob, want.fe_prob, atol=1e-6)
    np.testing.assert_allclose(got.au_prob, want.au_prob, atol=1e-6)
    assert runtime.selftest().passed
    runtime.close()


def test_close_frees_engine_buffers_stream_and_context(gpu, tiny_bundle, tmp_path):
    runtime = ModelRuntime(read_bundle(tiny_bundle), config(tmp_path, tiny_bundle))
    assert gpu.contexts == 1 and gpu.memory and len(gpu.streams) == 1 and len(gpu.modules) == 1
    runtime.close()
    assert gpu.contexts == 0 and not gpu.memory and not gpu.streams and not gpu.modules
    runtime.close()  # twice is harmless


def test_a_swap_tears_down_the_old_runtime_and_the_agent_check_leaves_nothing(gpu, tiny_bundle, tmp_path):
    from bundle_factory import make_tiny_bundle

    cfg = config(tmp_path, tiny_bundle)
    processor = load_processor(cfg, read_bundle(tiny_bundle))
    before = dict(gpu.memory)
    newer = make_tiny_bundle(tmp_path / "newer", build=2, seed=3)
    candidate = load_runtime(cfg, read_bundle(newer))
    outcome = processor.swap(candidate, cfg)
    assert outcome.smoothing == "carried"
    assert gpu.contexts == 1 and not set(before) & set(gpu.memory)  # only the new runtime's buffers remain
    processor.close()
    assert gpu.contexts == 0 and not gpu.memory and not gpu.streams
    load_processor(cfg, read_bundle(newer)).close()  # what the update agent does before a switch
    assert gpu.contexts == 0 and not gpu.memory


def test_the_self_test_runs_through_the_cuda_head_the_daemon_would_use(gpu, tiny_bundle, tmp_path):
    gpu.corrupt_head = True  # backend exact, kernel wrong: only a self-test through the head runner sees it
    with pytest.raises(BundleLoadError, match="self-test FAILED: 4 golden faces on onnx_tensorrt with the cuda head"):
        load_runtime(config(tmp_path, tiny_bundle), read_bundle(tiny_bundle))
    assert gpu.contexts == 0 and not gpu.memory  # the refused runtime was closed


def test_head_auto_falls_back_to_numpy_when_nvrtc_fails_and_cuda_mode_says_why(gpu, tiny_bundle, tmp_path):
    gpu.nvrtc_error = "ssm_head.cu(12): error: identifier \"x\" is undefined"
    runtime = ModelRuntime(read_bundle(tiny_bundle), config(tmp_path, tiny_bundle))
    assert runtime.head_backend == "numpy" and not runtime.fused
    assert "identifier" in runtime.head_skipped["cuda"]
    assert runtime.selftest().passed  # the engine still runs, f/g copied back for the NumPy head
    runtime.close()
    with pytest.raises(BundleLoadError, match=r'head\.backend = "cuda" cannot run: NVRTC cannot compile .*identifier'):
        load_runtime(config(tmp_path, tiny_bundle, 'head.backend="cuda"'), read_bundle(tiny_bundle))
    assert gpu.contexts == 0 and not gpu.memory


def test_cuda_head_on_an_onnxruntime_backend_is_a_clear_error(tiny_bundle, tmp_path):
    cfg = load_config(None, [f'model.bundle="{tiny_bundle}"', 'model.backend="onnxruntime"', 'head.backend="cuda"'])
    with pytest.raises(BundleLoadError, match="fused head reads the TensorRT engine's device buffers"):
        load_runtime(cfg, read_bundle(tiny_bundle))


def test_a_prebuilt_cubin_for_this_source_is_loaded_instead_of_compiling(gpu, tiny_bundle, tmp_path):
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    (kernels / "ssm_head.000000000000.sm_87.cubin").write_bytes(b"\x7fELF-stale")  # an older release's kernel
    runtime = ModelRuntime(read_bundle(tiny_bundle), config(tmp_path, tiny_bundle))
    assert "nvrtcCompileProgram" in gpu.names() and runtime.head.source == "NVRTC (sm_87)"
    runtime.close()
    (kernels / cubin_name("sm_87")).write_bytes(b"\x7fELF-prebuilt-for-this-source")
    gpu.calls.clear()
    runtime = ModelRuntime(read_bundle(tiny_bundle), config(tmp_path, tiny_bundle))
    assert "nvrtcCompileProgram" not in gpu.names()
    assert ("cuModuleLoadData", b"\x7fELF-prebuilt-fo") in gpu.calls
    runtime.close()


def test_tensorrt_log_messages_go_through_python_logging(gpu, tiny_bundle, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="affect-sensor.tensorrt")
    backend(tiny_bundle, tmp_path / "engines").close()
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.name == "affect-sensor.tensorrt"] == [
        ("affect-sensor.tensorrt", logging.WARNING, "fake builder: INT8 tactics chosen from Q/DQ scales")]


def test_the_jetson_platform_is_read_from_jetpacks_own_files(tmp_path):
    from edge.runtime.platform import read_platform

    assert read_platform(tmp_path) is None  # not a Jetson
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 "
        "UTC 2025\n# KERNEL_VARIANT: oot\n")
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson Orin Nano Engineering Reference Developer "
                                                      b"Kit Super\0")
    found = read_platform(tmp_path)
    assert found == ORIN_NANO
    assert found.model_slug == "nvidia-jetson-orin-nano-engineering-reference-developer-kit-super"
    (tmp_path / "etc/nv_tegra_release").write_text("garbage\n")
    with pytest.raises(PlatformError, match="not an L4T release line"):
        read_platform(tmp_path)
