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

from quantize.data.camera_augment import CameraAugment
from quantize.data.torch_data import normalise

CAMERA = CameraAugment()


@dataclass
class FaceArrays:
    """Aligned faces with labels. RGB crops (N x [T x] H x W x 3) are the model input as they are; grey context
    crops (N x C x C, `quantize.data.face_cache`) carry `margin` pixels of context around the model input."""

    images: np.ndarray  # uint8 N x [T x] H x W x 3, or N x C x C grey
    au: np.ndarray  # float32 N x [T x] A, soft targets in [0, 1]
    au_mask: np.ndarray  # bool N x A
    fe: np.ndarray  # int64 N, -1 = unlabelled
    person: np.ndarray  # str N
    dataset: np.ndarray  # str N
    fe_soft: np.ndarray | None = None  # float32 N x E expression target distributions (zero rows: none)
    margin: int = 0
    fe_peer: np.ndarray | None = None  # float32 N x E the peer teacher's probabilities (NaN rows: none)

    def __len__(self) -> int:
        return len(self.fe)

    @property
    def grey(self) -> bool:
        return self.images.ndim == 3

    def subset(self, keep: np.ndarray) -> FaceArrays:
        soft = None if self.fe_soft is None else self.fe_soft[keep]
        peer = None if self.fe_peer is None else self.fe_peer[keep]
        return FaceArrays(self.images[keep], self.au[keep], self.au_mask[keep], self.fe[keep],
                          self.person[keep], self.dataset[keep], soft, self.margin, peer)

    def au_rows(self) -> FaceArrays:
        return self.subset(self.au_mask.any(axis=1))

    def fe_rows(self) -> FaceArrays:
        labelled = self.fe >= 0
        if self.fe_soft is not None:
            labelled |= self.fe_soft.sum(axis=1) > 0
        return self.subset(labelled)


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


def _grey_inputs(data: FaceArrays, rows: np.ndarray, gen: torch.Generator | None,
                 true_aspect: bool = False) -> dict[str, torch.Tensor]:
    """Model inputs from grey context crops: the centre, or with `gen` the camera augmentation of each crop
    (with `true_aspect`, also "true_aspect_image": the same augmentation without its aspect change)."""
    size = data.images.shape[1] - 2 * data.margin
    if gen is None:
        m = data.margin
        return {"image": normalise(data.images[rows, m : m + size, m : m + size])}
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen)))
    if not true_aspect:
        return {"image": normalise(np.stack([CAMERA(data.images[r], size, rng) for r in rows]))}
    pairs = [CAMERA.with_true_aspect(data.images[r], size, rng) for r in rows]
    return {"image": normalise(np.stack([p[0] for p in pairs])),
            "true_aspect_image": normalise(np.stack([p[1] for p in pairs]))}


def make_batch(data: FaceArrays, idx: torch.Tensor, gen: torch.Generator | None,
               geometric: bool = False, true_aspect: bool = False) -> dict[str, torch.Tensor]:
    """A batch; with `gen`, random horizontal flips and brightness/contrast jitter (same for a clip's frames),
    plus, with `geometric` (single images only), a small random similarity warp. Grey context crops get the
    camera augmentation (`quantize.data.camera_augment`) instead, and with `true_aspect` also each input
    without its aspect change (for a distillation teacher)."""
    rows = idx.numpy()
    targets = {
        "au": torch.from_numpy(data.au[rows]),
        "au_mask": torch.from_numpy(data.au_mask[rows]),
        "fe": torch.from_numpy(data.fe[rows]),
    }
    if data.fe_soft is not None:
        targets["fe_soft"] = torch.from_numpy(data.fe_soft[rows])
    if data.fe_peer is not None:
        targets["fe_peer"] = torch.from_numpy(data.fe_peer[rows])
    if data.grey:
        return {**_grey_inputs(data, rows, gen, true_aspect), **targets}
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
    return {"image": x, **targets}
