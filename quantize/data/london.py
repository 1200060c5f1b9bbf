"""The London face set (../shared/data/london_faces): landmark templates, five points, person split.

Neutral photos carry a 189-point webmorph template (`NNN_03.tem`); smiling photos
(`NNN_08.jpg`) carry none, so they are registered onto the same person's neutral
photo (ORB features + RANSAC similarity on the rigid upper face) and take its
landmarks through that transform.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.labels import BASIC_EXPRESSIONS
from quantize.data.types import NUM_AUS, DataError, LabelledImage, au_column, image_reader

ENV_DIR = "AFFECT_LONDON_DIR"
TEMPLATE_POINTS = 189

# Indices into the 189-point template ("left" = image left, i.e. the subject's right).
# Verified by drawing the indices on 001_03.jpg (see docs/data.md).
PUPIL_L, PUPIL_R = 0, 1
NOSE_TIP_SIDES = (54, 60)  # lowest bridge points, level with the nose tip on both sides
MOUTH_L, MOUTH_R = 87, 93
REGIONS: dict[str, tuple[int, ...]] = {
    "brow_l": (71, 72, 73, 74, 75, 76, 83, 84),  # 71 outer end, 76 inner end
    "brow_r": (77, 78, 79, 80, 81, 82, 85, 86),  # 77 inner end, 82 outer end
    "upper_lid_l": (19, 20, 21),
    "upper_lid_r": (24, 25, 26),
    "lower_lid_l": (28, 29, 30),
    "lower_lid_r": (31, 32, 33),
    "eye_corners": (18, 22, 23, 27),
    "crease_l": (34, 35, 36, 37, 38),
    "crease_r": (39, 40, 41, 42, 43),
    "iris_l": (2, 3, 4, 5, 6, 7, 8, 9),
    "iris_r": (10, 11, 12, 13, 14, 15, 16, 17),
    "under_eye_l": (44, 45, 46),
    "under_eye_r": (47, 48, 49),
    "nose_bridge": (50, 51, 52, 53, 56, 57, 58, 59),
    "nose_base": (54, 55, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 179, 180, 181, 182),
    "mouth_corners": (87, 93),
    "upper_lip_top": (88, 89, 90, 91, 92),
    "upper_lip_bottom": (94, 95, 96, 97, 98),
    "lower_lip_top": (99, 100, 101, 102, 103),
    "lower_lip_bottom": (104, 105, 106, 107, 108),
    "philtrum": (170, 171, 172, 173),
    "nasolabial_l": (158, 159, 160),
    "nasolabial_r": (161, 162, 163),
    "chin": (174, 175, 176, 177, 178, 128, 129, 130),
    "jaw": (125, 126, 127, 131, 132, 133),
    "face_edge": (109, 110, 111, 112, 113, 114),
    "cheek_l": (164, 165, 166),
    "cheek_r": (167, 168, 169),
}
# Points that move little in a smile: used to register the smiling photo.
_RIGID = (0, 1, 18, 22, 23, 27, 50, 51, 52, 53, 54, 56, 57, 58, 59, 60, 71, 76, 77, 82, 109, 112)


def default_dir() -> Path:
    """$AFFECT_LONDON_DIR, else ../shared/data/london_faces next to the repository."""
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data" / "london_faces"


def read_tem(path: Path) -> np.ndarray:
    """Points (N, 2) float32 of a webmorph .tem file: count line, then one 'x<TAB>y' per point."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DataError(f"cannot read landmark template {path}: {exc.strerror}") from None
    try:
        count = int(lines[0].strip())
    except (IndexError, ValueError):
        raise DataError(f"{path}: line 1 must be the point count") from None
    if len(lines) < 1 + count:
        raise DataError(f"{path}: header says {count} points but the file has {len(lines) - 1} more lines")
    points = np.empty((count, 2), dtype=np.float32)
    for i in range(count):
        fields = lines[1 + i].split()
        try:
            points[i] = [float(fields[0]), float(fields[1])]
        except (IndexError, ValueError):
            raise DataError(f"{path}:{i + 2}: expected 'x<TAB>y', got {lines[1 + i]!r}") from None
    if not np.isfinite(points).all():
        raise DataError(f"{path}: non-finite coordinates")
    return points


def five_points(points: np.ndarray) -> np.ndarray:
    """The 5 alignment points (eye centres, nose tip, mouth corners) of a 189-point template, (5, 2)."""
    if points.shape != (TEMPLATE_POINTS, 2):
        raise DataError(f"expected a ({TEMPLATE_POINTS}, 2) template, got {points.shape}")
    nose = points[list(NOSE_TIP_SIDES)].mean(axis=0)
    return np.stack([points[PUPIL_L], points[PUPIL_R], nose, points[MOUTH_L], points[MOUTH_R]]).astype(np.float32)


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def register_to(moving: np.ndarray, fixed: np.ndarray, fixed_points: np.ndarray) -> np.ndarray:
    """2x3 similarity mapping `fixed` image coordinates into `moving` (same person, other photo).

    Features are taken only near the rigid landmarks of `fixed` so a smile's mouth
    and cheeks do not drag the fit.
    """
    orb = cv2.ORB_create(nfeatures=3000, scaleFactor=1.2, nlevels=8, fastThreshold=10)
    grey_f = cv2.cvtColor(fixed, cv2.COLOR_RGB2GRAY)
    grey_m = cv2.cvtColor(moving, cv2.COLOR_RGB2GRAY)
    mask = np.zeros_like(grey_f)
    rigid = fixed_points[list(_RIGID)]
    radius = max(4, int(0.08 * np.linalg.norm(fixed_points[PUPIL_L] - fixed_points[PUPIL_R]) * 2))
    for x, y in rigid:
        cv2.circle(mask, (int(x), int(y)), radius, 255, -1)
    kp_f, des_f = orb.detectAndCompute(grey_f, mask)
    kp_m, des_m = orb.detectAndCompute(grey_m, None)
    if des_f is None or des_m is None or len(kp_f) < 10:
        raise DataError("too few features to register the photos")
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
    matches = matcher.match(des_f, des_m)
    if len(matches) < 10:
        raise DataError(f"only {len(matches)} feature matches between the photos")
    src = np.float32([kp_f[m.queryIdx].pt for m in matches])
    dst = np.float32([kp_m[m.trainIdx].pt for m in matches])
    matrix, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0)
    if matrix is None or int(inliers.sum()) < 10:
        raise DataError("photos could not be registered (RANSAC found no consistent similarity)")
    return matrix.astype(np.float32)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


