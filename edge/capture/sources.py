"""Frame sources behind one interface, chosen by URI (see firmware_cfg/sensor.toml [source]).

URIs: "demo", "v4l2:/dev/videoN", "argus:N", "picamera2:N", "rtsp://..." (also rtsps/http),
a video file, or a folder of images. Hardware this box may not have (Jetson CSI,
Pi camera) fails at open with a SourceError saying what is missing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np

from edge.capture.frame import Frame, FrameSource, SourceError
from edge.capture.gstreamer import argus_pipeline, opencv_has_gstreamer
from edge.config.models import SourceConfig
from edge.redact import redact_url

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


class OpenCVSource:
    """cv2.VideoCapture on a device, stream, file or GStreamer pipeline."""

    def __init__(self, target: str | int, api: int, description: str, live: bool, config: SourceConfig) -> None:
        self.target, self.api, self.description, self.live = target, api, description, live
        self.config = config
        self._cap: cv2.VideoCapture | None = None
        self._index = 0

    def open(self) -> None:
        cap = cv2.VideoCapture(self.target, self.api)
        if self.live:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
            cap.set(cv2.CAP_PROP_FPS, self.config.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.description}")
        self._cap, self._index = cap, 0

    def read(self) -> Frame | None:
        if self._cap is None:
            raise SourceError(f"{self.description} is not open")
        ok, image = self._cap.read()
        if not ok or image is None:
            if self.live:
                raise SourceError(f"read failed on {self.description}")
            if not self.config.loop or self._index == 0:
                return None
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._cap.read()
            if not ok or image is None:
                return None
        frame = Frame(_as_bgr(image), self._index, time.monotonic(), self.description)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageFolderSource:
    """Images of a folder in name order. Unreadable files are skipped, logged and counted, never fatal."""

    live = False

    def __init__(self, folder: Path, loop: bool = False) -> None:
        self.folder, self.loop = folder, loop
        self.description = f"image folder {folder}"
        self.skipped = 0
        self._files: list[Path] = []
        self._pos = 0
        self._index = 0

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"{self.description} does not exist")
        self._files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self._files:
            raise SourceError(f"{self.description} has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self._pos = self._index = 0

    def read(self) -> Frame | None:
        readable_this_pass = False
        while True:
            if self._pos >= len(self._files):
                if not self.loop:
                    return None
                if not readable_this_pass and self._index == 0:
                    raise SourceError(f"{self.description}: no file could be decoded")
                self._pos = 0
            path = self._files[self._pos]
            self._pos += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                self.skipped += 1
                log.warning("skipping %s: not a decodable image", path)
                continue
            readable_this_pass = True
            frame = Frame(image, self._index, time.monotonic(), path.name)
            self._index += 1
            return frame

    def close(self) -> None:
        self._files = []


class Picamera2Source:
    """Raspberry-Pi-class CSI camera through libcamera's picamera2 (imported only when opened)."""

    live = True

    def __init__(self, camera_num: int, config: SourceConfig) -> None:
        self.camera_num, self.config = camera_num, config
        self.description = f"picamera2 camera {camera_num}"
        self._cam = None
        self._index = 0

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise SourceError(
                f"{self.description}: picamera2 is not importable ({exc}); it exists only on Raspberry Pi OS "
                "(apt install python3-picamera2)") from exc
        try:
            cam = Picamera2(self.camera_num)
            cam.configure(cam.create_video_configuration(
                main={"size": (self.config.width, self.config.height), "format": "RGB888"},
                controls={"FrameRate": self.config.fps}, buffer_count=2))
            cam.start()
        except Exception as exc:  # libcamera raises assorted types
            raise SourceError(f"cannot open {self.description}: {exc}") from exc
        self._cam, self._index = cam, 0

    def read(self) -> Frame | None:
        if self._cam is None:
            raise SourceError(f"{self.description} is not open")
        try:
            image = self._cam.capture_array("main")  # "RGB888" is BGR byte order in memory
        except Exception as exc:
            raise SourceError(f"read failed on {self.description}: {exc}") from exc
        frame = Frame(_as_bgr(image), self._index, time.monotonic(), self.description)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.close()
            finally:
                self._cam = None


def _as_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def _int_suffix(uri: str, scheme: str) -> int:
    rest = uri[len(scheme) + 1:] or "0"
    if not rest.isdigit():
        raise SourceError(f"source uri {uri!r}: expected {scheme}:N with a number N")
    return int(rest)


def open_source(config: SourceConfig) -> FrameSource:
    """Build (not yet open) the source that `config.uri` names."""
    from edge.capture.demo import DemoSource

    uri = config.uri.strip()
    if uri == "demo":
        return DemoSource(config)
    if uri.startswith("demo:"):  # a room of N faces
        return DemoSource(config, faces=_int_suffix(uri, "demo"))
    if uri.startswith("v4l2:"):
        device = uri[len("v4l2:"):]
        target: str | int = int(device) if device.isdigit() else device
        return OpenCVSource(target, cv2.CAP_V4L2, f"V4L2 camera {device}", True, config)
    if uri.startswith("argus:"):
        sensor = _int_suffix(uri, "argus")
        if not opencv_has_gstreamer():
            raise SourceError(
                f"source {uri!r} needs OpenCV built with GStreamer and the Jetson nvarguscamerasrc plugin; this "
                "OpenCV has no GStreamer (on a Jetson use JetPack's python3-opencv, see docs/capture.md)")
        pipeline = argus_pipeline(sensor, config.width, config.height, config.fps)
        return OpenCVSource(pipeline, cv2.CAP_GSTREAMER, f"Jetson CSI camera {sensor} (argus)", True, config)
    if uri.startswith("picamera2:") or uri == "picamera2":
        return Picamera2Source(_int_suffix(uri, "picamera2") if ":" in uri else 0, config)
    if uri.split("://", 1)[0] in ("rtsp", "rtsps", "http", "https", "rtmp", "udp") and "://" in uri:
        return OpenCVSource(uri, cv2.CAP_FFMPEG, f"stream {_redact(uri)}", True, config)
    path = Path(uri)
    if path.is_dir():
        return ImageFolderSource(path, loop=config.loop)
    if path.is_file():
        return OpenCVSource(str(path), cv2.CAP_FFMPEG, f"video file {path}", False, config)
    raise SourceError(f"source uri {redact_url(uri)!r} is not 'demo', v4l2:, argus:, picamera2:, a stream URL, "
                      "an existing video file or an existing folder")


def _redact(uri: str) -> str:
    """Hide a password in rtsp://user:pass@host so it does not reach the logs (parsed, see edge.redact)."""
    return redact_url(uri)
