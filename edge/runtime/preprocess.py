"""Aligned face crops -> the normalised NCHW tensor a bundle's input spec asks for."""

from __future__ import annotations

import cv2
import numpy as np

from edge.bundle.manifest import InputSpec


def to_tensor(crops: list[np.ndarray], spec: InputSpec, color_order: str = "BGR") -> np.ndarray:
    """Stack crops (H x W x 3 uint8 in `color_order`, already aligned at spec.crop_size) into B x C x H x W."""
    if not crops:
        return np.zeros((0, spec.channels, spec.crop_size, spec.crop_size), dtype=np.float32)
    batch = np.stack(crops)
    if batch.shape[1:] != (spec.crop_size, spec.crop_size, 3):
        raise ValueError(f"crops must be {spec.crop_size}x{spec.crop_size}x3, got {batch.shape[1:]}")
    if spec.color_order == "GRAY":
        code = cv2.COLOR_BGR2GRAY if color_order == "BGR" else cv2.COLOR_RGB2GRAY
        batch = np.stack([cv2.cvtColor(c, code) for c in batch])[..., None]
    elif spec.color_order != color_order:
        batch = batch[..., ::-1]
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    x = (batch.astype(np.float32) * np.float32(spec.scale) - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
