"""Training arrays from the real-face caches: expression targets from FER2013 + FER+, AU targets from MediaPipe.

`<faces>/train.npz` and `<faces>/val.npz` come from `affect-quantize faces`; `<faces>/<split>.blendshapes.npz`
from `python -m quantize.data.blendshapes` (docs/data.md, "Real faces"). Expression targets mix the source's
own label with the FER+ crowd votes (`VoteMix`); AU targets are the London photos' and the generated faces'
own labels where they have them, else the MediaPipe soft targets, re-based on the training split's neutral
faces (the same baselines for validation, so nothing is fitted on it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge.labels import BASIC_EXPRESSIONS
from quantize.data.blendshapes import BlendshapeScores, au_targets, fit_baselines, raw_au
from quantize.data.face_cache import FaceCache
from quantize.data.peer_targets import TARGETS_SUFFIX, PeerTargets
from quantize.data.types import DataError
from quantize.train.tensors import FaceArrays

NEUTRAL = BASIC_EXPRESSIONS.index("neutral")


@dataclass(frozen=True)
class VoteMix:
    """Expression target = (1 - weight) one-hot(own label) + weight votes / total, where both exist."""

    weight: float = 0.5

    def targets(self, expression: np.ndarray, votes: np.ndarray) -> np.ndarray:
        n, e = votes.shape
        hard = np.zeros((n, e), np.float32)
        labelled = expression >= 0
        hard[np.flatnonzero(labelled), expression[labelled]] = 1.0
        total = votes.sum(axis=1, keepdims=True)
        soft = np.divide(votes, total, out=np.zeros_like(votes), where=total > 0)
        has_votes = total[:, 0] > 0
        both = labelled & has_votes
        out = np.where(has_votes[:, None], soft, hard)
        out[both] = (1 - self.weight) * hard[both] + self.weight * soft[both]
        return out.astype(np.float32)


def _blendshapes_for(cache: FaceCache, path: Path) -> BlendshapeScores:
    scores = BlendshapeScores.load(path)
    if len(scores.key) != len(cache) or not np.array_equal(scores.key, cache.key):
        raise DataError(f"{path} does not belong to this face cache (keys differ): re-run quantize.data.blendshapes")
    return scores


def neutral_faces(cache: FaceCache) -> np.ndarray:
    """Rows that are clearly neutral: >= 80% neutral votes, or a neutral London photo."""
    total = cache.votes.sum(axis=1)
    share = np.divide(cache.votes[:, NEUTRAL], total, out=np.zeros_like(total), where=total > 0)
    return (share >= 0.8) | ((cache.dataset == "london_photo") & (cache.expression == NEUTRAL))


@lru_cache(maxsize=4)
def au_baselines(faces: Path) -> np.ndarray:
    """Per-AU blendshape level of neutral faces, from the training split only."""
    cache = FaceCache.load(faces / "train.npz")
    values, _ = raw_au(_blendshapes_for(cache, faces / "train.blendshapes.npz"))
    return fit_baselines(values, neutral_faces(cache))


def load_faces(faces: Path, split: str, baselines: np.ndarray | None = None,
               mix: VoteMix = VoteMix(), size: int | None = None) -> FaceArrays:
    """FaceArrays of one cache split (resampled for a model of input `size`); AU targets from its blendshapes
    file when present (baselines: train's), the peer teacher's probabilities from its peer target file when present."""
    cache = FaceCache.load(faces / f"{split}.npz")
    au, au_mask = cache.au.copy(), cache.au_mask.copy()
    path = faces / f"{split}.blendshapes.npz"
    if path.is_file():
        values, labelled = raw_au(_blendshapes_for(cache, path))
        target, mask = au_targets(values, labelled, au_baselines(faces) if baselines is None else baselines)
        teach = ~cache.au_mask.any(axis=1)  # rows without labels of their own (FER2013)
        au[teach], au_mask[teach] = target[teach], mask[teach]
    peer_path = faces / f"{split}{TARGETS_SUFFIX}"
    peer = PeerTargets.load(peer_path, cache.key).probs if peer_path.is_file() else None
    if size is not None:
        cache = cache.resized(size)
    return FaceArrays(
        images=cache.images,
        au=au,
        au_mask=au_mask,
        fe=cache.expression,
        person=cache.person,
        dataset=cache.dataset,
        fe_soft=mix.targets(cache.expression, cache.votes),
        margin=cache.margin,
        fe_peer=peer,
    )


def _half(keys: np.ndarray, which: int) -> np.ndarray:
    """A fixed half of a split by a hash of each key (independent of order and seed)."""
    return np.array([hashlib.sha256(f"val-half:{k}".encode()).digest()[0] % 2 == which for k in keys])


class RealData(BaseModel):
    """The real-face training data of a run, as recorded in its checkpoint.

    Splits: `train`; `val` and `holdout` are two fixed halves of the validation cache (FER2013 PublicTest +
    the London validation people + generated validation faces): thresholds and logit offsets are fitted on
    `val`, the distillation's comparison table is reported on `holdout`. FER2013 PrivateTest and the London
    holdout people are never in a cache; they are measured through the device pipeline only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    faces: Path
    vote_weight: float = Field(default=0.5, ge=0, le=1)
    size: int | None = Field(default=None, ge=16, description="model input (px); None: the caches' own")

    def split(self, name: str) -> FaceArrays:
        if name == "train":
            return load_faces(self.faces, "train", mix=VoteMix(self.vote_weight), size=self.size)
        if name not in ("val", "holdout"):
            raise DataError(f"unknown split {name!r}; known: train, val, holdout")
        data = load_faces(self.faces, "val", baselines=au_baselines(self.faces), mix=VoteMix(self.vote_weight),
                          size=self.size)
        keys = FaceCache.load(self.faces / "val.npz").key
        return data.subset(_half(keys, 0 if name == "val" else 1))

    def describe(self) -> str:
        return f"real faces from {self.faces} (FER2013 + FER+ votes x {self.vote_weight}, London, generated)"

    @property
    def holdout_name(self) -> str:
        return "half of FER2013 PublicTest + London validation people + generated validation faces"
