"""Dataset loaders on tiny fixtures written in each dataset's real on-disk format, plus their error cases."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.labels import BASIC_EXPRESSIONS, DEFAULT_LABELS, dataset_au_mask
from quantize.data.datasets import (
    load_affectnet,
    load_bp4d,
    load_clip,
    load_dfew,
    load_disfa,
    load_face,
    load_rafdb,
    select,
    subject_folds,
)
from quantize.data.london import LondonFaces, five_points
from quantize.data.types import DataError

AUS = DEFAULT_LABELS.aus


@pytest.fixture(scope="module")
def face_photo() -> tuple[np.ndarray, np.ndarray]:
    """A real face (London 001) scaled down, with its five points: stands in for a dataset frame."""
    p = LondonFaces().person("001")
    return cv2.resize(p.neutral, (225, 225), interpolation=cv2.INTER_AREA), five_points(p.points) / 3


def _write_jpg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


# --- BP4D ---

BP4D_HEADER = ["0", *[str(n) for n in range(1, 28)]]  # frame column, then AU1..AU27 as in the release


def _bp4d(root: Path, img: np.ndarray, subjects=("F001", "M002"), frames=(5, 6, 7)) -> None:
    for s in subjects:
        path = root / "AUCoding" / f"{s}_T1.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(BP4D_HEADER)
            for k, f in enumerate(frames):
                row = [9] * 27
                for n in (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24):
                    row[n - 1] = int(n == 12 and k > 0)
                row[3] = 9 if k == 2 else row[3]  # AU4 not coded on the last frame
                w.writerow([f, *row])
        for f in frames:
            _write_jpg(root / "Sequences" / s / "T1" / f"{f:04d}.jpg", img)


def test_bp4d_loads_occurrence_and_masks(tmp_path, face_photo):
    img, five = face_photo
    _bp4d(tmp_path, img)
    recs = load_bp4d(tmp_path)
    assert len(recs) == 6 and {r.person for r in recs} == {"F001", "M002"}
    assert recs[1].au[AUS.index(12)] == 1 and recs[0].au[AUS.index(12)] == 0
    assert (recs[0].au_mask == dataset_au_mask("bp4d")).all()
    assert not recs[2].au_mask[AUS.index(4)]  # 9 = not coded
    s = load_face(recs[0], 64, aligner=lambda image: five)
    assert s.image.shape == (64, 64, 3) and s.dataset == "bp4d"
    with pytest.raises(DataError, match="aligner"):
        load_face(recs[0], 64)


def test_bp4d_errors(tmp_path, face_photo):
    img, _ = face_photo
    with pytest.raises(DataError, match="does not exist"):
        load_bp4d(tmp_path)
    _bp4d(tmp_path, img, subjects=("F001",))
    (tmp_path / "Sequences/F001/T1/0007.jpg").unlink()
    with pytest.raises(DataError, match="3 labelled frames but 2 images"):
        load_bp4d(tmp_path)
    _bp4d(tmp_path, img, subjects=("F001",))
    path = tmp_path / "AUCoding/F001_T1.csv"
    path.write_text(path.read_text().replace(",12,", ",smile,", 1))
    with pytest.raises(DataError, match="unknown AU column 'smile'"):
        load_bp4d(tmp_path)


# --- DISFA ---


def _disfa(root: Path, img: np.ndarray, frames: int = 4, video_frames: int = 4, aus=(1, 2, 4, 6, 9, 12, 25, 26)):
    subject = "SN001"
    for n in aus:
        path = root / "ActionUnit_Labels" / subject / f"{subject}_au{n}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{i + 1},{(i if n == 12 else 0)}\n" for i in range(frames)))
    video = root / "Videos_LeftCamera" / f"LeftVideo{subject}_comp.avi"
    video.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 20, (img.shape[1], img.shape[0]))
    assert writer.isOpened()
    for _ in range(video_frames):
        writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    writer.release()


def test_disfa_intensity_to_occurrence(tmp_path, face_photo):
    img, five = face_photo
    _disfa(tmp_path, img)
    recs = load_disfa(tmp_path)
    assert len(recs) == 4
    assert [r.au[AUS.index(12)] for r in recs] == [0, 0, 1, 1]  # intensity 0,1,2,3: occurrence = >= 2
    assert (recs[0].au_mask == dataset_au_mask("disfa")).all()
    s = load_face(recs[3], 48, aligner=lambda image: five)
    assert s.image.shape == (48, 48, 3) and s.image.std() > 10  # a real decoded frame, not blank


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aus": (1, 2, 4, 6, 9, 12, 25)}, r"missing label file\(s\) for AU\[26\]"),
        ({"video_frames": 3}, "4 labelled frames but the video"),
    ],
)
def test_disfa_errors(tmp_path, face_photo, kwargs, message):
    _disfa(tmp_path, face_photo[0], **kwargs)
    with pytest.raises(DataError, match=message):
        load_disfa(tmp_path)


def test_disfa_frame_count_disagreement(tmp_path, face_photo):
    _disfa(tmp_path, face_photo[0])
    (tmp_path / "ActionUnit_Labels/SN001/SN001_au9.txt").write_text("1,0\n2,0\n")
    with pytest.raises(DataError, match="disagree on the frame count"):
        load_disfa(tmp_path)


# --- RAF-DB ---


def test_rafdb_manual_landmarks_and_aligned(tmp_path, face_photo):
    img, five = face_photo
    (tmp_path / "EmoLabel").mkdir()
    (tmp_path / "EmoLabel/list_patition_label.txt").write_text(
        "train_00001.jpg 4\ntrain_00002.jpg 7\ntest_0001.jpg 1\n"
    )
    for stem in ("train_00001", "train_00002", "test_0001"):
        _write_jpg(tmp_path / "Image/original" / f"{stem}.jpg", img)
        _write_jpg(tmp_path / "Image/aligned" / f"{stem}_aligned.jpg", cv2.resize(img, (100, 100)))
        marks = tmp_path / "Annotation/manual" / f"{stem}_manu_attri.txt"
        marks.parent.mkdir(parents=True, exist_ok=True)
        marks.write_text("".join(f"{x:.2f}\t{y:.2f}\n" for x, y in five) + "female\nwhite\n20-29\n")
    recs = load_rafdb(tmp_path, "train")
    assert [BASIC_EXPRESSIONS[r.expression] for r in recs] == ["happiness", "neutral"]
    assert load_face(recs[0], 64).image.shape == (64, 64, 3)
    assert load_face(load_rafdb(tmp_path, "test", use_aligned=True)[0], 64).image.shape == (64, 64, 3)
    (tmp_path / "EmoLabel/list_patition_label.txt").write_text("train_00001.jpg 9\n")
    with pytest.raises(DataError, match=r"list_patition_label.txt:1"):
        load_rafdb(tmp_path)


# --- AffectNet ---


def test_affectnet_csv(tmp_path, face_photo):
    img, five = face_photo
    _write_jpg(tmp_path / "Manually_Annotated_Images/1/a.jpg", img)
    marks = np.zeros((68, 2), np.float32)
    marks[36:42], marks[42:48], marks[30], marks[48], marks[54] = five[0], five[1], five[2], five[3], five[4]
    lm = ";".join(f"{v:.1f}" for v in marks.ravel())
    cols = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
    rows = [f'1/a.jpg,10,10,200,200,"{lm}",1,0.5,0.2', f'1/a.jpg,10,10,200,200,"{lm}",8,0,0']
    (tmp_path / "training.csv").write_text(cols + "\n" + "\n".join(rows) + "\n")
    recs = load_affectnet(tmp_path)
    assert len(recs) == 1 and BASIC_EXPRESSIONS[recs[0].expression] == "happiness"  # class 8 (none) skipped
    np.testing.assert_allclose(recs[0].points, five, atol=0.1)
    assert load_face(recs[0], 64).image.shape == (64, 64, 3)
    (tmp_path / "training.csv").write_text(cols.replace(",expression", "") + "\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['expression'\]"):
        load_affectnet(tmp_path)


# --- DFEW ---


def test_dfew_clips_and_errors(tmp_path, face_photo):
    img, _ = face_photo
    split = tmp_path / "EmoLabel_DataSplit" / "train(single-labeled)"
    split.mkdir(parents=True)
    (split / "set_1.csv").write_text("video_name,label\n1,1\n2,4\n")
    for v in (1, 2):
        for k in range(1, 6):
            _write_jpg(tmp_path / "Clip/clip_224x224" / f"{v:05d}" / f"{v:05d}_{k:05d}.jpg", img)
    recs = load_dfew(tmp_path, fold=1)
    assert [BASIC_EXPRESSIONS[r.expression] for r in recs] == ["happiness", "anger"]
    clip = load_clip(recs[0], 32, frames=8)
    assert clip.frames.shape == (8, 32, 32, 3) and not clip.au_mask.any()
    (split / "set_1.csv").write_text("video_name,label\n3,2\n")
    with pytest.raises(DataError, match="has no frames"):
        load_dfew(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dfew(tmp_path, fold=2)


def test_subject_folds_are_exclusive(tmp_path, face_photo):
    _bp4d(tmp_path, face_photo[0], subjects=("F001", "F002", "M001", "M002", "M003"), frames=(1,))
    recs = load_bp4d(tmp_path)
    folds = subject_folds(recs, k=3, seed=0)
    assert folds == subject_folds(recs, k=3, seed=0)
    assert sorted(s for fold in folds for s in fold) == ["F001", "F002", "M001", "M002", "M003"]
    test = select(recs, folds[0])
    train = select(recs, folds[1] + folds[2])
    assert not {r.person for r in test} & {r.person for r in train}
    with pytest.raises(DataError, match="cannot make 9 subject folds"):
        subject_folds(recs, k=9)
