"""Camera profiles in firmware_cfg/cameras are valid config fragments (they load as a device config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import load_config

CAMERAS = sorted((Path(__file__).resolve().parents[1] / "firmware_cfg" / "cameras").glob("*.toml"))


def test_profiles_exist() -> None:
    assert {p.stem for p in CAMERAS} >= {"jetson-csi-imx219", "jetson-csi-imx477", "usb-uvc", "rpi-picamera2"}


@pytest.mark.parametrize("profile", CAMERAS, ids=lambda p: p.stem)
def test_profile_loads(profile: Path) -> None:
    config = load_config(profile)
    scheme = config.source.uri.split(":", 1)[0]
    assert scheme == {"jetson": "argus", "usb": "v4l2", "rpi": "picamera2"}[profile.stem.split("-")[0]]
