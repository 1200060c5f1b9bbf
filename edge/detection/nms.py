"""Non-maximum suppression for face boxes, in NumPy.

Weighted (blending) NMS as MediaPipe uses for BlazeFace: overlapping candidates
are averaged, weighted by score, instead of discarded. That steadies boxes and
landmarks from frame to frame, which the tracker and the per-track smoothing
downstream both profit from.
"""

from __future__ import annotations

import numpy as np


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against an (N, 4) array of xyxy boxes."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, points: np.ndarray,
                 iou_threshold: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster (N, 4) boxes by IoU around the best-scoring one; return blended boxes, best scores, blended points.

    `points` is (N, K, 2) and is blended with the same weights as the boxes.
    """
    order = np.argsort(-scores, kind="stable")
    boxes, scores, points = boxes[order], scores[order], points[order]
    keep_boxes, keep_scores, keep_points = [], [], []
    remaining = np.arange(len(scores))
    while remaining.size:
        overlap = iou_one_to_many(boxes[remaining[0]], boxes[remaining])
        members = remaining[overlap >= iou_threshold]
        weights = scores[members] / scores[members].sum()
        keep_boxes.append(weights @ boxes[members])
        keep_points.append(np.tensordot(weights, points[members], axes=1))
        keep_scores.append(scores[members[0]])
        remaining = remaining[overlap < iou_threshold]
    if not keep_scores:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, *points.shape[1:]), np.float32)
    return (np.asarray(keep_boxes, np.float32), np.asarray(keep_scores, np.float32),
            np.asarray(keep_points, np.float32))


def inside_better(boxes: np.ndarray, scores: np.ndarray, cover: float = 0.6) -> np.ndarray:
    """Mask of the boxes to keep: not `cover` or more inside a box that scores higher.

    A face is never mostly inside another face's box; such a box is a part of that face (RetinaFace fires on
    the mouth and chin of a close face at high score, a box IoU cannot merge: it is a fifth of the face).
    """
    keep = np.ones(len(scores), bool)
    areas = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-9)
    for i in np.argsort(-scores, kind="stable"):
        better = keep & (scores > scores[i])
        if not better.any():
            continue
        x1 = np.maximum(boxes[i, 0], boxes[better, 0])
        y1 = np.maximum(boxes[i, 1], boxes[better, 1])
        x2 = np.minimum(boxes[i, 2], boxes[better, 2])
        y2 = np.minimum(boxes[i, 3], boxes[better, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        keep[i] = not (inter / areas[i] >= cover).any()
    return keep
