"""Loaders for the licensed datasets' on-disk formats (BP4D, DISFA, RAF-DB, AffectNet, DFEW).

Loaders parse labels into light records; `load_face` / `load_clip` read pixels on
demand (BP4D alone has ~150k frames). Faces are aligned with edge.alignment from
five points: the dataset's own landmarks where it ships them (RAF-DB manual
points, AffectNet's 68 points), else a caller-supplied `aligner`; DFEW clips and
RAF-DB's aligned images are already face crops and are only resized.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.alignment import align_face, template_for
from edge.labels import DATASET_AUS, DEFAULT_LABELS
from quantize.data.types import NUM_AUS, UNLABELLED, ClipSample, DataError, FaceSample, au_column, expression_index

Aligner = Callable[[np.ndarray], "np.ndarray | None"]  # RGB image -> five points (5, 2) or None (no face)


@dataclass(frozen=True, eq=False)
class FrameRecord:
    """One labelled frame, not yet read. `source` is an image path or (video path, 0-based frame index)."""

    source: Path | tuple[Path, int]
    au: np.ndarray
    au_mask: np.ndarray
    expression: int
    person: str
    dataset: str
    points: np.ndarray | None = None  # five points when the dataset provides landmarks
    precropped: bool = False  # already a face crop: resize only


@dataclass(frozen=True, eq=False)
class ClipRecord:
    frames: tuple[Path, ...]
    expression: int
    person: str
    dataset: str


def _parse_au_header(name: str, path: Path) -> int:
    m = re.fullmatch(r"(?:AU)?\s*(\d+)", name.strip(), flags=re.IGNORECASE)
    if not m:
        raise DataError(f"{path}: unknown AU column {name!r} (expected a number or 'AU<number>')")
    number = int(m.group(1))
    if not 1 <= number <= 99:  # FACS codes are 1..99; ones outside DEFAULT_LABELS are ignored by the caller
        raise DataError(f"{path}: unknown AU column {name!r}")
    return number


def _read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_video_frame(path: Path, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise DataError(f"cannot open video {path}")
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok:
        raise DataError(f"{path}: cannot read frame {index}")
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def video_frame_count(path: Path) -> int:
    """Frames actually decodable (container frame counts can lie)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(f"cannot open video {path}")
    n = 0
    try:
        while cap.grab():
            n += 1
    finally:
        cap.release()
    return n


def load_face(record: FrameRecord, crop_size: int = 112, aligner: Aligner | None = None) -> FaceSample:
    """Read and align one record into a FaceSample."""
    src = record.source
    image = _read_video_frame(*src) if isinstance(src, tuple) else _read_image(src)
    if record.precropped:
        crop = cv2.resize(image, (crop_size, crop_size), interpolation=cv2.INTER_AREA)
    else:
        points = record.points
        if points is None:
            if aligner is None:
                raise DataError(f"{src}: the dataset ships no landmarks; pass an aligner (image -> five points)")
            points = aligner(image)
            if points is None:
                raise DataError(f"{src}: the aligner found no face")
        crop = align_face(image, points, template_for(crop_size), crop_size)
    return FaceSample(crop, record.au, record.au_mask, record.expression, record.person, record.dataset)


def load_clip(record: ClipRecord, crop_size: int = 112, frames: int = 16) -> ClipSample:
    """Sample `frames` frames uniformly over the clip (DFEW-style pre-cropped faces), resized to the crop."""
    idx = np.linspace(0, len(record.frames) - 1, frames).round().astype(int)
    imgs = np.stack(
        [cv2.resize(_read_image(record.frames[i]), (crop_size, crop_size), interpolation=cv2.INTER_AREA) for i in idx]
    )
    return ClipSample(
        imgs,
        np.zeros((frames, NUM_AUS), np.float32),
        np.zeros(NUM_AUS, bool),
        record.expression,
        record.person,
        record.dataset,
    )


# --- BP4D ------------------------------------------------------------------------------------------------------------


def _image_index(folder: Path) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for p in folder.iterdir():
        if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.stem.isdigit():
            out[int(p.stem)] = p
    return out


