"""Samples -> stacked arrays -> normalised training batches (with light, seeded augmentation).

Images stay uint8 in memory (a few thousand 112x112 crops are tens of MB) and
are normalised per batch with `quantize.data.torch_data.normalise` (the one place
the input normalisation is defined); checkpoints record it for the export step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from quantize.data.torch_data import normalise


@dataclass
class FaceArrays:
    images: np.ndarray  # uint8 N x [T x] H x W x 3
    au: np.ndarray  # float32 N x [T x] A
    au_mask: np.ndarray  # bool N x A
    fe: np.ndarray  # int64 N, -1 = unlabelled
    person: np.ndarray  # str N
    dataset: np.ndarray  # str N

    def __len__(self) -> int:
        return len(self.fe)

    def subset(self, keep: np.ndarray) -> FaceArrays:
        return FaceArrays(self.images[keep], self.au[keep], self.au_mask[keep], self.fe[keep],
                          self.person[keep], self.dataset[keep])

    def au_rows(self) -> FaceArrays:
        return self.subset(self.au_mask.any(axis=1))

    def fe_rows(self) -> FaceArrays:
        return self.subset(self.fe >= 0)


def stack_samples(samples: Sequence) -> FaceArrays:
    """FaceSample or ClipSample lists (quantize.data.types) -> arrays; all crops must share one size."""
    if not samples:
        raise ValueError("no samples to stack")
    pixels = [s.image if hasattr(s, "image") else s.frames for s in samples]
    shapes = {p.shape for p in pixels}
    if len(shapes) != 1:
        raise ValueError(f"samples mix crop/clip shapes {sorted(shapes)}; resample them to one size first")
    return FaceArrays(
        images=np.stack(pixels),
        au=np.stack([s.au for s in samples]).astype(np.float32),
        au_mask=np.stack([s.au_mask for s in samples]).astype(bool),
        fe=np.array([s.expression for s in samples], dtype=np.int64),
        person=np.array([s.person for s in samples]),
        dataset=np.array([s.dataset for s in samples]),
    )


# Geometric jitter (`make_batch(..., geometric=True)`): a random similarity per image, about what a
# detector's five points move the aligned crop by on real photos (scale, rotation, shift in crop widths).
JITTER_SCALE = 0.06
JITTER_ROTATE_DEG = 6.0
JITTER_SHIFT = 0.04


def geometric_jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random similarity warps of single images (N, C, H, W), border pixels replicated."""
    n = x.shape[0]
    u = torch.rand(n, 4, generator=gen) * 2 - 1
    scale = 1.0 + JITTER_SCALE * u[:, 0]
    angle = torch.deg2rad(JITTER_ROTATE_DEG * u[:, 1])
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, 2 * JITTER_SHIFT * u[:, 2]], 1),
                         torch.stack([sin, cos, 2 * JITTER_SHIFT * u[:, 3]], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def make_batch(data: FaceArrays, idx: torch.Tensor, gen: torch.Generator | None,
               geometric: bool = False) -> dict[str, torch.Tensor]:
    """A batch; with `gen`, random horizontal flips and brightness/contrast jitter (same for a clip's frames),
    plus, with `geometric` (single images only), a small random similarity warp."""
    rows = idx.numpy()
    x = normalise(data.images[rows])
    if gen is not None:
        n = x.shape[0]
        shape = (n,) + (1,) * (x.ndim - 1)
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip.view(shape), x.flip(-1), x)
        gain = 1.0 + 0.2 * (torch.rand(shape, generator=gen) - 0.5)
        shift = 0.2 * (torch.rand(shape, generator=gen) - 0.5)
        x = x * gain + shift
        if geometric:
            if x.ndim != 4:
                raise ValueError("geometric jitter is for single images (N, C, H, W), not clips")
            x = geometric_jitter(x, gen)
    return {
        "image": x,
        "au": torch.from_numpy(data.au[rows]),
        "au_mask": torch.from_numpy(data.au_mask[rows]),
        "fe": torch.from_numpy(data.fe[rows]),
    }
