"""FER2013 and its FER+ relabelling, in the layouts they are distributed in.

- Kaggle folders: `train/<class>/*.jpg`, `test/<class>/PublicTest_*.jpg` and `PrivateTest_*.jpg` (some copies
  use `test/` for PublicTest only, or `val/`); labels are the original FER2013 ones.
- `fer2013.csv`: `emotion,pixels,Usage` with 48x48 grey pixels as text and Usage Training / PublicTest /
  PrivateTest; rows in the original order.
- FER+ (microsoft/FERPlus, MIT labels): ten crowd votes per image. Either the folders its own
  `generate_training_data.py` writes (`FER2013Train|Valid|Test/label.csv` + `ferNNNNNNN.png`), or
  `fer2013new.csv` next to a `fer2013.csv` (same row order).

Splits are named as in FER2013: `train` = Training, `public` = PublicTest (the validation split: checkpoint,
threshold and calibration choices), `private` = PrivateTest (the reported figure, used once).
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.labels import BASIC_EXPRESSIONS
from quantize.data.types import UNLABELLED, DataError, LabelledImage, expression_index, image_reader

SPLITS = ("train", "public", "private")
_USAGE = {"train": "Training", "public": "PublicTest", "private": "PrivateTest"}
_FERPLUS_DIRS = {"train": "FER2013Train", "public": "FER2013Valid", "private": "FER2013Test"}
# FER2013's emotion codes 0..6 and folder names, in our expression names.
FER_CODES = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
FER_FOLDERS = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness", "sad": "sadness",
               "surprise": "surprise", "neutral": "neutral"}
# FER+ vote columns, in order.
FERPLUS_VOTES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown",
                 "NF")
_VOTE_COLUMNS = np.array([BASIC_EXPRESSIONS.index(n) if n in BASIC_EXPRESSIONS else -1 for n in FERPLUS_VOTES])


def _split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"FER2013 split must be one of {SPLITS}, got {split!r}")
    return split


def _pixel_reader(pixels: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)


def read_original(root: Path, key: str) -> np.ndarray:
    """A face cache row's original FER2013 image (grey), by the cache key: the relative path under `root`.

    Teachers that read whole images (MediaPipe, the peer) start from these rather than from the aligned crops.
    """
    path = root / str(key)
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DataError(f"{path}: cannot read (is --fer2013 the folder the cache came from?)")
    return image


def load_fer2013_folders(root: Path | str, split: str) -> list[LabelledImage]:
    """Kaggle layout. PublicTest / PrivateTest are told apart by the file-name prefix, wherever they sit."""
    root, split = Path(root), _split(split)
    if not root.is_dir():
        raise DataError(f"FER2013 folder {root} does not exist")
    if split == "train":
        folders, prefix = [root / "train"], ""
    else:
        folders, prefix = [root / "test", root / "val", root / "validation"], _USAGE[split] + "_"
    items = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            name = FER_FOLDERS.get(class_dir.name.lower())
            if name is None:
                raise DataError(f"{class_dir}: unknown FER2013 class folder (expected one of {sorted(FER_FOLDERS)})")
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() in (".jpg", ".jpeg", ".png") and path.name.startswith(prefix):
                    items.append(LabelledImage(str(path.relative_to(root)), image_reader(path),
                                               expression_index(name), "fer2013", tight=True))
    if not items:
        raise DataError(f"{root}: no FER2013 {split} images (expected train/<class>/*.jpg or "
                        f"test/<class>/{_USAGE[split]}_*.jpg)")
    return items


def read_fer2013_csv(path: Path | str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels N, pixels N x 48 x 48 uint8, usage N) of fer2013.csv, rows in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"fer2013.csv {path} does not exist")
    labels, pixels, usage = [], [], []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"emotion", "pixels", "Usage"} <= set(reader.fieldnames):
            raise DataError(f"{path}: expected columns emotion,pixels,Usage, got {reader.fieldnames}")
        for line_no, row in enumerate(reader, start=2):
            values = np.array(row["pixels"].split(), dtype=np.int64) if row["pixels"] else np.zeros(0, np.int64)
            if values.size != 48 * 48 or values.min() < 0 or values.max() > 255:
                raise DataError(f"{path}:{line_no}: pixels must be 2304 values in 0..255, got {values.size}")
            if not row["emotion"].isdigit() or int(row["emotion"]) > 6:
                raise DataError(f"{path}:{line_no}: emotion must be 0..6, got {row['emotion']!r}")
            if row["Usage"] not in _USAGE.values():
                raise DataError(f"{path}:{line_no}: Usage must be one of {sorted(_USAGE.values())}")
            labels.append(int(row["emotion"]))
            pixels.append(values.astype(np.uint8).reshape(48, 48))
            usage.append(row["Usage"])
    if not labels:
        raise DataError(f"{path}: no rows")
    return np.array(labels), np.stack(pixels), np.array(usage)


def load_fer2013_csv(path: Path | str, split: str) -> list[LabelledImage]:
    labels, pixels, usage = read_fer2013_csv(path)
    rows = np.flatnonzero(usage == _USAGE[_split(split)])
    return [LabelledImage(f"fer2013.csv:{i}", _pixel_reader(pixels[i]), expression_index(FER_CODES[labels[i]]),
                          "fer2013", tight=True) for i in rows]


def ferplus_target(votes10: np.ndarray) -> tuple[np.ndarray, int] | None:
    """FER+ votes (10 columns) -> (votes over BASIC_EXPRESSIONS, majority index or -1); None to drop the image.

    As FER+ itself: an image is dropped when "not a face" or "unknown" gets the most votes; a single stray vote
    is dropped when another class has two or more (annotator noise). Contempt has no class here, so its votes
    leave the distribution. The majority must be unique to give a hard label.
    """
    votes10 = np.asarray(votes10, dtype=np.float64)
    if votes10.sum() <= 0 or votes10[8:].max() >= votes10[:8].max():
        return None
    ours = np.zeros(len(BASIC_EXPRESSIONS))
    for column, target in enumerate(_VOTE_COLUMNS):
        if target >= 0:
            ours[target] = votes10[column]
    if ours.max() >= 2:
        ours[ours == 1] = 0
    if ours.sum() <= 0:
        return None
    top = np.flatnonzero(ours == ours.max())
    return ours.astype(np.float32), int(top[0]) if len(top) == 1 else UNLABELLED


def _vote_row(values: list[str], where: str) -> np.ndarray:
    try:
        votes = np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        raise DataError(f"{where}: votes must be numbers, got {values}") from None
    if votes.shape != (10,) or votes.min() < 0:
        raise DataError(f"{where}: expected 10 non-negative votes ({', '.join(FERPLUS_VOTES)}), got {values}")
    return votes


def _ferplus_item(key: str, read: Callable[[], np.ndarray], votes10: np.ndarray) -> LabelledImage | None:
    target = ferplus_target(votes10)
    if target is None:
        return None
    votes, majority = target
    return LabelledImage(key, read, majority, "ferplus", votes=votes, tight=True)


def _ferplus_rows(root: Path | str, split: str) -> list[tuple[str, Path, np.ndarray]]:
    """(key, image path, 10 raw votes) of every row of a FERPlus split folder's label.csv."""
    folder = Path(root) / _FERPLUS_DIRS[_split(split)]
    label_file = folder / "label.csv"
    if not label_file.is_file():
        raise DataError(f"FER+ label file {label_file} does not exist")
    rows = []
    with label_file.open(newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            if not row:
                continue
            where = f"{label_file}:{line_no}"
            if len(row) != 12:
                raise DataError(f"{where}: expected 'name,(box),10 votes', got {len(row)} fields")
            path = folder / row[0]
            if not path.is_file():
                raise DataError(f"{where}: image {path} does not exist")
            rows.append((f"{folder.name}/{row[0]}", path, _vote_row(row[2:], where)))
    if not rows:
        raise DataError(f"{label_file}: no rows")
    return rows


def load_ferplus_folders(root: Path | str, split: str) -> list[LabelledImage]:
    """FERPlus's generated layout: `<root>/FER2013Train|Valid|Test/label.csv` ("name.png,(box),10 votes")."""
    items = [_ferplus_item(key, image_reader(path), votes) for key, path, votes in _ferplus_rows(root, split)]
    return [item for item in items if item is not None]


@dataclass(frozen=True)
class FerplusMatch:
    """How `attach_ferplus` paired images: matched with votes, matched but dropped by FER+, not found."""

    with_votes: int
    dropped: int
    unmatched: int


def attach_ferplus(images: list[LabelledImage], ferplus_root: Path | str, split: str,
                   max_rmse: float = 6.0) -> tuple[list[LabelledImage], FerplusMatch]:
    """FER+ votes for FER2013 images from the Kaggle folders, matched by pixels (the folders' file names are not
    the CSV row order FER+ is keyed by). Keeps each image's original label; images FER+ calls "not a face" or
    "unknown" are left out; images with no FER+ row within `max_rmse` grey levels keep no votes.

    FER2013 holds exact duplicates, and FER+'s crowd did not always vote alike on them (58 Training images match
    rows that disagree even on whether to drop the face): the votes of equally close rows are pooled, so the
    result does not depend on sort order. JPEG recompression moves pixels by an RMSE of ~1-2; distinct faces
    differ by > 12.
    """
    rows = _ferplus_rows(ferplus_root, split)

    def grey(read: Callable[[], np.ndarray]) -> np.ndarray:
        image = read()
        return (cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image).astype(np.float32)

    theirs = np.stack([grey(image_reader(path)) for _, path, _ in rows])
    ours = np.stack([grey(item.read) for item in images])
    if theirs.shape[1:] != ours.shape[1:]:
        raise DataError(f"FER+ images are {theirs.shape[1:]}, FER2013 images {ours.shape[1:]}: not the same data")

    def coarse(x: np.ndarray) -> np.ndarray:  # 16x16 means, centred and unit length: a cosine pre-filter
        small = x.reshape(len(x), 16, x.shape[1] // 16, 16, x.shape[2] // 16).mean(axis=(2, 4)).reshape(len(x), -1)
        small -= small.mean(axis=1, keepdims=True)
        return small / np.maximum(np.linalg.norm(small, axis=1, keepdims=True), 1e-6)

    a, b = coarse(ours), coarse(theirs)
    out, counts = [], {"with_votes": 0, "dropped": 0, "unmatched": 0}
    for start in range(0, len(images), 2048):
        sims = a[start:start + 2048] @ b.T
        candidates = np.argsort(-sims, axis=1)[:, :4]
        for offset, cands in enumerate(candidates):
            i = start + offset
            rmse = np.sqrt(((theirs[cands] - ours[i]) ** 2).mean(axis=(1, 2)))
            if rmse.min() > max_rmse:
                counts["unmatched"] += 1
                out.append(images[i])
                continue
            tied = cands[rmse <= rmse.min() + 1e-3]  # the same pixels: duplicate rows of one image
            target = ferplus_target(np.sum([rows[int(k)][2] for k in tied], axis=0))
            if target is None:
                counts["dropped"] += 1
                continue
            counts["with_votes"] += 1
            out.append(dataclasses.replace(images[i], votes=target[0]))
    return out, FerplusMatch(**counts)


def load_ferplus_csv(ferplus_csv: Path | str, fer2013_csv: Path | str, split: str) -> list[LabelledImage]:
    """`fer2013new.csv` (Usage, Image name, 10 votes) joined row by row with `fer2013.csv`'s pixels."""
    ferplus_csv = Path(ferplus_csv)
    if not ferplus_csv.is_file():
        raise DataError(f"FER+ file {ferplus_csv} does not exist")
    _, pixels, usage = read_fer2013_csv(fer2013_csv)
    with ferplus_csv.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or rows[0][:2] != ["Usage", "Image name"]:
        raise DataError(f"{ferplus_csv}: expected a header 'Usage,Image name,...'")
    body = rows[1:]
    if len(body) != len(usage):
        raise DataError(f"{ferplus_csv} has {len(body)} rows but {fer2013_csv} has {len(usage)}: not the same order")
    items = []
    for i, row in enumerate(body):
        where = f"{ferplus_csv}:{i + 2}"
        if len(row) != 12:
            raise DataError(f"{where}: expected 12 fields, got {len(row)}")
        if row[0] != usage[i]:
            raise DataError(f"{where}: Usage {row[0]!r} but fer2013.csv row {i} says {usage[i]!r}")
        if row[0] != _USAGE[_split(split)] or not row[1]:
            continue
        item = _ferplus_item(f"{row[1]}", _pixel_reader(pixels[i]), _vote_row(row[2:], where))
        if item is not None:
            items.append(item)
    return items