def load_bp4d(root: Path | str, aus_dir: str = "AUCoding", frames_dir: str = "Sequences") -> list[FrameRecord]:
    """BP4D(+) occurrence CSVs `AUCoding/<subject>_<task>.csv` (header: frame, then AU numbers; 0/1, 9 = not coded)
    with frames `Sequences/<subject>/<task>/<frame>.jpg`. Only the dataset's 12 coded AUs are masked on."""
    root = Path(root)
    label_dir = root / aus_dir
    if not label_dir.is_dir():
        raise DataError(f"BP4D label directory {label_dir} does not exist")
    files = sorted(label_dir.glob("*.csv"))
    if not files:
        raise DataError(f"no BP4D label files (*.csv) in {label_dir}")
    coded = DATASET_AUS["bp4d"]
    records: list[FrameRecord] = []
    for path in files:
        subject, _, task = path.stem.partition("_")
        if not task:
            raise DataError(f"{path}: BP4D label files are named <subject>_<task>.csv")
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
        if len(rows) < 2:
            raise DataError(f"{path}: no label rows")
        header = [_parse_au_header(h, path) for h in rows[0][1:]]
        missing = [n for n in coded if n not in header]
        if missing:
            raise DataError(f"{path}: AU columns {missing} missing")
        cols = {n: header.index(n) + 1 for n in coded}
        frame_dir = root / frames_dir / subject / task
        if not frame_dir.is_dir():
            raise DataError(f"{path}: frame folder {frame_dir} does not exist")
        images = _image_index(frame_dir)
        labelled = []
        for line, row in enumerate(rows[1:], start=2):
            if len(row) != len(rows[0]):
                raise DataError(f"{path}:{line}: {len(row)} fields, header has {len(rows[0])}")
            labelled.append((line, row))
        if len(labelled) != len(images):
            raise DataError(f"{path}: {len(labelled)} labelled frames but {len(images)} images in {frame_dir}")
        for line, row in labelled:
            try:
                frame = int(row[0])
                values = {n: int(float(row[c])) for n, c in cols.items()}
            except ValueError:
                raise DataError(f"{path}:{line}: non-numeric value in {row}") from None
            if frame not in images:
                raise DataError(f"{path}:{line}: frame {frame} has no image in {frame_dir}")
            au = np.zeros(NUM_AUS, np.float32)
            mask = np.zeros(NUM_AUS, bool)
            for n, v in values.items():
                if v not in (0, 1, 9):
                    raise DataError(f"{path}:{line}: AU{n} value {v} (expected 0, 1 or 9)")
                if v != 9:
                    au[au_column(n)] = v
                    mask[au_column(n)] = True
            records.append(FrameRecord(images[frame], au, mask, UNLABELLED, subject, "bp4d"))
    return records


# --- DISFA -----------------------------------------------------------------------------------------------------------

DISFA_OCCURRENCE = 2  # intensity 0..5; the common occurrence criterion is >= 2


