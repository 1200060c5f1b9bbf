"""Photos that are already tight face crops (FER2013-style datasets): made detectable, results mapped back.

A face that fills its whole image, with no forehead, chin or background around it, is not what a camera
detector is made for, and a 48 px one is below the device's minimum face size. `face_crop_frame` adds a
mean-colour border (a quarter of the side on each side) and upscales to at least 192 px; the pipeline then
runs on that frame as usual, and boxes are mapped back to the photo's own pixels. Training builds its crops
of such datasets the same way (quantize.data.face_cache), so `analyze --face-crops` sees what training saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

BORDER = 0.25  # share of the image side added on each side
MIN_SIDE = 192  # px of the bordered frame: the face then clears the default minimum face size


@dataclass(frozen=True)
class FaceCropFrame:
    """The frame the pipeline sees: frame point = (photo point + pad) * scale."""

    frame: np.ndarray
    scale: float
    pad: int

    def to_photo(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, np.float32) / np.float32(self.scale) - np.float32(self.pad)


def face_crop_frame(image: np.ndarray, border: float = BORDER, min_side: int = MIN_SIDE) -> FaceCropFrame:
    pad = max(4, round(border * max(image.shape[:2])))
    fill = [int(v) for v in image.reshape(-1, image.shape[-1] if image.ndim == 3 else 1).mean(axis=0)]
    frame = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=fill)
    scale = max(1.0, min_side / max(frame.shape[:2]))
    if scale > 1.0:
        frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    return FaceCropFrame(frame, scale, pad)
