"""`affect-sensor analyze` on real photos and `affect-sensor bench` on the demo frames (tiny real bundle)."""

import json
import subprocess
import sys


def sensor(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=timeout)


def test_analyze_photos_prints_one_record_per_photo(tiny_bundle, london_dir, tmp_path):
    photos = [str(london_dir / "004_03.jpg"), str(london_dir / "004_08.jpg")]
    result = sensor("analyze", "--set", f'model.bundle="{tiny_bundle}"', "--json", *photos)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["file"] for r in records] == photos
    for r in records:
        assert len(r["faces"]) == 1
        assert abs(sum(r["faces"][0]["expressions"].values()) - 1) < 1e-3
    text = sensor("analyze", "--set", f'model.bundle="{tiny_bundle}"', photos[0])
    assert "face 1 at" in text.stdout and "active AUs" in text.stdout


def test_analyze_rejects_unreadable_files(tiny_bundle, tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello")
    result = sensor("analyze", "--set", f'model.bundle="{tiny_bundle}"', str(bogus))
    assert result.returncode == 2
    assert "notes.txt: not a readable video" in result.stderr and "Traceback" not in result.stderr


def test_bench_reports_stages_lowerings_and_machine(tiny_bundle):
    result = sensor("bench", "--set", f'model.bundle="{tiny_bundle}"', "--frames", "20", "--iterations", "20",
                    "--json")
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["machine"]["cores"] >= 1 and r["machine"]["cpu"]
    assert set(r["lowerings"]["graphs"]) == {"onnx_cpu", "onnx_fp32"}
    assert r["lowerings"]["int8_speedup_vs_fp32"] > 0
    pipe = r["pipeline"]
    assert pipe["frames"] == 20 and pipe["processed_fps"] > 0 and pipe["faces_per_frame"] >= 0.9
    assert {"detect", "track", "align", "infer", "head"} <= set(pipe["stages_ms"])
    assert {row["batch"] for row in r["head"]} == {1, 8}
