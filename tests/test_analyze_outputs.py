"""`affect-sensor analyze --csv/--annotate/--plot` on real media written from the built-in demo face, through the
built-in bundle on onnxruntime: the OpenFace-style table read back with pandas, annotated photos, folders and
videos checked pixel by pixel, the plot, the progress bar, and the refusals (inputs are never overwritten)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.analysis.annotate import draw_faces
from edge.analysis.demo_media import demo_frames, write_still, write_video
from edge.analysis.progress import Progress
from edge.analysis.table import OPENFACE_LEADING, TableSpec
from edge.capture.demo import load_demo_photos
from edge.labels import LabelSpace
from edge.publish.payloads import face_result

pd = pytest.importorskip("pandas", reason="pandas is in the dev extra")
pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]
FPS = 15.0
BLANK, ONE, TWO = 4, 30, 10  # video frames with no face, with the moving demo face, with two faces side by side
GREY = 190


def sensor(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def two_faces() -> np.ndarray:
    frame = np.full((480, 640, 3), GREY, np.uint8)
    for i, photo in enumerate(load_demo_photos()):
        frame[90:390, 10 + 320 * i : 310 + 320 * i] = cv2.resize(photo, (300, 300))
    return frame


@dataclass(frozen=True)
class Media:
    video: Path
    photo: Path  # PNG: lossless, so untouched pixels must come back identical
    folder: Path  # two photos and one broken file with an image suffix
    hashes: dict[Path, str]


@dataclass(frozen=True)
class Run:
    result: subprocess.CompletedProcess
    records: dict[str, list[dict]]  # file -> JSON result records, in order
    csv: Path
    annotate: Path
    plot: Path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Media:
    root = tmp_path_factory.mktemp("media")
    frames = [np.full((480, 640, 3), GREY, np.uint8)] * BLANK + list(demo_frames(ONE / FPS, FPS)) + [two_faces()] * TWO
    assert write_video(root / "clip.mp4", frames, FPS) == BLANK + ONE + TWO
    write_still(root / "smile.png")
    folder = root / "session"
    folder.mkdir()
    write_still(folder / "a.png", t=0.5)
    cv2.imwrite(str(folder / "b.jpg"), two_faces())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image")
    inputs = [root / "clip.mp4", root / "smile.png", *sorted(folder.iterdir())]
    return Media(root / "clip.mp4", root / "smile.png", folder, {p: sha(p) for p in inputs})


@pytest.fixture(scope="module")
def run(media, tmp_path_factory) -> Run:
    out = tmp_path_factory.mktemp("out")
    csv, annotate, plot = out / "faces.csv", out / "annotated", out / "plot.png"
    # The detector on every frame, so the face count of each frame is known in advance.
    result = sensor("analyze", str(media.video), str(media.photo), str(media.folder), "--set",
                    "detection.every_k_frames=1", "--json", "--csv", str(csv), "--annotate", str(annotate),
                    "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    records: dict[str, list[dict]] = {}
    for line in result.stdout.splitlines():
        record = json.loads(line)
        records.setdefault(record["file"], []).append(record)
    return Run(result, records, csv, annotate, plot)


def documented_header() -> list[str]:
    text = (REPO / "docs" / "analyze.md").read_text()
    (line,) = re.findall(r"^frame,face_id,.*$", text, flags=re.MULTILINE)
    return line.split(",")


# ---------------------------------------------------------------- the CSV


def test_csv_has_a_row_per_face_per_frame_and_a_success_0_row_per_empty_frame(run, media):
    df = pd.read_csv(run.csv)
    assert list(df.columns) == documented_header()
    video = df[df["input"] == str(media.video)]
    reported = [len(r["faces"]) for r in run.records[str(media.video)]]  # the pipeline's faces, frame by frame
    truth = [0] * BLANK + [1] * ONE + [2] * TWO  # what the video shows
    assert len(reported) == len(truth)
    assert len(video) == sum(n if n else 1 for n in reported)  # frames x faces, plus one row per empty frame
    per_frame = video.groupby("frame")
    assert list(per_frame.size()) == [n if n else 1 for n in reported]
    assert list(per_frame["success"].sum()) == reported
    assert list(per_frame["face_id"].nunique()) == reported
    assert list(per_frame.size().index) == list(range(1, len(truth) + 1))
    # The detector sees what is there: nothing on the blank frames, never too many, and (a sweep may take a
    # frame to reach a new face) the right count on nearly every frame.
    assert reported[:BLANK] == [0] * BLANK
    assert all(n <= t for n, t in zip(reported, truth, strict=True))
    assert sum(n == t for n, t in zip(reported[BLANK:], truth[BLANK:], strict=True)) >= 0.85 * (ONE + TWO)
    assert np.allclose(video["timestamp"], ((video["frame"] - 1) / FPS).round(3))

    # Photos: one frame at 0 s each; the folder's broken file has no row, its photos do.
    for photo in (media.photo, media.folder / "a.png", media.folder / "b.jpg"):
        rows = df[df["input"] == str(photo)]
        assert len(rows) >= 1 and (rows["frame"] == 1).all() and (rows["timestamp"] == 0).all()
    assert len(df[df["input"] == str(media.folder / "b.jpg")]) == 2
    assert not df["input"].str.contains("broken|notes").any()


def test_csv_values_are_the_pipelines_and_empty_where_nothing_was_measured(run, media):
    df = pd.read_csv(run.csv)
    header = list(df.columns)
    assert tuple(header[:5]) == OPENFACE_LEADING
    presence = [c for c in header if c.endswith("_c")]
    assert presence and all(re.fullmatch(r"AU\d\d_c", c) for c in presence)
    # OpenFace columns we do not measure are absent, not filled in (docs/analyze.md says why).
    assert not {"AU01_r", "AU12_r", "AU45_c", "AU28_c", "gaze_0_x", "gaze_angle_x", "pose_Rx", "x_0", "X_0",
                "p_scale"} & set(header)

    empty = df[df["success"] == 0]
    assert len(empty) >= BLANK
    measured = [c for c in header if c not in ("frame", "timestamp", "success", "input")]
    assert empty[measured].isna().all().all()

    video = df[(df["input"] == str(media.video)) & (df["success"] == 1)]
    records = {r["frame_id"] + 1: r for r in run.records[str(media.video)]}
    for _, row in video.iterrows():
        (face,) = [f for f in records[row["frame"]]["faces"] if f["track_id"] == row["face_id"]]
        for key, prob in face["aus"].items():
            column = f"AU{int(key[2:]):02d}"
            assert row[column] == pytest.approx(prob, abs=1e-4)
            assert row[f"{column}_c"] == (key in face["active_aus"])
        for name, prob in face["expressions"].items():
            assert row[name] == pytest.approx(prob, abs=1e-4)
        assert row["top_expression"] == face["top_expression"]
        assert row["confidence"] == pytest.approx(face["score"], abs=1e-4)
        assert row["FaceRectWidth"] == pytest.approx(face["box"]["w"], abs=0.05)
    expressions = header[header.index("AU26") + 1 : header.index("top_expression")]
    assert np.allclose(video[expressions].sum(axis=1), 1, atol=2e-3)


def test_pyfeat_reads_the_csv_as_openface_output(run):
    io_module = pytest.importorskip("feat.utils.io", reason="py-feat (with torch, xgboost, ...) is not installed")
    fex = io_module.read_openface(str(run.csv))
    df = pd.read_csv(run.csv)
    assert len(fex) == len(df)
    assert (fex["AU12_c"].fillna(-1) == df["AU12_c"].fillna(-1)).all()


def test_table_spec_follows_the_label_space():
    labels = LabelSpace(aus=(1, 12, 24), expressions=("neutral", "happiness"))
    spec = TableSpec(labels)
    assert spec.columns[:8] == ["frame", "face_id", "timestamp", "confidence", "success", "AU01_c", "AU12_c", "AU24_c"]
    from edge.analysis.observation import FrameObservation

    face = face_result(7, (1, 2, 30, 40), 0.9, labels, [0.1, 0.8, 0.3], [False, True, False], [0.25, 0.75])
    (row,) = spec.rows(FrameObservation("x.mp4", 3, 0.2, (face,)))
    cells = dict(zip(spec.columns, row, strict=True))
    assert cells["face_id"] == "7" and cells["AU12_c"] == "1" and cells["AU01_c"] == "0" and cells["AU12"] == "0.8000"
    assert cells["top_expression"] == "happiness" and cells["timestamp"] == "0.200"
    (row,) = spec.rows(FrameObservation("x.mp4", 4, 0.267, ()))
    cells = dict(zip(spec.columns, row, strict=True))
    assert cells["success"] == "0" and cells["frame"] == "4" and cells["input"] == "x.mp4"
    assert all(v == "" for k, v in cells.items() if k not in ("frame", "timestamp", "success", "input"))


# ---------------------------------------------------------------- annotated media


def changed(a: np.ndarray, b: np.ndarray, threshold: int) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2) > threshold


def outline(shape: tuple[int, ...], box: dict) -> np.ndarray:
    """The pixels on the reported box's edges (corners included)."""
    mask = np.zeros(shape[:2], bool)
    x1, y1 = round(box["x"]), round(box["y"])
    x2, y2 = round(box["x"] + box["w"]), round(box["y"] + box["h"])
    mask[y1 : y2 + 1, x1 : x2 + 1] = True
    mask[y1 + 1 : y2, x1 + 1 : x2] = False
    return mask


