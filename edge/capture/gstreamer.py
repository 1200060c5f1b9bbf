"""GStreamer pipeline strings for OpenCV's CAP_GSTREAMER backend (Jetson CSI cameras)."""

from __future__ import annotations

from fractions import Fraction


def argus_pipeline(sensor_id: int, width: int, height: int, fps: float) -> str:
    """nvarguscamerasrc -> NVMM NV12 -> nvvidconv to BGRx -> videoconvert to BGR -> appsink (newest frame only)."""
    if sensor_id < 0 or width <= 0 or height <= 0 or fps <= 0:
        raise ValueError(f"bad argus parameters: sensor {sensor_id}, {width}x{height} @ {fps}")
    rate = Fraction(fps).limit_denominator(1001)
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, "
        f"format=(string)NV12, framerate=(fraction){rate.numerator}/{rate.denominator} ! "
        f"nvvidconv ! video/x-raw, format=(string)BGRx ! "
        f"videoconvert ! video/x-raw, format=(string)BGR ! "
        f"appsink drop=true max-buffers=1 sync=false"
    )


def opencv_has_gstreamer() -> bool:
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False
