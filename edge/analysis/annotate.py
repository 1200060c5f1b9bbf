"""Draws what the model reported onto a frame: box, track id, top expression, and bars for the active AUs.

Pure function of (image, faces), OpenCV only, so it runs on a device as well
as on a workstation and tests can check exactly which pixels it touched.
Sizes follow the frame so labels stay readable from 320 px photos to 1080p.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edge.publish.payloads import FaceResult

# BGR, distinct on skin and on dark backgrounds; a track keeps its colour for its life.
PALETTE = ((80, 220, 80), (60, 180, 255), (255, 160, 60), (200, 90, 230), (60, 230, 230), (240, 240, 90),
           (120, 120, 255), (200, 200, 200))
FONT = cv2.FONT_HERSHEY_SIMPLEX
MAX_AUS = 6  # the strongest active AUs shown per face; the CSV has all of them


@dataclass(frozen=True)
class Style:
    font_scale: float
    text_px: int  # stroke width of text
    box_px: int  # stroke width of the face box
    pad: int
    bar_w: int  # length of a full (probability 1) AU bar

    @staticmethod
    def for_frame(height: int, width: int) -> Style:
        unit = min(height, width) / 480
        return Style(font_scale=max(0.35, 0.5 * unit), text_px=max(1, round(unit)), box_px=max(2, round(2 * unit)),
                     pad=max(2, round(4 * unit)), bar_w=max(30, round(70 * unit)))


def track_colour(track_id: int) -> tuple[int, int, int]:
    return PALETTE[track_id % len(PALETTE)]


def draw_faces(image: np.ndarray, faces: Sequence[FaceResult]) -> np.ndarray:
    """A copy of BGR `image` with every face annotated; the input array is left untouched."""
    out = image.copy()
    style = Style.for_frame(*out.shape[:2])
    for face in faces:
        _draw_face(out, face, style)
    return out


def _draw_face(out: np.ndarray, face: FaceResult, style: Style) -> None:
    w = out.shape[1]
    colour = track_colour(face.track_id)
    x1, y1 = round(face.box.x), round(face.box.y)
    x2, y2 = round(face.box.x + face.box.w), round(face.box.y + face.box.h)
    cv2.rectangle(out, (x1, y1), (x2, y2), colour, style.box_px)

    label = f"#{face.track_id} {face.top_expression} {face.top_score:.2f}"
    (tw, th), base = cv2.getTextSize(label, FONT, style.font_scale, style.text_px)
    tag_h = th + base + 2 * style.pad
    tag_y = y1 - tag_h if y1 - tag_h >= 0 else max(0, y1)  # above the box, or inside its top edge
    tag_x = min(max(0, x1), max(0, w - tw - 2 * style.pad))
    cv2.rectangle(out, (tag_x, tag_y), (tag_x + tw + 2 * style.pad, tag_y + tag_h), colour, cv2.FILLED)
    cv2.putText(out, label, (tag_x + style.pad, tag_y + style.pad + th), FONT, style.font_scale, (0, 0, 0),
                style.text_px, cv2.LINE_AA)

    _draw_au_bars(out, face, style, colour, (x1, y2))


def _draw_au_bars(out: np.ndarray, face: FaceResult, style: Style, colour: tuple[int, int, int],
                  anchor: tuple[int, int]) -> None:
    """A small panel under the box: one row per active AU, its name and a bar as long as its probability."""
    h, w = out.shape[:2]
    active = sorted(face.active_aus, key=lambda key: face.aus[key], reverse=True)[:MAX_AUS]
    rows = [(key, face.aus[key]) for key in active] or [("no active AU", None)]
    scale = style.font_scale * 0.85
    (name_w, th), base = cv2.getTextSize("AU00", FONT, scale, style.text_px)
    if not active:
        name_w = cv2.getTextSize(rows[0][0], FONT, scale, style.text_px)[0][0]
    row_h = th + base + style.pad
    panel_w = name_w + 3 * style.pad + (style.bar_w if active else 0)
    panel_h = len(rows) * row_h + style.pad
    px = min(max(0, anchor[0]), max(0, w - panel_w))
    py = anchor[1] + style.pad
    if py + panel_h > h:  # no room under the box: inside its bottom edge instead
        py = max(0, anchor[1] - panel_h - style.pad)
    region = out[py : py + panel_h, px : px + panel_w]
    region[:] = (region.astype(np.float32) * 0.3).astype(np.uint8)  # darken, so text reads on any background
    for i, (name, prob) in enumerate(rows):
        top = py + style.pad + i * row_h
        cv2.putText(out, name, (px + style.pad, top + th), FONT, scale, (255, 255, 255), style.text_px, cv2.LINE_AA)
        if prob is None:
            continue
        bx = px + 2 * style.pad + name_w
        cv2.rectangle(out, (bx, top), (bx + style.bar_w, top + th), (110, 110, 110), 1)
        cv2.rectangle(out, (bx, top), (bx + max(1, round(style.bar_w * prob)), top + th), colour, cv2.FILLED)