def test_annotated_photo_changes_pixels_in_the_box_only_near_the_drawing(run, media):
    out = run.annotate / "smile_annotated.png"
    before, after = cv2.imread(str(media.photo)), cv2.imread(str(out))
    assert after.shape == before.shape
    (record,) = run.records[str(media.photo)]
    (face,) = record["faces"]
    diff = changed(before, after, 0)
    ring = outline(before.shape, face["box"])
    assert diff[ring].mean() > 0.95  # the box outline is drawn on the face's reported box
    left = round(face["box"]["x"]) - 10
    assert left > 50 and not diff[:, :left].any()  # lossless: nothing left of the drawing changed
    assert sha(media.photo) == media.hashes[media.photo]


def test_annotated_folder_mirrors_its_photos_and_skips_the_broken_one(run, media):
    folder_out = run.annotate / media.folder.name
    assert sorted(p.name for p in folder_out.iterdir()) == ["a_annotated.png", "b_annotated.jpg"]
    b_in, b_out = cv2.imread(str(media.folder / "b.jpg")), cv2.imread(str(folder_out / "b_annotated.jpg"))
    assert b_out.shape == b_in.shape
    (record,) = run.records[str(media.folder / "b.jpg")]
    assert len(record["faces"]) == 2
    for face in record["faces"]:
        assert changed(b_in, b_out, 40)[outline(b_in.shape, face["box"])].mean() > 0.5  # JPEG: lossy both ways
    assert f"skipped {media.folder / 'broken.jpg'}: not a readable image" in run.result.stderr
    for path, digest in media.hashes.items():
        assert sha(path) == digest, f"{path} was modified"


