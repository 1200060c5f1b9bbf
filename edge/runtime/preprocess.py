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
        n, h, w, _ = batch.shape
        grey = cv2.cvtColor(batch.reshape(n * h, w, 3), code)  # one call for the whole batch
        levels = np.arange(256, dtype=np.float32) * np.float32(spec.scale)
        table = (levels - np.float32(spec.mean[0])) / np.float32(spec.std[0])
        return np.ascontiguousarray(cv2.LUT(grey, table).reshape(n, 1, h, w))
    # uint8 -> normalised float in one table lookup per pixel (cv2.LUT): 6x faster than float arithmetic on
    # a 112 px crop, which matters when the model itself takes well under a millisecond.
    levels = np.arange(256, dtype=np.float32)[:, None] * np.float32(spec.scale)
    table = (levels - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    if spec.color_order != color_order:
        table = table[:, ::-1]  # look up with the crop's channel order, reorder when transposing
    n, h, w, _ = batch.shape
    x = cv2.LUT(batch.reshape(n * h, w, 3), np.ascontiguousarray(table).reshape(256, 1, 3)).reshape(n, h, w, 3)
    if spec.color_order != color_order:
        x = x[..., ::-1]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
