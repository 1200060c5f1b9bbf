"""Face alignment: a similarity transform from five landmarks onto the crop template.

Training data (quantize/data) and the device pipeline both crop through this
module, so a model sees the same geometry in the field as in training.
"""

from __future__ import annotations

import cv2
import numpy as np

# Five-point template (left eye centre, right eye centre, nose tip, left and
# right mouth corners; "left" = image left) for a 112x112 crop. It is the
# widely used ArcFace layout; it keeps brows and chin inside the crop.
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def template_for(size: int, base: np.ndarray = TEMPLATE_112, base_size: int = 112) -> np.ndarray:
    return (base * (size / base_size)).astype(np.float32)


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 least-squares similarity (rotation, uniform scale, translation) mapping src -> dst points."""
    src = np.asarray(src, dtype=np.float32).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float32).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need matching point sets of at least 2 points, got {src.shape} and {dst.shape}")
    matrix, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    if matrix is None:
        raise ValueError("landmarks are degenerate (no similarity transform fits them)")
    return matrix.astype(np.float32)


def align_face(image: np.ndarray, landmarks: np.ndarray, template: np.ndarray, size: int) -> np.ndarray:
    """Warp `image` so that `landmarks` (5x2, image pixels) land on `template` in a size x size crop."""
    matrix = similarity_matrix(landmarks, template)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
