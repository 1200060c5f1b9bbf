"""Face alignment: a similarity transform from five landmarks onto the crop template.

Training data (quantize/data) and the device pipeline both crop through this
module, so a model sees the same geometry in the field as in training.
"""

from __future__ import annotations

import math

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
    """2x3 least-squares similarity (rotation, uniform scale, translation) mapping src -> dst points.

    Closed form (Umeyama 1991; in 2D the similarity is one complex factor a with w = a z + b): with
    centred points z, w, a = sum(conj(z) w) / sum(|z|^2). Every point counts, so a noisy landmark moves the
    crop a little instead of being voted out or in (OpenCV's robust estimators on five points flip
    between subsets from one frame to the next, and are not the least-squares fit).
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need matching point sets of at least 2 points, got {src.shape} and {dst.shape}")
    # Python floats, not NumPy: on five points NumPy's per-call overhead is most of the cost (~5x slower per face).
    (sx, sy), (dx, dy) = src.T.tolist(), dst.T.tolist()
    n = len(sx)
    msx, msy, mdx, mdy = sum(sx) / n, sum(sy) / n, sum(dx) / n, sum(dy) / n
    zx, zy = [v - msx for v in sx], [v - msy for v in sy]
    wx, wy = [v - mdx for v in dx], [v - mdy for v in dy]
    spread = sum(x * x + y * y for x, y in zip(zx, zy, strict=True))
    largest = max(max(map(abs, sx)), max(map(abs, sy)))
    if not math.isfinite(spread) or spread <= 1e-12 * max(1.0, largest) ** 2:
        raise ValueError("landmarks are degenerate (no similarity transform fits them)")
    # a = sum(conj(z) w) / sum(|z|^2), written out in real and imaginary parts
    re = sum(a * c + b * d for a, b, c, d in zip(zx, zy, wx, wy, strict=True)) / spread
    im = sum(a * d - b * c for a, b, c, d in zip(zx, zy, wx, wy, strict=True)) / spread
    return np.array([[re, -im, mdx - (re * msx - im * msy)], [im, re, mdy - (im * msx + re * msy)]], np.float32)


def align_face(image: np.ndarray, landmarks: np.ndarray, template: np.ndarray, size: int) -> np.ndarray:
    """Warp `image` so that `landmarks` (5x2, image pixels) land on `template` in a size x size crop."""
    matrix = similarity_matrix(landmarks, template)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
