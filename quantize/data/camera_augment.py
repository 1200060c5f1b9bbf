"""Training augmentation matched to what the device's cameras produce (docs/data.md, "Camera augmentation").

Works on the grey context crops of `quantize.data.face_cache`: one perspective warp takes the context crop to
the model input (pose: yaw/pitch as a plane homography, roll, scale, shift, anisotropic scale as from a camera
or upload that changed the aspect ratio, detector jitter), then what a sensor does to a small, far or badly lit
face: low resolution (a 20-48 px face upscaled), blur, exposure and gamma, noise, JPEG, and occluders (a hand
over the mouth or a cheek). White balance needs no draw: the model sees grey. Every draw comes from one
`numpy.random.Generator`, so a (seed, step) repeats exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class CameraAugment:
    flip: float = 0.5
    roll_deg: float = 12.0
    scale: float = 0.10  # +- relative zoom
    shift: float = 0.05  # +- share of the crop
    aspect: float = 0.25  # +- relative width/height change (anisotropic scale)
    yaw_deg: float = 30.0
    pitch_deg: float = 20.0
    pose_p: float = 0.5  # share of faces given a yaw/pitch draw
    low_res_p: float = 0.3
    low_res_px: tuple[int, int] = (20, 48)  # face crop side before upscaling (the model input is larger)
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.4, 1.4)
    exposure_p: float = 0.8
    gain: tuple[float, float] = (0.55, 1.5)
    gamma: tuple[float, float] = (0.65, 1.6)
    contrast: tuple[float, float] = (0.65, 1.3)
    noise_p: float = 0.3
    noise_sigma: tuple[float, float] = (2.0, 9.0)
    jpeg_p: float = 0.3
    jpeg_quality: tuple[int, int] = (15, 80)
    occlude_p: float = 0.12

    def warp(self, size: int, context: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
        """3x3 homographies from context-crop pixels to the size x size output (with the aspect draw, and the
        same warp at the true aspect), and whether to flip."""
        c_in, c_out = (context - 1) / 2.0, (size - 1) / 2.0
        # output = T(c_out + shift) . R(roll) . S(zoom * aspect) . H(pose) . T(-c_in)
        ang = np.deg2rad(rng.uniform(-self.roll_deg, self.roll_deg))
        zoom = 1.0 + rng.uniform(-self.scale, self.scale)
        stretch = 1.0 + rng.uniform(-self.aspect, self.aspect)
        sx, sy = (zoom * stretch, zoom) if rng.random() < 0.5 else (zoom, zoom * stretch)
        tx, ty = rng.uniform(-self.shift, self.shift, 2) * size
        pose = np.eye(3)
        if rng.random() < self.pose_p:
            pose = _plane_rotation(np.deg2rad(rng.uniform(-self.yaw_deg, self.yaw_deg)),
                                   np.deg2rad(rng.uniform(-self.pitch_deg, self.pitch_deg)), focal=1.6 * context)
        to_centre = np.array([[1, 0, -c_in], [0, 1, -c_in], [0, 0, 1.0]])

        def affine(sx: float, sy: float) -> np.ndarray:
            return np.array([[np.cos(ang) * sx, -np.sin(ang) * sy, c_out + tx],
                             [np.sin(ang) * sx, np.cos(ang) * sy, c_out + ty], [0, 0, 1.0]])

        flip = bool(rng.random() < self.flip)
        return affine(sx, sy) @ pose @ to_centre, affine(zoom, zoom) @ pose @ to_centre, flip

    def __call__(self, crop: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        """A grey uint8 context crop (C x C) -> an augmented size x size uint8 model input."""
        matrix, _, flip = self.warp(size, crop.shape[0], rng)
        return self._sensor(self._place(crop, matrix, size, flip), rng)

    def with_true_aspect(self, crop: np.ndarray, size: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(the augmented input, the same draws without the aspect change).

        A distillation teacher shown the second reads the face as it is, so the student learns to give a
        squeezed face the unsqueezed face's answer instead of copying the teacher's own aspect sensitivity.
        The first is bit-identical to `__call__` with the same generator state, and the generator ends in the
        same state: the sensor draws never depend on pixel values, so replaying them gives the same draws.
        """
        matrix, true_matrix, flip = self.warp(size, crop.shape[0], rng)
        replay = rng.bit_generator.state
        true_aspect = self._sensor(self._place(crop, true_matrix, size, flip), rng)
        rng.bit_generator.state = replay
        return self._sensor(self._place(crop, matrix, size, flip), rng), true_aspect

    @staticmethod
    def _place(crop: np.ndarray, matrix: np.ndarray, size: int, flip: bool) -> np.ndarray:
        out = cv2.warpPerspective(crop, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return out[:, ::-1] if flip else out

    def _sensor(self, out: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """What a sensor does to a small, far or badly lit face, and occluders."""
        size = out.shape[0]
        if rng.random() < self.occlude_p:
            out = _occlude(out, rng)
        x = out.astype(np.float32)
        if rng.random() < self.exposure_p:
            x = 255.0 * (x / 255.0) ** rng.uniform(*self.gamma)
            x = (x - x.mean()) * rng.uniform(*self.contrast) + x.mean() * rng.uniform(*self.gain)
        if rng.random() < self.low_res_p:
            side = int(rng.integers(self.low_res_px[0], self.low_res_px[1] + 1))
            small = cv2.resize(x, (side, side), interpolation=cv2.INTER_AREA)
            x = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
        if rng.random() < self.blur_p:
            x = cv2.GaussianBlur(x, (0, 0), rng.uniform(*self.blur_sigma))
        if rng.random() < self.noise_p:
            x = x + rng.normal(0.0, rng.uniform(*self.noise_sigma), x.shape).astype(np.float32)
        out = np.clip(x, 0, 255).astype(np.uint8)
        if rng.random() < self.jpeg_p:
            quality = int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))
            ok, data = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok:
                out = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
        return out


