import subprocess
import sys

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
