"""Skeleton overlays: draw people (keypoints, limbs, boxes) on an image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

# COCO's skeleton (0-based joint indices), as in the person category of the annotations.
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13),
    (13, 11),
    (16, 14),
    (14, 12),
    (11, 12),
    (5, 11),
    (6, 12),
    (5, 6),
    (5, 7),
    (6, 8),
    (7, 9),
    (8, 10),
    (1, 2),
    (0, 1),
    (0, 2),
    (1, 3),
    (2, 4),
    (3, 5),
    (4, 6),
)


def person_color(index: int) -> tuple[int, int, int]:
    """A distinct, bright RGB colour per person (golden-ratio hue steps)."""
    hue = int((index * 0.618033988749895 % 1.0) * 180)
    hsv = np.uint8([[[hue, 220, 255]]])
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def _as_arrays(person: Any) -> tuple[np.ndarray, float, Sequence[float] | None]:
    if isinstance(person, dict):
        return (
            np.asarray(person["keypoints"], dtype=np.float64),
            float(person.get("score", 1.0)),
            person.get("box"),
        )
    kp = getattr(person, "keypoints", person)
    return (
        np.asarray(kp, dtype=np.float64),
        float(getattr(person, "score", 1.0)),
        getattr(person, "box", None),
    )


def draw_people(
    image: np.ndarray,
    people: Sequence[Any],
    skeleton: Sequence[tuple[int, int]] | None = None,
    *,
    keypoint_threshold: float = 0.1,
    min_score: float = 0.0,
    draw_boxes: bool = True,
    thickness: int | None = None,
) -> np.ndarray:
    """A copy of `image` (RGB uint8 [H, W, 3]) with each person's joints, limbs and box drawn.

    `people`: `Person` objects, dicts with "keypoints" ([J, 3] x, y, score) or [J, 3] arrays.
    `skeleton`: limbs as 0-based joint pairs (default COCO's for 17 joints, none otherwise).
    Joints scoring at most `keypoint_threshold` and people below `min_score` are not drawn.
    """
    from keras_ehrnet.predictor import to_rgb_uint8

    canvas = to_rgb_uint8(image).copy()
    h, w = canvas.shape[:2]
    t = thickness or max(1, int(round(max(h, w) / 400)))
    for index, person in enumerate(people):
        kp, score, box = _as_arrays(person)
        if kp.ndim != 2 or kp.shape[1] < 2:
            raise ValueError(f"person {index}: keypoints must be [J, 3], got shape {kp.shape}")
        if score < min_score:
            continue
        limbs = skeleton if skeleton is not None else (COCO_SKELETON if kp.shape[0] == 17 else ())
        visible = kp[:, 2] > keypoint_threshold if kp.shape[1] > 2 else np.ones(len(kp), bool)
        color = person_color(index)
        pts = np.round(kp[:, :2]).astype(np.int64)
        for a, b in limbs:
            if a < len(kp) and b < len(kp) and visible[a] and visible[b]:
                cv2.line(canvas, tuple(map(int, pts[a])), tuple(map(int, pts[b])), color, t, cv2.LINE_AA)
        for j in np.flatnonzero(visible):
            cv2.circle(canvas, tuple(map(int, pts[j])), t + 2, color, -1, cv2.LINE_AA)
            cv2.circle(canvas, tuple(map(int, pts[j])), t + 2, (255, 255, 255), 1, cv2.LINE_AA)
        if draw_boxes and box is not None and visible.any():
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            cv2.rectangle(canvas, (x0, y0), (x1, y1), color, max(1, t // 2))
            cv2.putText(
                canvas,
                f"{score:.2f}",
                (x0, max(0, y0 - 3)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.4 * t,
                color,
                max(1, t // 2),
            )
    return canvas
