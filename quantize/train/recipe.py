"""The default teacher data: generated faces (London AU warps + procedural) and the real London photos.

Splits are person-disjoint: London people follow `london_split` (the holdout
people are never trained on), procedural identities are new per generator
seed, and each split uses its own seed. A saved `.npz` of arrays can stand in
for the generator (real datasets through their loaders, or test fixtures).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from quantize.train.tensors import FaceArrays, stack_samples

SPLITS = ("train", "val", "holdout")
ARRAY_FIELDS = ("images", "au", "au_mask", "fe", "person", "dataset")


class DataRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["procedural", "london", "mixed"] = "mixed"
    n_train: int = Field(default=4000, ge=1)
    n_val: int = Field(default=600, ge=1)
    n_holdout: int = Field(default=600, ge=1)
    crop_size: int = Field(default=112, ge=16)
    photos: bool = True  # add the real neutral / smiling London photos of each split's people
    seed: int = 0
    npz: Path | None = None  # arrays file with train_/val_/holdout_ prefixed fields instead of generation

    def split(self, name: str) -> FaceArrays:
        return build_split(self, name)

    def describe(self) -> str:
        return f"generated {self.kind} faces, person-disjoint"

    @property
    def holdout_name(self) -> str:
        return "generated holdout faces of unseen people"


def build_split(recipe: DataRecipe, split: str) -> FaceArrays:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    if recipe.npz is not None:
        return load_npz(recipe.npz, split)
    from quantize.data.generate import generate_faces, london_photo_samples
    from quantize.data.london import london_split

    people = getattr(london_split(seed=recipe.seed), split) if recipe.kind != "procedural" else []
    n = {"train": recipe.n_train, "val": recipe.n_val, "holdout": recipe.n_holdout}[split]
    samples = generate_faces(recipe.kind, n, people, recipe.crop_size, seed=recipe.seed * 10 + SPLITS.index(split))
    if recipe.photos and people:
        samples += london_photo_samples(people, recipe.crop_size)
    return stack_samples(samples)


def save_npz(path: Path, splits: dict[str, FaceArrays]) -> None:
    from edge.fsutil import atomic_writer

    arrays = {f"{s}_{f}": getattr(a, f) for s, a in splits.items() for f in ARRAY_FIELDS}
    with atomic_writer(path) as handle:
        np.savez(handle, **arrays)


def load_npz(path: Path, split: str) -> FaceArrays:
    try:
        with np.load(path, allow_pickle=False) as z:
            return FaceArrays(**{f: z[f"{split}_{f}"] for f in ARRAY_FIELDS})
    except KeyError as exc:
        raise ValueError(f"{path}: no arrays for split {split!r} ({exc})") from None


def data_source(meta: dict):
    """The data a run was trained on, from its checkpoint's `meta`: real-face caches or a generated recipe."""
    if "real" in meta:
        from quantize.train.real_data import RealData

        return RealData(**meta["real"])
    return DataRecipe(**meta.get("recipe", {}))
