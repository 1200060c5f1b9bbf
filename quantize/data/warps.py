"""AU-driven warps of a real aligned face using its 189-point template.

Each AU moves a few handles (landmark groups) by a displacement measured in
inter-ocular distances (IOD), spread by a Gaussian; AUs add. Lips part / jaw drop
open the mouth with a sharp step along the lip line and paint the gap (teeth and
mouth interior). Wrinkles that a warp cannot make (glabella, nose, crow's feet,
nasolabial fold, dimples) are drawn as soft darkening. Geometry follows the FACS
appearance changes in edge.labels.ACTION_UNITS. The field is inverted by one
fixed-point step, which is accurate for these small displacements.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge.labels import DEFAULT_LABELS

Vec = tuple[float, float]


@dataclass(frozen=True)
class Handle:
    """Move the mean of `points` by `shift` (IOD units, per unit AU intensity), Gaussian radius `sigma` IOD.

    `mirror` makes the handle bilateral: the same handle on the other side with x flipped.
    """

    points: tuple[int, ...]
    shift: Vec
    sigma: float
    mirror: tuple[int, ...] | None = None


# Left side (image left) indices; mirrors are the right-side equivalents. "Outward" = -x on the left.
_BROW_IN = ((75, 76, 84), (77, 78, 85))
_BROW_OUT = ((71, 72, 83), (81, 82, 86))
_BROW_MID = ((73, 74), (79, 80))
_UPPER_LID = ((19, 20, 21), (24, 25, 26))
_LOWER_LID = ((28, 29, 30), (31, 32, 33))
_CHEEK = ((44, 45, 46, 164, 165), (47, 48, 49, 167, 168))
_NOSE_WING = ((62, 63, 64), (67, 68, 69))
_CORNER = ((87,), (93,))
_NASOLABIAL = ((158, 159), (161, 162))


def _pair(pair: tuple[tuple[int, ...], tuple[int, ...]], shift: Vec, sigma: float) -> Handle:
    return Handle(pair[0], shift, sigma, pair[1])


HANDLES: dict[int, tuple[Handle, ...]] = {
    1: (_pair(_BROW_IN, (0.0, -0.14), 0.13), Handle((75, 76, 77, 78), (0.0, -0.05), 0.22)),
    2: (_pair(_BROW_OUT, (0.0, -0.14), 0.15), _pair(_BROW_MID, (0.0, -0.06), 0.14)),
    4: (_pair(_BROW_IN, (0.07, 0.09), 0.13), _pair(_BROW_MID, (0.03, 0.06), 0.15), _pair(_BROW_OUT, (0.0, 0.03), 0.15)),
    5: (_pair(_UPPER_LID, (0.0, -0.06), 0.07),),
    6: (_pair(_CHEEK, (0.0, -0.08), 0.2), _pair(_LOWER_LID, (0.0, -0.04), 0.06)),
    7: (_pair(_LOWER_LID, (0.0, -0.05), 0.06), _pair(_UPPER_LID, (0.0, 0.025), 0.06)),
    9: (
        _pair(_NOSE_WING, (0.0, -0.07), 0.1),
        Handle((89, 90, 91), (0.0, -0.03), 0.1),
        _pair(_BROW_IN, (0.02, 0.04), 0.1),
    ),
    10: (Handle((89, 90, 91, 95, 96, 97), (0.0, -0.07), 0.1), _pair(_NASOLABIAL, (0.0, -0.03), 0.12)),
    12: (_pair(_CORNER, (-0.1, -0.1), 0.13), _pair(_CHEEK, (0.0, -0.03), 0.2)),
    14: (_pair(_CORNER, (-0.045, -0.01), 0.1),),
    15: (_pair(_CORNER, (-0.02, 0.09), 0.11),),
    17: (Handle((174, 175, 176, 177, 178), (0.0, -0.07), 0.13), Handle((104, 105, 106, 107, 108), (0.0, -0.04), 0.08)),
    20: (_pair(_CORNER, (-0.11, 0.02), 0.12),),
    23: (
        _pair(_CORNER, (0.035, 0.0), 0.08),
        Handle((88, 89, 90, 91, 92), (0.0, 0.025), 0.06),
        Handle((104, 105, 106, 107, 108), (0.0, -0.025), 0.06),
    ),
    24: (Handle((88, 89, 90, 91, 92), (0.0, 0.035), 0.07), Handle((104, 105, 106, 107, 108), (0.0, -0.04), 0.07)),
}
# Mouth opening at the lip line, IOD per unit intensity: (lips part, jaw drop).
OPEN_25, OPEN_26, JAW_26 = 0.1, 0.17, 0.1
_LIP_UPPER_INNER = (94, 95, 96, 97, 98)
_LIP_LOWER_INNER = (99, 100, 101, 102, 103)


def _iod(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[0] - points[1]))


def _handle_arrays(points: np.ndarray, intensity: dict[int, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    iod = _iod(points)
    centres, shifts, sigmas = [], [], []
    for au, t in intensity.items():
        if t <= 0 or au not in HANDLES:
            continue
        for h in HANDLES[au]:
            sides = [(h.points, 1.0)] + ([(h.mirror, -1.0)] if h.mirror else [])
            for idx, sign in sides:
                centres.append(points[list(idx)].mean(axis=0))
                shifts.append((sign * h.shift[0] * iod * t, h.shift[1] * iod * t))
                sigmas.append(h.sigma * iod)
    if not centres:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
    return np.float32(centres), np.float32(shifts), np.float32(sigmas)


def handle_field(points: np.ndarray, intensity: dict[int, float], size: int) -> np.ndarray:
    """Dense displacement (size, size, 2) of the Gaussian handles, evaluated on the pixel grid."""
    centres, shifts, sigmas = _handle_arrays(points, intensity)
    if len(centres) == 0:
        return np.zeros((size, size, 2), np.float32)
    step = 2  # the field is smooth: evaluate on a coarse grid, then upsample
    g = np.arange(0, size, step, dtype=np.float32) + (step - 1) / 2
    gx, gy = np.meshgrid(g, g)
    d2 = (gx[..., None] - centres[:, 0]) ** 2 + (gy[..., None] - centres[:, 1]) ** 2
    w = np.exp(-d2 / (2 * sigmas**2))
    field = np.stack([w @ shifts[:, 0], w @ shifts[:, 1]], axis=-1).astype(np.float32)
    return cv2.resize(field, (size, size), interpolation=cv2.INTER_LINEAR)


def displace_points(points: np.ndarray, intensity: dict[int, float]) -> np.ndarray:
    """Forward-move landmarks by the handle field (the warped face's landmarks)."""
    centres, shifts, sigmas = _handle_arrays(points, intensity)
    if len(centres) == 0:
        return points.copy()
    d2 = ((points[:, None, :] - centres[None]) ** 2).sum(-1)
    return (points + np.exp(-d2 / (2 * sigmas**2)) @ shifts).astype(np.float32)


def _lip_line(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mid = (points[list(_LIP_UPPER_INNER)] + points[list(_LIP_LOWER_INNER)]) / 2
    line = np.vstack([points[87], mid, points[93]])
    line = line[np.argsort(line[:, 0])]
    return line[:, 0], line[:, 1]


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _mouth_geometry(points: np.ndarray, intensity: dict[int, float], size: int):
    """Per-column lip line, opening height and jaw drop (all in pixels) after the handle warp."""
    iod = _iod(points)
    xs = np.arange(size, dtype=np.float32)
    lx, ly = _lip_line(points)
    y_line = np.interp(xs, lx, ly).astype(np.float32)
    cx, hw = (points[87, 0] + points[93, 0]) / 2, max(1.0, (points[93, 0] - points[87, 0]) / 2)
    lens = np.clip(1 - ((xs - cx) / hw) ** 2, 0, 1)
    t25, t26 = intensity.get(25, 0.0), intensity.get(26, 0.0)
    opening = (OPEN_25 * t25 + OPEN_26 * t26) * iod * lens
    jaw = JAW_26 * t26 * iod * np.exp(-(((xs - cx) / (1.1 * iod)) ** 2))
    return y_line, opening.astype(np.float32), jaw.astype(np.float32), iod


def warp_face(image: np.ndarray, points: np.ndarray, intensity: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """Apply AU `intensity` ({AU number: 0..1}) to an aligned square crop with landmarks `points` (crop pixels).

    Returns the warped crop and the warped landmarks.
    """
    size = image.shape[0]
    grid_x, grid_y = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
    moved = displace_points(points, intensity)
    field = handle_field(points, intensity, size)
    # mouth step, defined in output coordinates
    y_line, opening, jaw, iod = _mouth_geometry(moved, intensity, size)
    below = grid_y - y_line[None, :]
    sharp = (below > 0).astype(np.float32) * opening[None, :]
    soft = _smoothstep(below / (0.35 * iod)) * jaw[None, :]
    mid_x, mid_y = grid_x, grid_y - sharp - soft
    # invert the handle field: src = p - d(p - d(p)), d sampled bilinearly
    fx0 = cv2.remap(field, mid_x, mid_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    fx1 = cv2.remap(field, mid_x - fx0[..., 0], mid_y - fx0[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    src_x, src_y = mid_x - fx1[..., 0], mid_y - fx1[..., 1]
    out = cv2.remap(image, src_x, src_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if opening.max() > 0.5:
        out = _paint_mouth(out, below, opening, iod)
    out = _wrinkles(out, moved, intensity, iod)
    lower = np.interp(moved[:, 0], np.arange(size), opening) * (
        moved[:, 1] > np.interp(moved[:, 0], np.arange(size), y_line)
    )
    moved = moved + np.stack([np.zeros_like(lower), lower], -1).astype(np.float32)
    return out, moved


def _paint_mouth(image: np.ndarray, below: np.ndarray, opening: np.ndarray, iod: float) -> np.ndarray:
    gap = (below > 0) & (below < opening[None, :])
    if not gap.any():
        return image
    alpha = cv2.GaussianBlur(gap.astype(np.float32), (0, 0), 0.6)[..., None]
    skin = image[gap].reshape(-1, 3).astype(np.float32).mean(axis=0) if gap.sum() > 3 else np.full(3, 128.0)
    light = float(np.clip(image.astype(np.float32).mean() / 140.0, 0.5, 1.3))
    teeth_h = np.minimum(0.3 * opening, 0.06 * iod)[None, :]
    teeth = (below < teeth_h).astype(np.float32)
    teeth = cv2.GaussianBlur(teeth, (0, 0), 0.5)[..., None]
    dark = np.float32([48, 20, 24]) * light + 0.1 * skin
    white = np.float32([185, 178, 168]) * light
    fill = teeth * white + (1 - teeth) * dark
    out = image.astype(np.float32) * (1 - alpha) + fill * alpha
    return np.clip(out, 0, 255).astype(np.uint8)


def _wrinkles(image: np.ndarray, p: np.ndarray, intensity: dict[int, float], iod: float) -> np.ndarray:
    """Soft darkening along creases the warp cannot produce (strength scales with AU intensity)."""
    ss = 4  # draw at 4x and area-downsample: thin, anti-aliased creases
    h, w = image.shape[:2]
    shade = np.zeros((h * ss, w * ss), np.float32)
    u = iod
    width = max(1, round(0.035 * u * ss))

    def line(a: np.ndarray, b: np.ndarray, strength: float) -> None:
        if strength > 0:
            pa = tuple(round(v * ss) for v in a)
            pb = tuple(round(v * ss) for v in b)
            cv2.line(shade, pa, pb, float(strength), width, cv2.LINE_AA)

    t = intensity.get
    inner = (p[76] + p[77]) / 2
    for dx in (-0.06, 0.06):  # AU4 glabella furrows
        line(inner + np.float32([dx * u, -0.02 * u]), inner + np.float32([dx * u * 0.8, 0.18 * u]), 0.55 * t(4, 0))
    for dy in (0.0, 0.06):  # AU9 horizontal nose-root wrinkles
        c = (p[51] + p[57]) / 2 + (0, dy * u)
        line(c - (0.08 * u, 0), c + np.float32([0.08 * u, 0]), 0.4 * t(9, 0))
    for corner, sign in ((p[18], -1), (p[27], 1)):  # AU6 crow's feet
        for ang in (-0.35, 0.0, 0.35):
            d = np.float32([np.cos(ang) * sign, np.sin(ang)])
            line(corner + d * 0.05 * u, corner + d * 0.17 * u, 0.4 * t(6, 0))
    s = 0.4 * max(t(12, 0), 0.6 * t(10, 0), 0.6 * t(9, 0))  # nasolabial fold deepens
    for wing, corner, sign in ((p[63], p[87], -1), (p[68], p[93], 1)):
        start = wing + np.float32([sign * 0.05 * u, 0.02 * u])
        end = corner + np.float32([sign * 0.09 * u, 0.03 * u])
        line(start, (start + end) / 2 + (sign * 0.03 * u, 0), s)
        line((start + end) / 2 + (sign * 0.03 * u, 0), end, s)
    for corner, sign in ((p[87], -1), (p[93], 1)):  # AU14 dimples
        c = corner + np.float32([sign * 0.07 * u, 0.0])
        line(c - (0, 0.04 * u), c + np.float32([0, 0.04 * u]), 0.55 * t(14, 0))
    chin = p[list((174, 175, 176, 177, 178))].mean(axis=0)  # AU17 chin boss
    line(chin - (0.15 * u, 0.07 * u), chin + np.float32([0.15 * u, -0.07 * u]), 0.3 * t(17, 0))
    if shade.max() <= 0:
        return image
    shade = cv2.resize(shade, (w, h), interpolation=cv2.INTER_AREA)
    shade = cv2.GaussianBlur(shade, (0, 0), max(0.7, 0.03 * u))
    out = image.astype(np.float32) * (1 - 0.45 * np.clip(shade, 0, 1))[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def intensity_dict(intensity: np.ndarray) -> dict[int, float]:
    """{AU number: intensity} from a DEFAULT_LABELS-ordered vector."""
    return {n: float(v) for n, v in zip(DEFAULT_LABELS.aus, intensity, strict=True) if v > 0}