def _plane_rotation(yaw: float, pitch: float, focal: float) -> np.ndarray:
    """Homography of a frontal plane turned by yaw/pitch about its centre, seen by a pinhole at distance `focal`.

    In centred pixel coordinates a plane point (u, v) sits at R (u, v, 0) + (0, 0, f) and images at
    f (X / Z, Y / Z): H = diag(f, f, 1) [r1 r2 t] with t = (0, 0, f); with R = I that is the identity (up to
    scale), so the unturned face keeps its size.
    """
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    rot = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    h = np.diag([focal, focal, 1.0]) @ np.column_stack([rot[:, 0], rot[:, 1], [0.0, 0.0, focal]])
    return h / h[2, 2]


def _occlude(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A hand-like occluder (smooth, skin-toned grey blob) over the mouth or one cheek."""
    s = img.shape[0]
    out = img.copy()
    centres = [(0.5, 0.8), (0.28, 0.68), (0.72, 0.68)]
    cx, cy = centres[int(rng.integers(len(centres)))]
    centre = (int((cx + rng.uniform(-0.06, 0.06)) * s), int((cy + rng.uniform(-0.05, 0.05)) * s))
    axes = (int(rng.uniform(0.16, 0.3) * s), int(rng.uniform(0.1, 0.2) * s))
    mask = np.zeros_like(img)
    cv2.ellipse(mask, centre, axes, float(rng.uniform(-40, 40)), 0, 360, 255, -1)
    tone = float(np.clip(np.median(img) * rng.uniform(0.8, 1.25), 20, 235))
    texture = tone + rng.normal(0, 6, img.shape).astype(np.float32)
    texture = cv2.GaussianBlur(texture, (0, 0), 2.0)
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 1.5)
    return np.clip(out * (1 - alpha) + texture * alpha, 0, 255).astype(np.uint8)
