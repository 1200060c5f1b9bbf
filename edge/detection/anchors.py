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