def load_disfa(
    root: Path | str,
    labels_dir: str = "ActionUnit_Labels",
    video_dir: str = "Videos_LeftCamera",
    video_pattern: str = "LeftVideo{subject}_comp.avi",
) -> list[FrameRecord]:
    """DISFA per-AU intensity files `ActionUnit_Labels/<SN>/<SN>_au<N>.txt` ('frame,intensity', 1-based frames)
    with one video per subject; occurrence = intensity >= 2."""
    root = Path(root)
    label_root = root / labels_dir
    if not label_root.is_dir():
        raise DataError(f"DISFA label directory {label_root} does not exist")
    subjects = sorted(p.name for p in label_root.iterdir() if p.is_dir())
    if not subjects:
        raise DataError(f"no DISFA subject folders in {label_root}")
    coded = DATASET_AUS["disfa"]
    records: list[FrameRecord] = []
    for subject in subjects:
        per_au: dict[int, np.ndarray] = {}
        for path in sorted((label_root / subject).glob("*.txt")):
            m = re.fullmatch(rf"{re.escape(subject)}_au(.+)", path.stem, flags=re.IGNORECASE)
            if not m:
                raise DataError(f"{path}: DISFA label files are named {subject}_au<N>.txt")
            number = _parse_au_header(m.group(1), path)
            per_au[number] = _read_disfa_file(path)
        missing = [n for n in coded if n not in per_au]
        if missing:
            raise DataError(f"{label_root / subject}: missing label file(s) for AU{missing}")
        lengths = {n: len(v) for n, v in per_au.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(f"{label_root / subject}: label files disagree on the frame count: {lengths}")
        count = next(iter(lengths.values()))
        video = root / video_dir / video_pattern.format(subject=subject)
        if not video.is_file():
            raise DataError(f"{subject}: video {video} does not exist")
        frames = video_frame_count(video)
        if frames != count:
            raise DataError(f"{subject}: {count} labelled frames but the video {video} has {frames}")
        mask = DEFAULT_LABELS.au_mask(coded)
        for i in range(count):
            au = np.zeros(NUM_AUS, np.float32)
            for n in coded:
                au[au_column(n)] = float(per_au[n][i] >= DISFA_OCCURRENCE)
            records.append(FrameRecord((video, i), au, mask.copy(), UNLABELLED, subject, "disfa"))
    return records


def _read_disfa_file(path: Path) -> np.ndarray:
    values = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            frame, intensity = (int(v) for v in line.split(","))
        except ValueError:
            raise DataError(f"{path}:{line_no}: expected 'frame,intensity', got {line!r}") from None
        if frame != len(values) + 1:
            raise DataError(f"{path}:{line_no}: frame {frame} out of order (expected {len(values) + 1})")
        if not 0 <= intensity <= 5:
            raise DataError(f"{path}:{line_no}: intensity {intensity} outside 0..5")
        values.append(intensity)
    if not values:
        raise DataError(f"{path}: empty label file")
    return np.array(values)


# --- RAF-DB (basic) --------------------------------------------------------------------------------------------------

RAF_CLASSES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")  # labels 1..7


def load_rafdb(root: Path | str, split: str = "train", use_aligned: bool = False) -> list[FrameRecord]:
    """RAF-DB basic: `EmoLabel/list_patition_label.txt` ('train_00001.jpg 5'), images in `Image/original/`
    aligned with the five manual landmarks of `Annotation/manual/<stem>_manu_attri.txt`, or the dataset's own
    100x100 crops `Image/aligned/<stem>_aligned.jpg` with use_aligned. RAF-DB has no subject ids."""
    root = Path(root)
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    if not label_file.is_file():
        raise DataError(f"RAF-DB label file {label_file} does not exist")
    if split not in ("train", "test"):
        raise DataError(f"RAF-DB split must be 'train' or 'test', got {split!r}")
    records = []
    for line_no, line in enumerate(label_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or not 1 <= int(parts[1]) <= 7:
            raise DataError(f"{label_file}:{line_no}: expected '<image> <label 1..7>', got {line!r}")
        name, label = parts[0], int(parts[1])
        if not name.startswith(split + "_"):
            continue
        stem = Path(name).stem
        expression = expression_index(RAF_CLASSES[label - 1])
        empty = np.zeros(NUM_AUS, np.float32), np.zeros(NUM_AUS, bool)
        if use_aligned:
            path = root / "Image" / "aligned" / f"{stem}_aligned.jpg"
            points, precropped = None, True
        else:
            path = root / "Image" / "original" / name
            points, precropped = _raf_points(root / "Annotation" / "manual" / f"{stem}_manu_attri.txt"), False
        if not path.is_file():
            raise DataError(f"{label_file}:{line_no}: image {path} does not exist")
        records.append(FrameRecord(path, *empty, expression, stem, "rafdb", points, precropped))
    if not records:
        raise DataError(f"{label_file}: no {split} images listed")
    return records


def _raf_points(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"RAF-DB landmark file {path} does not exist")
    lines = path.read_text().splitlines()
    try:
        return np.float32([[float(v) for v in lines[i].split()[:2]] for i in range(5)])
    except (IndexError, ValueError):
        raise DataError(f"{path}: the first five lines must be 'x y' landmarks") from None


# --- AffectNet -------------------------------------------------------------------------------------------------------

AFFECTNET_CLASSES = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger")  # 0..6; 7 contempt
AFFECTNET_COLUMNS = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
)


def load_affectnet(
    root: Path | str, csv_name: str = "training.csv", images_dir: str = "Manually_Annotated_Images"
) -> list[FrameRecord]:
    """AffectNet CSV (`training.csv` / `validation.csv`): image path, face box, 68 landmarks as 'x;y;...',
    expression 0..10. Classes outside the basic seven (contempt, none, uncertain, no-face) are skipped."""
    root = Path(root)
    path = root / csv_name
    if not path.is_file():
        raise DataError(f"AffectNet label file {path} does not exist")
    records = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in AFFECTNET_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}")
        for line_no, row in enumerate(reader, start=2):
            try:
                label = int(row["expression"])
                marks = np.float32([float(v) for v in row["facial_landmarks"].split(";") if v.strip()])
            except ValueError:
                raise DataError(f"{path}:{line_no}: non-numeric expression or landmarks") from None
            if not 0 <= label <= 10:
                raise DataError(f"{path}:{line_no}: expression {label} outside 0..10")
            if label >= len(AFFECTNET_CLASSES):
                continue
            if marks.size != 136:
                raise DataError(f"{path}:{line_no}: expected 68 landmarks (136 numbers), got {marks.size}")
            image = root / images_dir / row["subDirectory_filePath"]
            if not image.is_file():
                raise DataError(f"{path}:{line_no}: image {image} does not exist")
            records.append(
                FrameRecord(
                    image,
                    np.zeros(NUM_AUS, np.float32),
                    np.zeros(NUM_AUS, bool),
                    expression_index(AFFECTNET_CLASSES[label]),
                    Path(image).stem,
                    "affectnet",
                    five_from_68(marks.reshape(68, 2)),
                )
            )
    return records