@dataclass(frozen=True)
class LondonPerson:
    """One person's photos in memory: neutral + template, smiling + registered template."""

    person: str
    neutral: np.ndarray  # uint8 RGB
    points: np.ndarray  # (189, 2) in the neutral photo
    smiling: np.ndarray | None  # uint8 RGB, None when the photo is absent
    smiling_points: np.ndarray | None  # neutral template carried onto the smiling photo (rigid parts only)


class LondonFaces:
    """Reads the set lazily and keeps what it read in memory (one instance per process/worker)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_dir()
        if not self.root.is_dir():
            raise DataError(f"London face directory {self.root} does not exist (set ${ENV_DIR})")
        self._cache: dict[str, LondonPerson] = {}

    def persons(self) -> list[str]:
        """Ids with a neutral photo and template, sorted."""
        ids = sorted(p.name[:-7] for p in self.root.glob("*_03.tem"))
        return [i for i in ids if (self.root / f"{i}_03.jpg").is_file()]

    def person(self, person: str) -> LondonPerson:
        if person not in self._cache:
            self._cache[person] = self._load(person)
        return self._cache[person]

    def _load(self, person: str) -> LondonPerson:
        tem = self.root / f"{person}_03.tem"
        if not tem.is_file():
            raise DataError(f"no landmark template {tem} for person {person!r}")
        points = read_tem(tem)
        if points.shape[0] != TEMPLATE_POINTS:
            raise DataError(f"{tem}: expected {TEMPLATE_POINTS} points, got {points.shape[0]}")
        neutral = _read_rgb(self.root / f"{person}_03.jpg")
        smile_path = self.root / f"{person}_08.jpg"
        smiling = smiling_points = None
        if smile_path.is_file():
            smiling = _read_rgb(smile_path)
            smiling_points = apply_affine(register_to(smiling, neutral, points), points)
        return LondonPerson(person, neutral, points, smiling, smiling_points)


@dataclass(frozen=True)
class PersonSplit:
    train: list[str]
    val: list[str]
    holdout: list[str]


def _holdout_rank(person: str) -> str:
    return hashlib.sha256(f"london-holdout:{person}".encode()).hexdigest()


def london_split(
    persons: list[str] | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    holdout_fraction: float = 0.25,
) -> PersonSplit:
    """Person-exclusive train / val / holdout lists.

    The holdout is chosen by a fixed hash of the person id, independent of `seed`
    and `val_fraction`: whatever seed a training run uses, the holdout people (whose
    real smiling-vs-neutral photos are the final evaluation) stay unseen. The seed
    only shuffles the remaining people into train and val. All lists are sorted.
    """
    for name, value in (("val_fraction", val_fraction), ("holdout_fraction", holdout_fraction)):
        if not 0.0 <= value < 1.0:
            raise DataError(f"{name} must be in [0, 1), got {value}")
    ids = sorted(set(persons if persons is not None else LondonFaces().persons()))
    n_hold = round(len(ids) * holdout_fraction)
    ranked = sorted(ids, key=_holdout_rank)
    holdout = sorted(ranked[:n_hold])
    rest = sorted(ranked[n_hold:])
    order = np.random.default_rng(seed).permutation(len(rest))
    n_val = round(len(rest) * val_fraction)
    val = sorted(rest[i] for i in order[:n_val])
    train = sorted(rest[i] for i in order[n_val:])
    return PersonSplit(train=train, val=val, holdout=holdout)


def photo_labels(smiling: bool) -> tuple[int, np.ndarray, np.ndarray]:
    """(expression, au, au_mask) of a real London photo: neutral = no AU; smiling = happiness, AU6 + AU12.

    A posed smile often also shows AU25 and sometimes AU7, AU10, AU14 or AU26, none of which anyone coded
    here, so those are masked off (unknown) on smiling photos.
    """
    au, mask = np.zeros(NUM_AUS, np.float32), np.ones(NUM_AUS, bool)
    if not smiling:
        return BASIC_EXPRESSIONS.index("neutral"), au, mask
    au[[au_column(6), au_column(12)]] = 1.0
    for n in (7, 10, 14, 25, 26):
        mask[au_column(n)] = False
    return BASIC_EXPRESSIONS.index("happiness"), au, mask


def photo_images(persons: list[str], root: Path | str | None = None) -> list[LabelledImage]:
    """The neutral and smiling photos of `persons` as they come off disk, for the device's detector and aligner."""
    root = Path(root) if root is not None else default_dir()
    out = []
    for person in persons:
        for suffix, smiling in (("03", False), ("08", True)):
            path = root / f"{person}_{suffix}.jpg"
            if not path.is_file():
                if smiling:
                    continue
                raise DataError(f"neutral photo {path} of person {person!r} does not exist")

            expression, au, mask = photo_labels(smiling)
            out.append(LabelledImage(path.name, image_reader(path), expression, "london_photo", person, au=au,
                                     au_mask=mask))
    return out
