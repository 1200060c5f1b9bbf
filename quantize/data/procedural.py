"""Procedural cartoon-realistic faces whose geometry follows FACS AU definitions.

Unlimited identities (shape, skin tone, hair, eyes, lips, background, lighting)
drawn with OpenCV in the crop template's frame at 2x, so the five alignment
points are known exactly. Each AU moves the same features as in warps.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np

from edge.alignment import TEMPLATE_112

# Skin tones (RGB) spanning light to dark; identities interpolate between neighbours.
SKIN_TONES = np.float32(
    [[245, 215, 195], [230, 190, 160], [210, 165, 130], [180, 130, 95], [140, 95, 65], [95, 62, 42]]
)
HAIR = np.float32([[20, 15, 12], [60, 40, 25], [110, 75, 40], [170, 130, 80], [200, 170, 120], [120, 120, 120]])
IRIS = np.float32([[70, 45, 25], [40, 25, 15], [60, 100, 140], [80, 110, 70], [110, 90, 60]])


@dataclass(frozen=True)
class Identity:
    """Per-person appearance; derived deterministically from the person id."""

    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    lips: tuple[float, float, float]
    face_w: float  # half-width in IOD
    face_h: float  # half-height in IOD
    eye_w: float
    eye_h: float
    brow_thick: float
    lip_up: float
    lip_lo: float
    nose_w: float
    hair_style: int  # 0 short, 1 fringe, 2 long
    bg: tuple[tuple[float, float, float], tuple[float, float, float]]

    @staticmethod
    def from_person(person: str) -> Identity:
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(person.encode()).digest()[:8], "little"))

        def mix(table: np.ndarray) -> tuple[float, float, float]:
            i = rng.uniform(0, len(table) - 1)
            lo = int(i)
            c = table[lo] * (1 - (i - lo)) + table[min(lo + 1, len(table) - 1)] * (i - lo)
            return tuple(float(v) for v in np.clip(c * rng.uniform(0.92, 1.08, 3), 0, 255))

        skin = mix(SKIN_TONES)
        lips = tuple(
            float(v)
            for v in np.clip(np.float32(skin) * np.float32([0.85, 0.55, 0.58]) + rng.uniform(-10, 10, 3), 0, 255)
        )
        bg = tuple(tuple(float(v) for v in rng.uniform(30, 240, 3)) for _ in range(2))
        return Identity(
            skin=skin,
            hair=mix(HAIR),
            iris=mix(IRIS),
            lips=lips,
            face_w=rng.uniform(1.05, 1.3),
            face_h=rng.uniform(1.45, 1.75),
            eye_w=rng.uniform(0.2, 0.26),
            eye_h=rng.uniform(0.07, 0.1),
            brow_thick=rng.uniform(0.035, 0.07),
            lip_up=rng.uniform(0.05, 0.09),
            lip_lo=rng.uniform(0.07, 0.11),
            nose_w=rng.uniform(0.13, 0.19),
            hair_style=int(rng.integers(0, 3)),
            bg=bg,  # type: ignore[arg-type]
        )


def _poly(img: np.ndarray, pts: np.ndarray, colour, ss: int = 4) -> None:
    cv2.fillPoly(img, [np.round(pts * ss).astype(np.int32)], colour, cv2.LINE_AA, shift=2)


def _line(img: np.ndarray, pts: np.ndarray, colour, width: float, ss: int = 4) -> None:
    cv2.polylines(img, [np.round(pts * ss).astype(np.int32)], False, colour, max(1, round(width)), cv2.LINE_AA, shift=2)


def render_face(
    identity: Identity, intensity: dict[int, float], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a face at `size` in the template frame; returns (RGB uint8 image, five points (5, 2))."""
    t = {k: float(v) for k, v in intensity.items()}.get
    tpl = TEMPLATE_112 * (size / 112)
    u = float(np.linalg.norm(tpl[1] - tpl[0]))
    ident = identity
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    a, b = np.float32(ident.bg[0]), np.float32(ident.bg[1])
    ang = rng.uniform(0, np.pi)
    g = (np.cos(ang) * xx + np.sin(ang) * yy)[..., None]
    img = (a * (1 - g) + b * g).astype(np.float32)
    img += cv2.resize(rng.normal(0, 8, (size // 8, size // 8, 3)).astype(np.float32), (size, size))  # blotchy backdrop
    img = np.clip(img, 0, 255).astype(np.uint8)

    skin = ident.skin
    cx = float(tpl[:2, 0].mean())
    eye_y = float(tpl[:2, 1].mean())
    open_gap = (0.1 * t(25, 0) + 0.17 * t(26, 0)) * u
    jaw = 0.1 * t(26, 0) * u + open_gap
    head_c = np.float32([cx, eye_y + 0.35 * u])
    fw, fh = ident.face_w * u, ident.face_h * u
    theta = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    outline = np.stack([head_c[0] + fw * np.cos(theta), head_c[1] + fh * np.sin(theta)], -1)
    lower = outline[:, 1] > head_c[1]
    outline[lower, 1] += jaw * np.sin(theta[lower])
    outline[lower, 0] = head_c[0] + (outline[lower, 0] - head_c[0]) * (1 - 0.18 * np.sin(theta[lower]) ** 2)
    hair = tuple(ident.hair)
    if ident.hair_style == 2:
        _poly(
            img,
            np.stack([head_c[0] + 1.15 * fw * np.cos(theta), head_c[1] - 0.2 * u + 1.2 * fh * np.sin(theta)], -1),
            hair,
        )
    neck = np.float32(
        [
            [cx - 0.55 * u, head_c[1] + 0.8 * fh],
            [cx + 0.55 * u, head_c[1] + 0.8 * fh],
            [cx + 0.6 * u, size + 2],
            [cx - 0.6 * u, size + 2],
        ]
    )
    _poly(img, neck, tuple(0.8 * v for v in skin))
    for side in (-1, 1):
        _poly(
            img,
            np.stack(
                [cx + side * fw * 0.97 + 0.12 * u * np.cos(theta), eye_y + 0.2 * u + 0.25 * u * np.sin(theta)], -1
            ),
            tuple(0.9 * v for v in skin),
        )
    _poly(img, outline, skin)
    # hair: the top of a slightly larger ellipse, cut by a curved hairline (lower for a fringe)
    depth = (0.75 if ident.hair_style == 1 else 0.5) * u
    px, py = xx * size, yy * size
    inside = ((px - head_c[0]) / (1.07 * fw)) ** 2 + ((py - head_c[1] + 0.04 * u) / (1.05 * fh)) ** 2 <= 1
    hairline = (
        head_c[1] - fh + depth * (1 - 0.5 * ((px - head_c[0]) / fw) ** 2) + 0.25 * u * np.abs(px - head_c[0]) / fw
    )
    cap = inside & (py < hairline)
    img[cap] = np.uint8(hair)
    for side, ec in ((-1, tpl[0]), (1, tpl[1])):  # side -1 = image left
        _eye(img, ident, ec, side, u, t)
        _brow(img, ident, ec, side, u, t, cx)
    _nose(img, ident, tpl[2], u, t)
    corners = _mouth(img, ident, tpl[3], tpl[4], u, t, open_gap, cx)

    # lighting: directional shading over everything, then optics blur (sensor noise: generate.photometric)
    light = rng.uniform(-0.35, 0.35, 2)
    shade = 1 + light[0] * (xx - 0.5) * 2 + light[1] * (yy - 0.5)
    out = img.astype(np.float32) * shade[..., None] * rng.uniform(0.75, 1.2)
    out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 1.0) * size / 112)
    five = np.float32([tpl[0], tpl[1], tpl[2], corners[0], corners[1]])
    return np.clip(out, 0, 255).astype(np.uint8), five


def _eye(img, ident: Identity, c, side: int, u: float, t) -> None:
    w = ident.eye_w * u
    h_up = ident.eye_h * u * (1 + 0.9 * t(5, 0) - 0.45 * t(7, 0) - 0.2 * t(6, 0))
    h_lo = ident.eye_h * u * 0.7 * (1 - 0.45 * t(6, 0) - 0.6 * t(7, 0))
    xs = np.linspace(-w, w, 21)
    upper = np.stack([c[0] + xs, c[1] - h_up * (1 - (xs / w) ** 2)], -1)
    lower = np.stack([c[0] + xs[::-1], c[1] + h_lo * (1 - (xs[::-1] / w) ** 2)], -1)
    eye = np.vstack([upper, lower])
    mask = np.zeros(img.shape[:2], np.uint8)
    _poly(mask, eye, 255)
    layer = img.copy()
    _poly(layer, eye, (235, 232, 225))
    r = 0.42 * w
    cv2.circle(layer, (round(c[0] * 4), round(c[1] * 4)), round(r * 4), tuple(ident.iris), -1, cv2.LINE_AA, shift=2)
    cv2.circle(layer, (round(c[0] * 4), round(c[1] * 4)), round(r * 0.45 * 4), (10, 10, 10), -1, cv2.LINE_AA, shift=2)
    m = (mask > 0)[..., None]
    img[:] = np.where(m, layer, img)
    dark = tuple(0.35 * v for v in ident.skin)
    _line(img, upper, dark, 0.03 * u)
    _line(img, np.vstack([upper[-1:], lower]), tuple(0.7 * v for v in ident.skin), 0.015 * u)
    # lid crease above the eye follows the lid
    crease = upper.copy()
    crease[:, 1] -= 0.07 * u * (1 - 0.5 * t(5, 0))
    _line(img, crease[3:-3], tuple(0.75 * v for v in ident.skin), 0.015 * u)
    if t(6, 0) > 0:  # crow's feet and raised cheek fold under the eye
        outer = c + np.float32([side * w, 0])
        for ang in (-0.35, 0.0, 0.35):
            d = np.float32([np.cos(ang) * side, np.sin(ang)])
            _line(
                img,
                np.stack([outer + d * 0.05 * u, outer + d * 0.17 * u]),
                tuple((1 - 0.3 * t(6, 0)) * v for v in ident.skin),
                0.012 * u,
            )
        fold = lower.copy()
        fold[:, 1] += 0.06 * u
        _line(img, fold[3:-3], tuple((1 - 0.25 * t(6, 0)) * v for v in ident.skin), 0.02 * u)


def _brow(img, ident: Identity, c, side: int, u: float, t, cx: float) -> None:
    base = c[1] - 0.33 * u
    inner_x = c[0] - side * 0.22 * u + side * 0.07 * u * t(4, 0)
    outer_x = c[0] + side * 0.3 * u
    inner_y = base - 0.14 * u * t(1, 0) + 0.1 * u * t(4, 0) + 0.03 * u * t(9, 0)
    outer_y = base + 0.02 * u - 0.14 * u * t(2, 0) + 0.03 * u * t(4, 0)
    mid_y = base - 0.05 * u - 0.06 * u * (t(1, 0) + t(2, 0)) + 0.06 * u * t(4, 0)
    pts = np.float32([[inner_x, inner_y], [(inner_x + outer_x) / 2, mid_y], [outer_x, outer_y]])
    spline = np.stack([np.interp(np.linspace(0, 2, 15), [0, 1, 2], pts[:, k]) for k in range(2)], -1)
    _line(img, spline, tuple(ident.hair), ident.brow_thick * u)
    if t(4, 0) > 0:  # glabella furrow
        x = cx + side * 0.06 * u
        _line(
            img,
            np.float32([[x, base - 0.02 * u], [x * 0.98 + cx * 0.02, base + 0.15 * u]]),
            tuple((1 - 0.3 * t(4, 0)) * v for v in ident.skin),
            0.015 * u,
        )
    if t(1, 0) > 0 or t(2, 0) > 0:  # forehead lines
        k = max(t(1, 0), t(2, 0))
        for dy in (0.2, 0.3):
            _line(
                img,
                np.float32([[c[0] - 0.2 * u, base - dy * u], [c[0] + 0.2 * u, base - dy * u]]),
                tuple((1 - 0.2 * k) * v for v in ident.skin),
                0.012 * u,
            )


def _nose(img, ident: Identity, tip, u: float, t) -> None:
    skin = ident.skin
    lift = 0.06 * u * t(9, 0)
    nw = ident.nose_w * u
    for side in (-1, 1):
        nostril = np.float32([tip[0] + side * 0.07 * u, tip[1] + 0.06 * u - lift])
        cv2.ellipse(
            img,
            (round(nostril[0] * 4), round(nostril[1] * 4)),
            (round(0.035 * u * 4), round(0.018 * u * 4)),
            0,
            0,
            360,
            tuple(0.45 * v for v in skin),
            -1,
            cv2.LINE_AA,
            shift=2,
        )
        wing = np.float32(
            [
                [tip[0] + side * nw, tip[1] - 0.02 * u - lift],
                [tip[0] + side * nw * 1.05, tip[1] + 0.05 * u - lift],
                [tip[0] + side * 0.05 * u, tip[1] + 0.09 * u - lift],
            ]
        )
        _line(img, wing, tuple(0.75 * v for v in skin), 0.015 * u)
        _line(
            img,
            np.float32([[tip[0] + side * 0.06 * u, tip[1] - 0.5 * u], [tip[0] + side * 0.09 * u, tip[1] - 0.1 * u]]),
            tuple(0.88 * v for v in skin),
            0.02 * u,
        )
    if t(9, 0) > 0:
        for dy in (-0.45, -0.38, -0.31):
            _line(
                img,
                np.float32([[tip[0] - 0.08 * u, tip[1] + dy * u], [tip[0] + 0.08 * u, tip[1] + dy * u]]),
                tuple((1 - 0.35 * t(9, 0)) * v for v in skin),
                0.012 * u,
            )


def _mouth(img, ident: Identity, left, right, u: float, t, gap: float, cx: float) -> np.ndarray:
    skin = ident.skin
    shift = (
        np.float32([-0.1, -0.1]) * t(12, 0)
        + np.float32([-0.045, -0.01]) * t(14, 0)
        + np.float32([-0.02, 0.09]) * t(15, 0)
        + np.float32([-0.11, 0.02]) * t(20, 0)
        + np.float32([0.035, 0.0]) * t(23, 0)
    ) * u
    lc = left + shift
    rc = right + shift * np.float32([-1, 1])
    mid_y = (left[1] + right[1]) / 2 - 0.03 * u * t(17, 0)
    xs = np.linspace(0, 1, 21)
    line_x = lc[0] + (rc[0] - lc[0]) * xs
    bulge = 4 * xs * (1 - xs)
    corner_y = lc[1] + (rc[1] - lc[1]) * xs
    contact = corner_y * (1 - bulge) + mid_y * bulge
    thin = 1 - 0.45 * t(23, 0) - 0.6 * t(24, 0) - 0.3 * t(20, 0)
    up_h = ident.lip_up * u * max(0.3, thin) * bulge**0.6 + 0.07 * u * t(10, 0) * bulge
    lo_h = ident.lip_lo * u * max(0.3, thin) * bulge**0.6
    open_h = gap * bulge
    upper_top = np.stack([line_x, contact - up_h - 0.07 * u * t(10, 0) * bulge * 0], -1)
    upper_in = np.stack([line_x, contact - 0.07 * u * t(10, 0) * bulge * 0.5], -1)
    lower_in = np.stack([line_x, contact + open_h], -1)
    lower_bot = np.stack([line_x, contact + open_h + lo_h], -1)
    if gap > 0.5:
        _poly(img, np.vstack([upper_in, lower_in[::-1]]), (50, 20, 25))
        teeth = np.stack([line_x, contact + np.minimum(0.3 * open_h, 0.06 * u)], -1)
        _poly(img, np.vstack([upper_in, teeth[::-1]]), (200, 195, 185))
    lips = tuple(ident.lips)
    _poly(img, np.vstack([upper_top, upper_in[::-1]]), lips)
    _poly(img, np.vstack([lower_in, lower_bot[::-1]]), tuple(1.05 * v for v in lips))
    _line(img, upper_in if gap <= 0.5 else upper_in[:1], tuple(0.5 * v for v in lips), 0.012 * u)
    fold = 0.35 * max(t(12, 0), 0.6 * t(10, 0), 0.6 * t(9, 0))
    for side, corner in ((-1, lc), (1, rc)):
        if fold > 0:
            start = np.float32([cx + side * 0.2 * u, corner[1] - 0.3 * u])
            _line(
                img,
                np.stack([start, corner + np.float32([side * 0.08 * u, 0.03 * u])]),
                tuple((1 - fold) * v for v in skin),
                0.02 * u,
            )
        if t(14, 0) > 0:
            d = corner + np.float32([side * 0.06 * u, 0])
            _line(
                img,
                np.stack([d - (0, 0.03 * u), d + np.float32([0, 0.03 * u])]),
                tuple((1 - 0.35 * t(14, 0)) * v for v in skin),
                0.02 * u,
            )
    if t(17, 0) > 0:
        chin = np.float32([cx, mid_y + 0.38 * u + gap])
        cv2.ellipse(
            img,
            (round(chin[0] * 4), round(chin[1] * 4)),
            (round(0.16 * u * 4), round(0.07 * u * 4)),
            0,
            200,
            340,
            tuple((1 - 0.25 * t(17, 0)) * v for v in skin),
            max(1, round(0.02 * u)),
            cv2.LINE_AA,
            shift=2,
        )
    return np.stack([lc, rc])
