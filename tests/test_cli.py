import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("script", "commands"),
    [("affect-sensor", ["check-config", "bundle"]), ("affect-quantize", ["labels"])],
)
def test_console_scripts_list_their_commands(script, commands):
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in commands:
        assert command in result.stdout


def test_quantize_labels_prints_prior():
    result = subprocess.run(
        [sys.executable, "-m", "quantize.cli", "labels"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    happiness = next(line for line in result.stdout.splitlines() if line.startswith("happiness"))
    assert happiness.count("#") == 2


RECIPE_INPUTS = ("train.npz", "val.npz", "train.blendshapes.npz", "val.blendshapes.npz", "train.peer.npz")


def _faces_dir(tmp_path: Path, names: tuple[str, ...]) -> Path:
    """Empty stand-ins for the recipe's inputs: the checks under test run before any of them is read."""
    faces = tmp_path / "faces"
    faces.mkdir()
    for name in names:
        (faces / name).touch()
    return faces


@pytest.mark.parametrize("scale", ["0", "1.5"])
def test_recipe_refuses_a_scale_outside_0_1_before_any_work(tmp_path, scale):
    faces = _faces_dir(tmp_path, RECIPE_INPUTS)
    result = subprocess.run(
        [sys.executable, "-m", "quantize.cli", "recipe", "default", "--faces", str(faces),
         "--work", str(tmp_path / "w"), "--out", str(tmp_path / "b"), "--scale", scale],
        capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and f"--scale {float(scale)}: must be in (0, 1]" in result.stderr, result.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "b").exists()


def test_recipe_names_the_missing_peer_targets(tmp_path):
    faces = _faces_dir(tmp_path, tuple(n for n in RECIPE_INPUTS if n != "train.peer.npz"))
    result = subprocess.run(
        [sys.executable, "-m", "quantize.cli", "recipe", "default", "--faces", str(faces),
         "--work", str(tmp_path / "w"), "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert f"missing {faces / 'train.peer.npz'}" in result.stderr and "affect-quantize peer-targets" in result.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(("options", "message"), [
    (["--photo-weight", "2"], "distill: --photo-weight: Input should be less than or equal to 1"),
    (["--lr", "0"], "distill: --lr: Input should be greater than 0"),
    (["--peer-share", "1.5"], "distill: --peer-share: Input should be less than or equal to 1"),
    (["--photo-weight", "0.3", "--equal-weight"], "--equal-weight and --photo-weight exclude each other"),
])
def test_distill_refuses_bad_settings_before_any_work(tmp_path, options, message):
    result = subprocess.run(
        [sys.executable, "-m", "quantize.cli", "distill", "--teacher", str(tmp_path / "teacher"),
         "--out", str(tmp_path / "d"), *options], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "d").exists()