def test_annotated_video_keeps_frames_rate_and_size_and_draws_on_faces(run, media):
    out = run.annotate / "clip_annotated.mp4"
    src, ann = cv2.VideoCapture(str(media.video)), cv2.VideoCapture(str(out))
    try:
        assert ann.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
        assert (ann.get(cv2.CAP_PROP_FRAME_WIDTH), ann.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (640, 480)
        records = run.records[str(media.video)]
        count = 0
        while True:
            ok_a, a = src.read()
            ok_b, b = ann.read()
            assert ok_a == ok_b, f"frame {count}: the annotated video has a different frame count"
            if not ok_a:
                break
            faces = records[count]["faces"]
            if not faces:  # nothing to draw: only the codec's noise differs
                assert changed(a, b, 40).mean() < 0.001, f"frame {count}"
            for face in faces:
                assert changed(a, b, 40)[outline(a.shape, face["box"])].mean() > 0.5, f"frame {count}"
            count += 1
        assert count == BLANK + ONE + TWO
    finally:
        src.release()
        ann.release()
    assert f"wrote {out} ({count} frames, 15 fps)" in run.result.stderr


def test_draw_faces_returns_a_copy():
    labels = LabelSpace()
    image = np.full((240, 320, 3), 100, np.uint8)
    face = face_result(1, (100, 60, 80, 80), 0.9, labels, np.full(17, 0.7), np.ones(17, bool),
                       [0.1, 0.4, 0.1, 0.1, 0.1, 0.1, 0.1])
    drawn = draw_faces(image, [face])
    assert (image == 100).all()
    assert changed(image, drawn, 0)[outline(image.shape, {"x": 100, "y": 60, "w": 80, "h": 80})].all()


# ---------------------------------------------------------------- the plot


def test_plot_has_one_row_per_track(run, media):
    image = cv2.imread(str(run.plot))
    assert image is not None
    tracks = {(str(media.video), f["track_id"]) for r in run.records[str(media.video)] for f in r["faces"]}
    photo_tracks = {f["track_id"] for file, recs in run.records.items() if file != str(media.video)
                    for r in recs for f in r["faces"]}
    rows = min(6, len(tracks) + len(photo_tracks))
    assert image.shape[0] == round((2.4 * rows + 0.6) * 80)  # plot.py: 2.4 inches a row, 80 dpi
    assert f"wrote {run.plot} ({len(tracks) + len(photo_tracks)} track" in run.result.stderr


BLOCK_MATPLOTLIB = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
sys.meta_path.insert(0, Block())
from edge.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_plot_without_matplotlib_fails_first_with_the_install_hint(media, tmp_path):
    csv = tmp_path / "faces.csv"
    result = subprocess.run([sys.executable, "-c", BLOCK_MATPLOTLIB, "analyze", str(media.photo), "--csv", str(csv),
                             "--plot", str(tmp_path / "p.png")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--plot needs matplotlib" in result.stderr and "pip install matplotlib" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- progress


def test_progress_bar_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = Progress(10, stream=stream, min_interval_s=0)
        for _ in range(10):
            bar.advance()
        bar.close()
    assert pipe.getvalue() == ""
    text = tty.getvalue()
    assert "10/10 frames" in text and "fps" in text and "ETA 0:00" in text and "[" + "#" * 24 + "]" in text
    assert text.endswith("\r")  # erased: the next output starts on a clean line


def test_analyze_shows_progress_on_a_terminal_stderr_and_not_in_a_pipe(run, media, tmp_path):
    assert "\r" not in run.result.stderr and "ETA" not in run.result.stderr
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO once the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "edge", "analyze", str(media.video), "--csv",
                               str(tmp_path / "f.csv")], stdout=subprocess.PIPE, stderr=slave, timeout=300)
    finally:
        os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    text = b"".join(chunks).decode()
    assert proc.returncode == 0, text
    assert f"/{BLANK + ONE + TWO} frames" in text and "fps" in text and "ETA" in text


# ---------------------------------------------------------------- refusals and atomicity


def test_outputs_never_replace_an_input(media, tmp_path):
    result = sensor("analyze", str(media.photo), "--csv", str(media.photo))
    assert result.returncode == 2 and f"--csv {media.photo} is the input" in result.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "smile.png").write_bytes(media.photo.read_bytes())
    result = sensor("analyze", str(media.photo), str(other / "smile.png"), "--annotate", str(tmp_path / "ann"))
    assert result.returncode == 2 and "would both be written to" in result.stderr
    assert sha(media.photo) == media.hashes[media.photo]


