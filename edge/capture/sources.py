"""Frame sources behind one interface, chosen by URI (see firmware_cfg/sensor.toml [source]).

URIs: "demo", "v4l2:/dev/videoN", "argus:N", "picamera2:N", "rtsp://..." (also rtsps/http),
a video file, or a folder of images. Hardware this box may not have (Jetson CSI,
Pi camera) fails at open with a SourceError saying what is missing.

Every blocking call of a live source is bounded by the backend itself, because only the reading
thread may release a capture (edge/capture/reader.py): streams get FFmpeg's open and read timeouts
as open parameters, V4L2 cameras OpenCV's select() timeout. docs/capture.md has the measurements.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from edge.capture.frame import Frame, FrameSource, SourceError, SourceTimeout
from edge.capture.gstreamer import argus_pipeline, opencv_has_gstreamer
from edge.capture.rtsp import explain_rtsp_failure
from edge.config.models import SourceConfig
from edge.redact import redact_url

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "udp")
# Opening a stream is an RTSP handshake plus FFmpeg probing the first packets for the codec: give it at
# least this long (and never less than stall_timeout_s) before calling the camera hung.
MIN_OPEN_TIMEOUT_S = 10.0
# After a failed rtsp:// open, how long the DESCRIBE that names the reason may take (edge/capture/rtsp.py).
DIAGNOSE_TIMEOUT_S = 3.0


def open_timeout_s(config: SourceConfig) -> float:
    return max(MIN_OPEN_TIMEOUT_S, config.stall_timeout_s)


class OpenCVSource:
    """cv2.VideoCapture on a device, stream, file or GStreamer pipeline.

    `read_timeout_s` / `open_timeout_s` are the bounds the backend itself enforces (None where it has
    none we can set); the capture thread's watchdog reads them. `diagnose` explains a failed open.
    """

    def __init__(self, target: str | int, api: int, description: str, live: bool, config: SourceConfig,
                 timeouts: bool = False, diagnose: Callable[[], str] | None = None) -> None:
        self.target, self.api, self.description, self.live = target, api, description, live
        self.config = config
        self.diagnose = diagnose
        self.open_timeout_s: float | None = None
        self.read_timeout_s: float | None = None
        self._params: list[int] = []
        if timeouts:  # FFmpeg only: other backends refuse to open when given parameters they do not know
            self.open_timeout_s, self.read_timeout_s = open_timeout_s(config), config.stall_timeout_s
            self._params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, round(self.open_timeout_s * 1000),
                            cv2.CAP_PROP_READ_TIMEOUT_MSEC, round(self.read_timeout_s * 1000)]
            if diagnose is not None:
                self.open_timeout_s += DIAGNOSE_TIMEOUT_S
        self._cap: cv2.VideoCapture | None = None
        self._index = 0

    def open(self) -> None:
        if self.api == cv2.CAP_V4L2:
            # OpenCV's V4L2 backend takes no timeout parameter; its select() waits this many seconds
            # (default 10, read once per process) before a read of a silent camera fails.
            os.environ.setdefault("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT", str(math.ceil(self.config.stall_timeout_s)))
        cap = cv2.VideoCapture(self.target, self.api, self._params)
        if self.live:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
            cap.set(cv2.CAP_PROP_FPS, self.config.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if not cap.isOpened():
            cap.release()
            reason = self.diagnose() if self.diagnose is not None else ""
            raise SourceError(f"cannot open {self.description}" + (f": {reason}" if reason else ""))
        self._cap, self._index = cap, 0

    def read(self) -> Frame | None:
        if self._cap is None:
            raise SourceError(f"{self.description} is not open")
        started = time.monotonic()
        ok, image = self._cap.read()
        if not ok or image is None:
            if self.live:
                waited = time.monotonic() - started
                if self.read_timeout_s is not None and waited >= 0.9 * self.read_timeout_s:
                    raise SourceTimeout(f"no frame from {self.description} for {waited:.1f} s (read timeout)")
                raise SourceError(f"read failed on {self.description} (connection lost or stream ended)")
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
        """Release the capture. Call it only from the thread that reads (edge/capture/reader.py says why)."""
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
    if uri.split("://", 1)[0].lower() in STREAM_SCHEMES and "://" in uri:
        diagnose = partial(explain_rtsp_failure, uri, DIAGNOSE_TIMEOUT_S) if uri.lower().startswith("rtsp://") else None
        return OpenCVSource(uri, cv2.CAP_FFMPEG, f"stream {_redact(uri)}", True, config, timeouts=True,
                            diagnose=diagnose)
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
