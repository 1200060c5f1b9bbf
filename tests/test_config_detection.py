"""Detection, tracking and model-thread settings: defaults, and limits that contradict each other."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, load_config

TEMPLATE = Path(__file__).resolve().parents[1] / "firmware_cfg" / "sensor.toml"


def test_defaults_are_a_room_scanned_cheaply():
    config = load_config(TEMPLATE)
    assert config.detection.detector == "retinaface" and config.detection.max_faces == 16
    assert config.detection.scan_slices == 0 and config.detection.min_face_px == 32
    assert config.model.threads == 1 and config.model.spin_wait is False
    assert config.model.batch_max >= config.detection.max_faces  # all faces of a frame in one inference call


@pytest.mark.parametrize(("overrides", "message"), [
    (["head.max_tracks=8"], r"head.max_tracks \(8\) must be >= detection.max_faces \(16\)"),
    (["detection.max_faces=100", "head.max_tracks=64"], r"head.max_tracks \(64\) must be >= detection.max_faces"),
    (["detection.min_face_px=500"], r"detection.min_face_px \(500\) is larger than the frame \(640x480\)"),
    (["source.height=240", "detection.min_face_px=300"], r"larger than the frame \(640x240\)"),
    (['detection.detector="yunet"'], r"detection.detector: Input should be 'retinaface', 'full_range', 'short_range'"),
    (["detection.scan_slices=-1"], r"detection.scan_slices: Input should be greater than or equal to 0"),
])
def test_contradicting_limits_name_the_file_and_keys(tmp_path, overrides, message):
    path = tmp_path / "sensor.toml"
    path.write_text("[detection]\nevery_k_frames = 3\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, overrides)
    assert str(path) in str(info.value)


def test_limits_that_agree_load():
    config = load_config(None, ["detection.max_faces=64", "head.max_tracks=64", "detection.min_face_px=480"])
    assert config.detection.max_faces == 64