def test_a_failed_run_leaves_no_partial_csv(media, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    out.mkdir()
    result = sensor("analyze", str(media.photo), str(broken), "--csv", str(out / "faces.csv"), "--annotate",
                    str(out / "ann"))
    assert result.returncode == 2 and f"{broken}: not a readable image" in result.stderr
    assert sorted(p.name for p in out.rglob("*")) == ["ann", "smile_annotated.png"]  # no CSV, no temp file


def test_empty_folder_and_missing_path_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    result = sensor("analyze", str(tmp_path / "empty"))
    assert result.returncode == 2 and f"{tmp_path / 'empty'}: folder has no image files" in result.stderr
    result = sensor("analyze", str(tmp_path / "nope.mp4"))
    assert result.returncode == 2 and f"{tmp_path / 'nope.mp4'}: no such file or folder" in result.stderr


def test_face_crops_are_found_and_reported_in_the_photos_own_pixels(tmp_path):
    """A FER2013-style 48 px tight crop of a real face: found with --face-crops, its box mapped back into the
    photo (not into the bordered, upscaled frame the pipeline ran on)."""
    from edge.detection import BlazeFaceDetector

    photo = load_demo_photos()[1]
    (face,) = BlazeFaceDetector().detect(photo)
    x1, y1, x2, y2 = face.box.astype(int)
    tight = cv2.resize(cv2.cvtColor(photo[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY), (48, 48), interpolation=cv2.INTER_AREA)
    path = tmp_path / "tight.png"
    cv2.imwrite(str(path), tight)
    framed = sensor("analyze", "--json", "--face-crops", str(path))
    assert framed.returncode == 0, framed.stderr
    (found,) = json.loads(framed.stdout)["faces"]
    box = found["box"]
    assert -12 < box["x"] < 12 and -12 < box["y"] < 12 and 30 < box["w"] < 70  # the face fills the photo