def five_from_68(marks: np.ndarray) -> np.ndarray:
    """Eye centres, nose tip, mouth corners from the iBUG 68-point layout."""
    return np.float32([marks[36:42].mean(0), marks[42:48].mean(0), marks[30], marks[48], marks[54]])


# --- DFEW ------------------------------------------------------------------------------------------------------------

DFEW_CLASSES = ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear")  # labels 1..7


def load_dfew(
    root: Path | str, fold: int = 1, split: str = "train", clip_dir: str = "Clip/clip_224x224"
) -> list[ClipRecord]:
    """DFEW: `EmoLabel_DataSplit/{train,test}(single-labeled)/set_<fold>.csv` (video_name,label 1..7) and frame
    folders `Clip/clip_224x224/<video>/<video>_<k>.jpg` of face crops. The five folds are the dataset's own."""
    root = Path(root)
    if split not in ("train", "test"):
        raise DataError(f"DFEW split must be 'train' or 'test', got {split!r}")
    path = root / "EmoLabel_DataSplit" / f"{split}(single-labeled)" / f"set_{fold}.csv"
    if not path.is_file():
        raise DataError(f"DFEW label file {path} does not exist")
    records = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"video_name", "label"} <= set(reader.fieldnames or []):
            raise DataError(f"{path}: needs columns video_name,label; got {reader.fieldnames}")
        for line_no, row in enumerate(reader, start=2):
            try:
                label = int(row["label"])
                name = f"{int(row['video_name']):05d}"
            except ValueError:
                raise DataError(f"{path}:{line_no}: non-numeric video_name or label in {row}") from None
            if not 1 <= label <= 7:
                raise DataError(f"{path}:{line_no}: label {label} outside 1..7")
            folder = root / clip_dir / name
            frames = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
            if not frames:
                raise DataError(f"{path}:{line_no}: clip folder {folder} has no frames")
            records.append(ClipRecord(tuple(frames), expression_index(DFEW_CLASSES[label - 1]), name, "dfew"))
    return records


# --- folds -----------------------------------------------------------------------------------------------------------


def subject_folds(records: Sequence[FrameRecord] | Sequence[ClipRecord], k: int = 3, seed: int = 0) -> list[list[str]]:
    """Split the subjects (persons) of `records` into `k` disjoint folds, deterministically from `seed`."""
    subjects = sorted({r.person for r in records})
    if k < 2 or k > len(subjects):
        raise DataError(f"cannot make {k} subject folds from {len(subjects)} subjects")
    order = np.random.default_rng(seed).permutation(len(subjects))
    return [sorted(subjects[i] for i in order[f::k]) for f in range(k)]


def select(records, persons: Sequence[str]):
    """Records whose person is in `persons` (for fold-wise train / test lists)."""
    keep = set(persons)
    return [r for r in records if r.person in keep]
