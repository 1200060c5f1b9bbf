"""Frame sources on real files: a video written here, an image folder with a corrupt file, the demo."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from edge.capture import CaptureThread, SourceError, open_source
from edge.capture.demo import DemoSource, load_demo_photos, render_demo_frame
from edge.capture.gstreamer import argus_pipeline, opencv_has_gstreamer
from edge.capture.sources import ImageFolderSource, OpenCVSource, Picamera2Source, _redact
from edge.config.models import SourceConfig


def _numbered(i: int, w: int = 160, h: int = 120) -> np.ndarray:
    """A frame whose mean grey level encodes its number (survives lossy codecs)."""
    return np.full((h, w, 3), 20 + 10 * i, np.uint8)


def _drain(source) -> list:
    source.open()
    frames = []
    while (f := source.read()) is not None:
        frames.append(f)
        if len(frames) > 100:
            break
    source.close()
    return frames


def test_video_file_plays_in_order_and_ends(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    assert writer.isOpened()
    for i in range(12):
        writer.write(_numbered(i))
    writer.release()
    source = open_source(SourceConfig(uri=str(path)))
    assert isinstance(source, OpenCVSource) and not source.live
    frames = _drain(source)
    assert [f.index for f in frames] == list(range(12))
    levels = [float(f.image.mean()) for f in frames]
    assert np.allclose(levels, [20 + 10 * i for i in range(12)], atol=3)
    assert frames[0].image.shape == (120, 160, 3)


def test_video_file_loops_when_asked(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for i in range(5):
        writer.write(_numbered(i))
    writer.release()
    source = open_source(SourceConfig(uri=str(path), loop=True))
    source.open()
    levels = [round((source.read().image.mean() - 20) / 10) for _ in range(12)]
    source.close()
    assert levels == [0, 1, 2, 3, 4] * 2 + [0, 1]


def test_image_folder_skips_and_counts_corrupt_files(tmp_path):
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), _numbered(i))
    (tmp_path / "002b.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    source = open_source(SourceConfig(uri=str(tmp_path)))
    assert isinstance(source, ImageFolderSource)
    frames = _drain(source)
    assert [f.source for f in frames] == ["000.png", "001.png", "002.png", "003.png"]
    assert [round((f.image.mean() - 20) / 10) for f in frames] == [0, 1, 2, 3]
    assert source.skipped == 1


def test_capture_thread_over_folder_counts_skips_and_ends(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), _numbered(i))
    (tmp_path / "1b.png").write_bytes(b"garbage")
    config = SourceConfig(uri=str(tmp_path))
    capture = CaptureThread(lambda: open_source(config), config).start()
    got = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not capture.slot.closed:
        frame = capture.slot.get(timeout=0.2)
        if frame is not None:
            got.append(frame)
            time.sleep(0.05)  # a slow consumer: files are not live, so nothing may be dropped
    assert capture.join(10)
    assert not capture.running
    assert [round((f.image.mean() - 20) / 10) for f in got] == [0, 1, 2]
    stats = capture.stats()
    assert stats.frames == 3 and stats.skipped == 1 and stats.read_failures == 0 and stats.dropped == 0
    capture.stop()


def test_folder_of_only_corrupt_files_is_an_error_when_looping(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"nope")
    source = ImageFolderSource(tmp_path, loop=True)
    source.open()
    with pytest.raises(SourceError, match="no file could be decoded"):
        source.read()


def test_empty_or_missing_folder_and_bad_uri_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="has no image files"):
        ImageFolderSource(tmp_path).open()
    with pytest.raises(SourceError, match="does not exist"):
        ImageFolderSource(tmp_path / "missing").open()
    with pytest.raises(SourceError, match="not 'demo'"):
        open_source(SourceConfig(uri=str(tmp_path / "nothing.mp4")))
    with pytest.raises(SourceError, match="argus:N"):
        open_source(SourceConfig(uri="argus:front"))


def test_demo_source_shows_a_moving_face_with_alternating_expressions():
    config = SourceConfig(uri="demo", fps=10)
    source = open_source(config)
    assert isinstance(source, DemoSource)
    source.realtime = False
    source.open()
    frames = [source.read() for _ in range(45)]
    source.close()
    assert all(f.image.shape == (480, 640, 3) and f.image.dtype == np.uint8 for f in frames)
    assert not np.array_equal(frames[0].image, frames[5].image)  # it moves
    photos = load_demo_photos()
    assert np.array_equal(frames[30].image, render_demo_frame(photos, 3.0, 640, 480))
    # 0-2 s neutral, 2-4 s smiling: the rendered frame at t=3 comes from the second photo
    assert np.array_equal(render_demo_frame(photos, 3.0, 640, 480), render_demo_frame(photos[1:] * 2, 3.0, 640, 480))


def test_argus_pipeline_string():
    text = argus_pipeline(1, 1280, 720, 29.97)
    assert text.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM), width=(int)1280, height=(int)720")
    assert "framerate=(fraction)2997/100" in text
    assert "nvvidconv ! video/x-raw, format=(string)BGRx" in text
    assert text.endswith("appsink drop=true max-buffers=1 sync=false")
    assert "framerate=(fraction)30/1" in argus_pipeline(0, 640, 480, 30)
    with pytest.raises(ValueError):
        argus_pipeline(0, 0, 480, 30)


def test_argus_without_jetson_fails_clearly():
    config = SourceConfig(uri="argus:0")
    if opencv_has_gstreamer():  # GStreamer OpenCV but no Jetson: nvarguscamerasrc is missing, open fails
        with pytest.raises(SourceError, match="cannot open Jetson CSI camera 0"):
            open_source(config).open()
    else:
        with pytest.raises(SourceError, match="no GStreamer"):
            open_source(config)


def test_picamera2_without_libcamera_fails_clearly():
    try:
        import picamera2  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("picamera2 is installed here: this test covers boxes without it")
    source = open_source(SourceConfig(uri="picamera2:0"))
    assert isinstance(source, Picamera2Source)
    with pytest.raises(SourceError, match="picamera2 is not importable"):
        source.open()


def test_missing_v4l2_device_fails_at_open():
    with pytest.raises(SourceError, match="cannot open V4L2 camera /dev/video99"):
        open_source(SourceConfig(uri="v4l2:/dev/video99")).open()


def test_stream_password_is_redacted():
    assert _redact("rtsp://admin:secret@10.0.0.2:554/s") == "rtsp://admin:***@10.0.0.2:554/s"
    assert open_source(SourceConfig(uri="rtsp://u:pw@127.0.0.1:1/x")).description == "stream rtsp://u:***@127.0.0.1:1/x"
