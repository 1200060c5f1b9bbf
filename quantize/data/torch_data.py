"""Torch Dataset wrappers and collates: samples -> normalised batches.

IMAGE_MEAN / IMAGE_STD are the one place the input normalisation is defined; the
bundle manifest records them and the device reads them from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from quantize.data.types import ClipSample, FaceSample

# CLIP's RGB statistics: the SSM backbone family was pre-trained with them.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
COLOUR_ORDER = "RGB"
# Grey models (one channel, BT.601 luma as cv2.COLOR_*2GRAY computes it): the same statistics in luma.
GREY_MEAN = (0.4589,)
GREY_STD = (0.2662,)


def input_spec(channels: int) -> dict[str, object]:
    """What a bundle's manifest records about the input normalisation of a model with `channels` channels."""
    if channels == 1:
        return {"channels": 1, "color_order": "GRAY", "mean": list(GREY_MEAN), "std": list(GREY_STD)}
    return {"channels": 3, "color_order": COLOUR_ORDER, "mean": list(IMAGE_MEAN), "std": list(IMAGE_STD)}


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) RGB -> float32 (..., 3, H, W) with IMAGE_MEAN / IMAGE_STD; uint8 grey (N, H, W) ->
    (N, 1, H, W) with GREY_MEAN / GREY_STD."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    if x.ndim == 3:
        return ((x - GREY_MEAN[0]) / GREY_STD[0]).unsqueeze(1).contiguous()
    x = (x - torch.tensor(IMAGE_MEAN)) / torch.tensor(IMAGE_STD)
    return x.movedim(-1, -3).contiguous()


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation. A horizontal flip keeps the AU labels: every AU here is coded bilaterally."""

    flip: float = 0.5
    brightness: float = 0.15
    contrast: float = 0.2
    rotate_deg: float = 6.0
    scale: float = 0.05
    shift: float = 0.04  # fraction of the crop

    def params(self, rng: np.random.Generator) -> dict[str, float]:
        return {
            "flip": float(rng.random() < self.flip),
            "b": rng.uniform(-self.brightness, self.brightness),
            "c": rng.uniform(1 - self.contrast, 1 + self.contrast),
            "r": rng.uniform(-self.rotate_deg, self.rotate_deg),
            "s": rng.uniform(1 - self.scale, 1 + self.scale),
            "tx": rng.uniform(-self.shift, self.shift),
            "ty": rng.uniform(-self.shift, self.shift),
        }

    @staticmethod
    def apply(image: np.ndarray, p: dict[str, float]) -> np.ndarray:
        h, w = image.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), p["r"], p["s"])
        m[:, 2] += (p["tx"] * w, p["ty"] * h)
        out = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        if p["flip"]:
            out = out[:, ::-1]
        out = (out.astype(np.float32) - 127.5) * p["c"] + 127.5 + 255 * p["b"]
        return np.clip(out, 0, 255).astype(np.uint8)


class FaceDataset(Dataset):
    """Face samples as dicts of arrays; with `augment`, each access draws augmentation from (seed, epoch, index)."""

    def __init__(self, samples: Sequence[FaceSample], augment: Augment | None = None, seed: int = 0) -> None:
        self.samples = list(samples)
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, np.ndarray | int]:
        s = self.samples[i]
        image = s.image
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            image = self.augment.apply(image, self.augment.params(rng))
        return {"image": image, "au": s.au, "au_mask": s.au_mask, "fe": s.expression}


class ClipDataset(Dataset):
    """Clips; one augmentation draw per clip, applied to every frame (a camera does not re-flip mid-clip)."""

    def __init__(self, clips: Sequence[ClipSample], augment: Augment | None = None, seed: int = 0) -> None:
        self.clips = list(clips)
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, np.ndarray | int]:
        c = self.clips[i]
        frames = c.frames
        if self.augment is not None:
            p = self.augment.params(np.random.default_rng((self.seed, self.epoch, i)))
            frames = np.stack([self.augment.apply(f, p) for f in frames])
        return {"image": frames, "au": c.au, "au_mask": c.au_mask, "fe": c.expression}


def collate_faces(items: Sequence[dict]) -> dict[str, torch.Tensor]:
    """-> image (B,3,H,W) float32 normalised, au (B,A) float32, au_mask (B,A) bool, fe (B,) long (-1 = unlabelled)."""
    return {
        "image": normalise(np.stack([it["image"] for it in items])),
        "au": torch.from_numpy(np.stack([it["au"] for it in items]).astype(np.float32)),
        "au_mask": torch.from_numpy(np.stack([it["au_mask"] for it in items]).astype(bool)),
        "fe": torch.tensor([int(it["fe"]) for it in items], dtype=torch.long),
    }


def collate_clips(items: Sequence[dict]) -> dict[str, torch.Tensor]:
    """-> image (B,T,3,H,W), au (B,T,A), au_mask (B,A) bool, fe (B,) long. Clips in a batch must share T."""
    lengths = {it["image"].shape[0] for it in items}
    if len(lengths) != 1:
        raise ValueError(f"clips in one batch must have the same number of frames, got {sorted(lengths)}")
    return {
        "image": normalise(np.stack([it["image"] for it in items])),
        "au": torch.from_numpy(np.stack([it["au"] for it in items]).astype(np.float32)),
        "au_mask": torch.from_numpy(np.stack([it["au_mask"] for it in items]).astype(bool)),
        "fe": torch.tensor([int(it["fe"]) for it in items], dtype=torch.long),
    }
