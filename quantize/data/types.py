"""Sample types shared by loaders, generators and the torch wrappers.

A sample is always an aligned crop (edge.alignment.template_for(crop_size)) with
labels over edge.labels.DEFAULT_LABELS, so every source yields the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge.labels import BASIC_EXPRESSIONS, DEFAULT_LABELS

NUM_AUS = len(DEFAULT_LABELS.aus)
UNLABELLED = -1


class DataError(ValueError):
    """Bad dataset input (missing file, malformed row, unknown label); the message names the file."""


def _check_au(au: np.ndarray, au_mask: np.ndarray, lead: tuple[int, ...], where: str) -> None:
    if au.dtype != np.float32 or au.shape != (*lead, NUM_AUS):
        raise DataError(f"{where}: au must be float32 {(*lead, NUM_AUS)}, got {au.dtype} {au.shape}")
    if au_mask.dtype != np.bool_ or au_mask.shape != (NUM_AUS,):
        raise DataError(f"{where}: au_mask must be bool ({NUM_AUS},), got {au_mask.dtype} {au_mask.shape}")
    if au.size and (not np.isfinite(au).all() or au.min() < 0.0 or au.max() > 1.0):
        raise DataError(f"{where}: au values must lie in [0, 1]")


def _check_expression(expression: int, where: str) -> None:
    if not (expression == UNLABELLED or 0 <= expression < len(BASIC_EXPRESSIONS)):
        raise DataError(f"{where}: expression index {expression} outside -1..{len(BASIC_EXPRESSIONS) - 1}")


@dataclass(frozen=True, eq=False)
class FaceSample:
    """One aligned face. `au[a]` is meaningful only where `au_mask[a]`; expression -1 = unlabelled."""

    image: np.ndarray  # uint8 (H, W, 3) RGB, H == W == crop size
    au: np.ndarray  # float32 (A,) in [0, 1], DEFAULT_LABELS.aus order
    au_mask: np.ndarray  # bool (A,)
    expression: int  # index into BASIC_EXPRESSIONS, or -1
    person: str
    dataset: str

    def __post_init__(self) -> None:
        where = f"FaceSample({self.dataset}/{self.person})"
        if self.image.dtype != np.uint8 or self.image.ndim != 3 or self.image.shape[2] != 3:
            raise DataError(f"{where}: image must be uint8 (H, W, 3), got {self.image.dtype} {self.image.shape}")
        _check_au(self.au, self.au_mask, (), where)
        _check_expression(self.expression, where)


@dataclass(frozen=True, eq=False)
class ClipSample:
    """A short aligned clip: per-frame AUs, one clip-level expression (as in DFEW-style data)."""

    frames: np.ndarray  # uint8 (T, H, W, 3) RGB
    au: np.ndarray  # float32 (T, A)
    au_mask: np.ndarray  # bool (A,)
    expression: int
    person: str
    dataset: str

    def __post_init__(self) -> None:
        where = f"ClipSample({self.dataset}/{self.person})"
        if self.frames.dtype != np.uint8 or self.frames.ndim != 4 or self.frames.shape[3] != 3:
            raise DataError(f"{where}: frames must be uint8 (T, H, W, 3), got {self.frames.dtype} {self.frames.shape}")
        _check_au(self.au, self.au_mask, (self.frames.shape[0],), where)
        _check_expression(self.expression, where)


@dataclass(frozen=True, eq=False)
class LabelledImage:
    """One labelled image before detection and alignment; `read()` gives it as BGR uint8 (what a camera gives).

    `votes` are crowd votes over BASIC_EXPRESSIONS (FER+), `expression` the hard label (-1: none); `au` and
    `au_mask` as in FaceSample (None: no AU labels). `tight`: the image is a face crop with no margin (FER2013),
    so a detector needs a border added around it to see a face.
    """

    key: str
    read: Callable[[], np.ndarray] = field(repr=False)
    expression: int = UNLABELLED
    dataset: str = ""
    person: str = ""
    votes: np.ndarray | None = None
    au: np.ndarray | None = None
    au_mask: np.ndarray | None = None
    tight: bool = False


def image_reader(path) -> Callable[[], np.ndarray]:
    """A `LabelledImage.read` for a file: BGR uint8, or a DataError naming the file."""

    def read() -> np.ndarray:
        import cv2

        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f"cannot read image {path}")
        return image

    return read


def expression_index(name: str) -> int:
    """Index of a basic expression name; contempt and unknown names are a DataError."""
    try:
        return BASIC_EXPRESSIONS.index(name)
    except ValueError:
        raise DataError(f"unknown expression {name!r}; known: {list(BASIC_EXPRESSIONS)}") from None


def au_column(number: int) -> int:
    """Column of AU `number` in DEFAULT_LABELS order."""
    try:
        return DEFAULT_LABELS.aus.index(number)
    except ValueError:
        raise DataError(f"AU{number} is not in the label space {list(DEFAULT_LABELS.aus)}") from None
