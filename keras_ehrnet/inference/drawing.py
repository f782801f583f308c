"""Skeleton overlays: draw people (keypoints, limbs, boxes) on an image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from keras_ehrnet.data.validate import keypoint_categories, load_annotation_json
from keras_ehrnet.inference.images import read_image, to_rgb_uint8
from keras_ehrnet.keypoints import COCO_SKELETON, parse_skeleton


def person_color(index: int) -> tuple[int, int, int]:
    """A distinct, bright RGB colour per person (golden-ratio hue steps)."""
    hue = int((index * 0.618033988749895 % 1.0) * 180)
    hsv = np.uint8([[[hue, 220, 255]]])
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def _as_arrays(person: Any) -> tuple[np.ndarray, float, Sequence[float] | None, int | None]:
    if isinstance(person, dict):
        return (
            np.asarray(person["keypoints"], dtype=np.float64),
            float(person.get("score", 1.0)),
            person.get("box"),
            person.get("track_id"),
        )
    kp = getattr(person, "keypoints", person)
    return (
        np.asarray(kp, dtype=np.float64),
        float(getattr(person, "score", 1.0)),
        getattr(person, "box", None),
        getattr(person, "track_id", None),
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
    A person with a `track_id` (tracked video) is coloured by it and labelled "#id score".
    `skeleton`: limbs as 0-based joint pairs (default COCO's for 17 joints, none otherwise).
    Joints scoring at most `keypoint_threshold` and people below `min_score` are not drawn.
    """
    canvas = to_rgb_uint8(image).copy()
    h, w = canvas.shape[:2]
    t = thickness or max(1, int(round(max(h, w) / 400)))
    for index, person in enumerate(people):
        kp, score, box, track_id = _as_arrays(person)
        if kp.ndim != 2 or kp.shape[1] < 2:
            raise ValueError(f"person {index}: keypoints must be [J, 3], got shape {kp.shape}")
        if score < min_score:
            continue
        limbs = skeleton if skeleton is not None else (COCO_SKELETON if kp.shape[0] == 17 else ())
        visible = kp[:, 2] > keypoint_threshold if kp.shape[1] > 2 else np.ones(len(kp), bool)
        color = person_color(index if track_id is None else int(track_id))
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
                f"{score:.2f}" if track_id is None else f"#{track_id} {score:.2f}",
                (x0, max(0, y0 - 3)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.4 * t,
                color,
                max(1, t // 2),
            )
    return canvas


def ground_truth_people(annotations: Sequence[dict]) -> list[dict]:
    """COCO keypoint annotations as drawable people: labelled joints (v > 0) score 1, others 0."""
    people = []
    for ann in annotations:
        kp = np.asarray(ann.get("keypoints") or [], dtype=np.float64).reshape(-1, 3)
        if len(kp) and (kp[:, 2] > 0).any():
            people.append({"keypoints": np.column_stack([kp[:, :2], (kp[:, 2] > 0).astype(float)])})
    return people


def _fit(image: np.ndarray, box: int) -> np.ndarray:
    """`image` scaled to fit a box×box square (aspect kept)."""
    h, w = image.shape[:2]
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def write_comparison(
    ann_file: str | Any,
    image_dir: str | Any,
    predictions: dict[str, str | Any],
    path: str | Any,
    *,
    right_title: str = "prediction",
    keypoint_threshold: float = 0.1,
    panel: int = 320,
    pairs_per_row: int = 2,
) -> Any:
    """A PNG sheet: for each image of `ann_file`, its ground truth beside the predicted people.

    `predictions` maps an image's file name to the JSON that `predict_files` wrote for it
    (people with keypoints, score and box). Images without one are shown with an empty right
    panel, labelled so. Each panel is scaled to fit `panel`² and titled with its count of people.
    """
    import json
    from pathlib import Path

    data = load_annotation_json(ann_file)  # read once: people and skeleton come from the same dict
    category = keypoint_categories(data, ann_file)[0]
    skeleton = parse_skeleton(category.get("skeleton"), len(category["keypoints"]), ann_file)
    by_image: dict[int, list[dict]] = {}
    for ann in data.get("annotations", []):
        by_image.setdefault(ann["image_id"], []).append(ann)
    title_h = 22
    cells = []
    for info in sorted(data["images"], key=lambda i: i["file_name"]):
        image = read_image(Path(image_dir) / info["file_name"])
        truth = ground_truth_people(by_image.get(info["id"], []))
        # lines drawn at full resolution, thick enough to survive the shrink to `panel`
        thick = max(2, round(max(image.shape[:2]) / (panel / 2)))
        left = _fit(draw_people(image, truth, skeleton, draw_boxes=False, thickness=thick), panel)
        json_path = predictions.get(info["file_name"])
        if json_path is not None:
            people = json.loads(Path(json_path).read_text())["people"]
            right = _fit(
                draw_people(image, people, skeleton, keypoint_threshold=keypoint_threshold, thickness=thick),
                panel,
            )
            right_label = f"{right_title}: {len(people)}"
        else:
            right = np.zeros_like(left)
            right_label = "no prediction"
        height = title_h + max(left.shape[0], right.shape[0])
        pair = np.zeros((height, 2 * panel + 4, 3), np.uint8)
        for x0, img, text in (
            (0, left, f"{info['file_name']}: ground truth, {len(truth)} people"),
            (panel + 4, right, right_label),
        ):
            pair[title_h : title_h + img.shape[0], x0 : x0 + img.shape[1]] = img
            cv2.putText(
                pair, text, (x0 + 4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA
            )
        cells.append(pair)
    if not cells:
        raise ValueError(f"{ann_file}: no images to compare")
    rows = []
    for i in range(0, len(cells), pairs_per_row):
        row = cells[i : i + pairs_per_row]
        h = max(c.shape[0] for c in row)
        row = [np.pad(c, ((0, h - c.shape[0] + 6), (0, 8), (0, 0))) for c in row]
        row += [np.zeros_like(row[0])] * (pairs_per_row - len(row))
        rows.append(np.hstack(row))
    sheet = np.vstack(rows)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {out}")
    return out
