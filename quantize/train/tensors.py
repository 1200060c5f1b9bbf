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


def make_batch(data: FaceArrays, idx: torch.Tensor, gen: torch.Generator | None) -> dict[str, torch.Tensor]:
    """A batch; with `gen`, random horizontal flips and brightness/contrast jitter (same for a clip's frames)."""
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
    return {
        "image": x,
        "au": torch.from_numpy(data.au[rows]),
        "au_mask": torch.from_numpy(data.au_mask[rows]),
        "fe": torch.from_numpy(data.fe[rows]),
    }
