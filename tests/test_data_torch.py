"""Torch wrappers: batch layout, normalisation constants, AU-consistent augmentation."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from quantize.data.generate import generate_clips, generate_faces
from quantize.data.torch_data import (
    IMAGE_MEAN,
    IMAGE_STD,
    Augment,
    ClipDataset,
    FaceDataset,
    collate_clips,
    collate_faces,
    normalise,
)
from quantize.data.types import NUM_AUS


def test_face_batches():
    samples = generate_faces("procedural", 6, crop_size=64, seed=0)
    batch = next(iter(DataLoader(FaceDataset(samples), batch_size=4, collate_fn=collate_faces)))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["au"].shape == (4, NUM_AUS) and batch["au_mask"].dtype == torch.bool
    assert batch["fe"].dtype == torch.long and batch["fe"].tolist() == [s.expression for s in samples[:4]]
    # normalisation round-trips to the uint8 pixels
    back = batch["image"][0].permute(1, 2, 0) * torch.tensor(IMAGE_STD) + torch.tensor(IMAGE_MEAN)
    np.testing.assert_allclose(back.numpy() * 255, samples[0].image, atol=1e-3)


def test_augmentation_flip_mirrors_and_keeps_labels():
    samples = generate_faces("procedural", 2, crop_size=64, seed=1)
    no_jitter = Augment(flip=1.0, brightness=0, contrast=0, rotate_deg=0, scale=0, shift=0)
    item = FaceDataset(samples, no_jitter)[0]
    np.testing.assert_array_equal(item["image"], samples[0].image[:, ::-1])
    np.testing.assert_array_equal(item["au"], samples[0].au)
    ds = FaceDataset(samples, Augment())
    first = ds[0]["image"]
    assert np.array_equal(first, ds[0]["image"])  # deterministic per (seed, epoch, index)
    ds.set_epoch(1)
    assert not np.array_equal(first, ds[0]["image"])


def test_clip_batches():
    clips = generate_clips("procedural", 2, frames=4, crop_size=32, seed=0)
    batch = collate_clips([ClipDataset(clips, Augment())[i] for i in range(2)])
    assert batch["image"].shape == (2, 4, 3, 32, 32) and batch["au"].shape == (2, 4, NUM_AUS)
    assert batch["au_mask"].shape == (2, NUM_AUS) and batch["fe"].shape == (2,)
    assert normalise(clips[0].frames).shape == (4, 3, 32, 32)
