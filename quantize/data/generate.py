"""Deterministic streams of labelled generated faces and clips (no downloads).

AU draws: an expression sample picks a basic expression and turns on its FACS
prototype AUs (edge.labels.FACS_PRIOR), each kept with probability 0.85, at random
intensities; an AU-only sample (expression -1) turns on random compatible AUs, so
AUs are not perfectly tied to expressions. An AU counts as present when its
intensity is >= OCCURRENCE (the analogue of DISFA's intensity >= 2 of 5); present
AUs are drawn in [0.45, 1], faint sub-threshold traces below 0.2 are labelled 0.

Persons: London samples are restricted to the ids passed in `persons` (use
london_split); procedural identities are named "proc-s{seed}-{i}", so different
seeds give disjoint procedural people (use different seeds for train and val).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from edge.alignment import similarity_matrix, template_for
from edge.labels import BASIC_EXPRESSIONS, DEFAULT_LABELS, FACS_PRIOR
from quantize.data.london import LondonFaces, apply_affine, five_points, photo_labels
from quantize.data.procedural import Identity, render_face
from quantize.data.types import NUM_AUS, UNLABELLED, ClipSample, DataError, FaceSample, au_column
from quantize.data.warps import warp_face

Kind = Literal["procedural", "london", "mixed"]
OCCURRENCE = 0.4
KEEP_PROTOTYPE_AU = 0.85
# AUs that cannot be shown together (opposite movements of the same feature).
EXCLUSIVE = ((12, 15), (23, 25), (24, 25), (24, 26), (23, 26), (20, 23))
LANDMARK_NOISE = 0.02  # std of detector noise on the five points, in IOD
_ALL = np.ones(NUM_AUS, dtype=bool)


@dataclass(frozen=True)
class AUDraw:
    intensity: np.ndarray  # float32 (A,) in [0, 1]
    expression: int

    @property
    def label(self) -> np.ndarray:
        return occurrence(self.intensity)

    def as_dict(self) -> dict[int, float]:
        return {n: float(v) for n, v in zip(DEFAULT_LABELS.aus, self.intensity, strict=True) if v > 0}


def occurrence(intensity: np.ndarray) -> np.ndarray:
    return (np.asarray(intensity) >= OCCURRENCE).astype(np.float32)


def _compatible(active: set[int], au: int) -> bool:
    return not any((au == a and b in active) or (au == b and a in active) for a, b in EXCLUSIVE)


def sample_aus(rng: np.random.Generator, expression_fraction: float = 0.7) -> AUDraw:
    """One AU configuration, by the FACS prior (expression sample) or at random (AU-only, expression -1)."""
    intensity = np.zeros(NUM_AUS, dtype=np.float32)
    active: set[int] = set()
    if rng.random() < expression_fraction:
        expression = int(rng.integers(len(BASIC_EXPRESSIONS)))
        proto = [n for n in FACS_PRIOR[BASIC_EXPRESSIONS[expression]] if n in DEFAULT_LABELS.aus]
        kept = [n for n in proto if rng.random() < KEEP_PROTOTYPE_AU]
        if proto and not kept:
            kept = [proto[int(rng.integers(len(proto)))]]
        active.update(kept)
    else:
        expression = UNLABELLED
        for n in rng.permutation(DEFAULT_LABELS.aus)[: int(rng.integers(0, 5))]:
            if _compatible(active, int(n)):
                active.add(int(n))
    for n in active:
        intensity[au_column(n)] = rng.uniform(0.45, 1.0)
    if expression != BASIC_EXPRESSIONS.index("neutral") or rng.random() < 0.5:
        for n in DEFAULT_LABELS.aus:  # faint traces, labelled absent
            if n not in active and rng.random() < 0.08 and _compatible(active, n):
                intensity[au_column(n)] = rng.uniform(0.0, 0.2)
    return AUDraw(intensity, expression)


def photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera variation: gain, contrast, gamma, colour cast, light gradient, blur, noise."""
    img = image.astype(np.float32) / 255.0
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    g = rng.uniform(-0.3, 0.3, 2)
    img = img * (1 + g[0] * xx + g[1] * yy)[..., None]
    img = (img - 0.5) * rng.uniform(0.75, 1.25) + 0.5 + rng.uniform(-0.12, 0.12)
    img = img * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    img = np.clip(img, 0, 1) ** rng.uniform(0.8, 1.25)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.0))
    img = img + rng.normal(0, rng.uniform(0.0, 0.03), img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _noisy(points: np.ndarray, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    iod = float(np.linalg.norm(points[0] - points[1]))
    return (points + rng.normal(0, LANDMARK_NOISE * iod * scale, points.shape)).astype(np.float32)


@dataclass
class LondonWarper:
    """Per-person, per-crop-size cache of the aligned neutral face and its landmarks."""

    faces: LondonFaces
    crop_size: int
    margin: float = 1.5  # work canvas = margin x crop, so alignment jitter never shows the canvas edge
    oversample: int = 2  # warp at 2x, one area-downsample at the end: as sharp as the real photos
    _cache: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def canvas(self, person: str) -> tuple[np.ndarray, np.ndarray]:
        """(canvas RGB, landmarks in canvas pixels); the face sits where the crop template puts it, centred."""
        if person not in self._cache:
            p = self.faces.person(person)
            big = self.crop_size * self.oversample
            work = round(big * self.margin)
            tpl = template_for(big) + (work - big) / 2
            m = similarity_matrix(five_points(p.points), tpl)
            scale = float(np.hypot(m[0, 0], m[0, 1]))
            src = p.neutral
            if scale < 0.7:  # area-downsample first so the affine warp does not alias
                src = cv2.resize(src, None, fx=scale * 1.4, fy=scale * 1.4, interpolation=cv2.INTER_AREA)
                m = similarity_matrix(five_points(p.points) * scale * 1.4, tpl)
                pts = p.points * scale * 1.4
            else:
                pts = p.points
            canvas = cv2.warpAffine(src, m, (work, work), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            self._cache[person] = (canvas, apply_affine(m, pts))
        return self._cache[person]

    def render(
        self,
        person: str,
        intensity: dict[int, float],
        rng: np.random.Generator,
        noise: np.ndarray | None = None,
        flip: bool = False,
    ) -> np.ndarray:
        canvas, pts = self.canvas(person)
        warped, moved = warp_face(canvas, pts, intensity)
        five = five_points(moved)
        if flip:
            warped = warped[:, ::-1]
            five = five.copy()
            five[:, 0] = warped.shape[1] - 1 - five[:, 0]
            five = five[[1, 0, 2, 4, 3]]
        five = five + (noise * self.oversample if noise is not None else _noisy(five, rng) - five)
        big = self.crop_size * self.oversample
        m = similarity_matrix(five, template_for(big))
        out = cv2.warpAffine(
            np.ascontiguousarray(warped), m, (big, big), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        return cv2.resize(out, (self.crop_size, self.crop_size), interpolation=cv2.INTER_AREA)


def _procedural(
    person: str,
    intensity: dict[int, float],
    crop_size: int,
    rng: np.random.Generator,
    noise: np.ndarray | None = None,
    render_seed: int | None = None,
) -> np.ndarray:
    scale = 2  # draw at 2x, align down to the crop: anti-aliased
    render_rng = np.random.default_rng(render_seed) if render_seed is not None else rng
    image, five = render_face(Identity.from_person(person), intensity, crop_size * scale, render_rng)
    five = five + (noise * scale if noise is not None else _noisy(five, rng) - five)
    m = similarity_matrix(five, template_for(crop_size))
    return cv2.warpAffine(image, m, (crop_size, crop_size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def _pick_source(
    kind: Kind, rng: np.random.Generator, persons: list[str] | None, seed: int, i: int, london_fraction: float
) -> tuple[str, str]:
    """(dataset name, person) of sample i."""
    use_london = kind == "london" or (kind == "mixed" and rng.random() < london_fraction)
    if use_london:
        if not persons:
            raise DataError(f"kind {kind!r} needs a non-empty `persons` list of London ids (see london_split)")
        return "london_warp", persons[int(rng.integers(len(persons)))]
    return "procedural", f"proc-s{seed}-{i}"


def generate_faces(
    kind: Kind,
    n: int,
    persons: list[str] | None = None,
    crop_size: int = 112,
    seed: int = 0,
    london: LondonFaces | None = None,
    expression_fraction: float = 0.7,
    london_fraction: float = 0.5,
    photometric_jitter: bool = True,
) -> list[FaceSample]:
    """`n` labelled aligned faces; same arguments, same samples."""
    if kind not in ("procedural", "london", "mixed"):
        raise DataError(f"unknown generator kind {kind!r}; use procedural, london or mixed")
    rng = np.random.default_rng(seed)
    warper = LondonWarper(london or LondonFaces(), crop_size) if kind != "procedural" else None
    out: list[FaceSample] = []
    for i in range(n):
        dataset, person = _pick_source(kind, rng, persons, seed, i, london_fraction)
        draw = sample_aus(rng, expression_fraction)
        if dataset == "london_warp":
            assert warper is not None
            image = warper.render(person, draw.as_dict(), rng, flip=bool(rng.random() < 0.5))
        else:
            image = _procedural(person, draw.as_dict(), crop_size, rng)
        if photometric_jitter:
            image = photometric(image, rng)
        out.append(FaceSample(image, draw.label, _ALL.copy(), draw.expression, person, dataset))
    return out


def clip_intensities(apex: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    """(T, A) onset -> apex trajectory: neutral frames, a smooth rise, then the apex held (some decay)."""
    onset = int(rng.integers(0, max(1, frames // 3)))
    rise = int(rng.integers(max(1, frames // 4), max(2, frames // 2) + 1))
    tt = np.arange(frames, dtype=np.float32)
    ramp = np.clip((tt - onset) / rise, 0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)
    decay = 1 - rng.uniform(0, 0.3) * np.clip((tt - onset - rise) / max(1, frames), 0, 1)
    return (ramp * decay)[:, None] * apex[None, :]


def generate_clips(
    kind: Kind,
    n: int,
    persons: list[str] | None = None,
    frames: int = 16,
    crop_size: int = 112,
    seed: int = 0,
    london: LondonFaces | None = None,
    london_fraction: float = 0.5,
    photometric_jitter: bool = True,
) -> list[ClipSample]:
    """`n` clips of `frames` frames with onset/apex; the clip's expression is the apex expression."""
    if kind not in ("procedural", "london", "mixed"):
        raise DataError(f"unknown generator kind {kind!r}; use procedural, london or mixed")
    if frames < 1:
        raise DataError(f"frames must be >= 1, got {frames}")
    rng = np.random.default_rng(seed)
    warper = LondonWarper(london or LondonFaces(), crop_size) if kind != "procedural" else None
    out: list[ClipSample] = []
    for i in range(n):
        dataset, person = _pick_source(kind, rng, persons, seed, i, london_fraction)
        draw = sample_aus(rng, expression_fraction=1.0)
        traj = clip_intensities(draw.intensity, frames, rng)
        flip = bool(rng.random() < 0.5)
        drift = np.cumsum(rng.normal(0, LANDMARK_NOISE * 0.3, (frames, 1, 2)), axis=0) * crop_size * 0.3
        jitter = rng.normal(0, LANDMARK_NOISE * 0.3, (frames, 5, 2)) * crop_size * 0.3
        photo_seed = int(rng.integers(2**31))
        render_seed = int(rng.integers(2**31))
        imgs = []
        for f in range(frames):
            intensity = {n: float(v) for n, v in zip(DEFAULT_LABELS.aus, traj[f], strict=True) if v > 0}
            noise = (drift[f] + jitter[f]).astype(np.float32)
            if dataset == "london_warp":
                assert warper is not None
                img = warper.render(person, intensity, rng, noise=noise, flip=flip)
            else:
                img = _procedural(person, intensity, crop_size, rng, noise=noise, render_seed=render_seed)
            if photometric_jitter:  # same camera for the whole clip
                img = photometric(img, np.random.default_rng(photo_seed))
            imgs.append(img)
        out.append(ClipSample(np.stack(imgs), occurrence(traj), _ALL.copy(), draw.expression, person, dataset))
    return out


def london_photo_samples(
    persons: list[str], crop_size: int = 112, london: LondonFaces | None = None
) -> list[FaceSample]:
    """The real photos, aligned from their landmark templates, labelled by `london.photo_labels`."""
    faces = london or LondonFaces()
    tpl = template_for(crop_size)

    def crop(photo: np.ndarray, points: np.ndarray) -> np.ndarray:
        matrix = similarity_matrix(five_points(points), tpl)
        return cv2.warpAffine(photo, matrix, (crop_size, crop_size), flags=cv2.INTER_AREA,
                              borderMode=cv2.BORDER_REPLICATE)

    out = []
    for person in persons:
        p = faces.person(person)
        expression, au, mask = photo_labels(False)
        out.append(FaceSample(crop(p.neutral, p.points), au, mask, expression, person, "london_photo"))
        if p.smiling is not None and p.smiling_points is not None:
            expression, au, mask = photo_labels(True)
            out.append(FaceSample(crop(p.smiling, p.smiling_points), au, mask, expression, person, "london_photo"))
    return out
