"""SSD anchors of MediaPipe's short-range BlazeFace, as (cx, cy) in [0, 1] of the square input.

Facts from MediaPipe's face_detection_short_range graph: 128x128 input, four
feature layers with strides 8, 16, 16, 16, anchor offset 0.5, fixed anchor
size. Layers that share a stride share one grid (2 anchors per cell at stride
8, 6 per cell at stride 16): 16*16*2 + 8*8*6 = 896 anchors, in that order.
"""

from __future__ import annotations

import numpy as np

SHORT_RANGE_STRIDES = (8, 16, 16, 16)


def ssd_anchor_centres(input_size: int = 128, strides: tuple[int, ...] = SHORT_RANGE_STRIDES,
                       anchors_per_layer: int = 2, offset: float = 0.5) -> np.ndarray:
    """(N, 2) float32 anchor centres, normalised to the input size, in the network's output order."""
    centres = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:  # consecutive layers on one grid
            j += 1
        cells = -(-input_size // strides[i])
        ticks = (np.arange(cells) + offset) / cells
        ys, xs = np.meshgrid(ticks, ticks, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(grid, (j - i) * anchors_per_layer, axis=0))
        i = j
    return np.concatenate(centres).astype(np.float32)


def grid_anchors(height: int, width: int, layers: tuple[tuple[int, int], ...]) -> np.ndarray:
    """(N, 2) anchor centres in input pixels for an input of any size, in the network's output order.

    `layers` is (stride, anchors per cell) per output grid, as the graph concatenates
    them; for a square input this equals `ssd_anchor_centres(...) * size`. The graphs
    are fully convolutional, so a larger input just has a larger grid.
    """
    centres = []
    for stride, per_cell in layers:
        rows, cols = -(-height // stride), -(-width // stride)
        ys, xs = np.meshgrid((np.arange(rows) + 0.5) * stride, (np.arange(cols) + 0.5) * stride, indexing="ij")
        centres.append(np.repeat(np.stack([xs.ravel(), ys.ravel()], axis=1), per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)
