"""Small COCO-format keypoint datasets written on the fly, for the data tests."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

COCO_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip
CROWDPOSE_NAMES = [
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck",
]  # fmt: skip


def person(keypoints: dict[int, tuple[float, float]], num_joints: int, **extra) -> dict:
    """An annotation dict with the given {joint: (x, y)} visible (v = 2), others unlabelled."""
    flat = [0.0] * (3 * num_joints)
    for j, (x, y) in keypoints.items():
        flat[3 * j : 3 * j + 3] = [float(x), float(y), 2.0]
    xs = [x for x, _ in keypoints.values()] or [0.0]
    ys = [y for _, y in keypoints.values()] or [0.0]
    ann = {
        "keypoints": flat,
        "num_keypoints": len(keypoints),
        "iscrowd": 0,
        "bbox": [min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1],
        "category_id": 1,
        "segmentation": [],
    }
    ann.update(extra)
    return ann


def write_dataset(
    root: Path,
    images: list[dict],
    names: list[str] = COCO_NAMES,
    skeleton: list[list[int]] | None = None,
) -> tuple[Path, Path]:
    """Write images and annotations; returns (annotation file, image folder).

    Each entry of `images` has "size" (w, h), "people" (annotation dicts) and optionally
    "pixels" (an array to save, else a grey canvas with a white disc on every visible keypoint),
    "file_name" and "write" (False: leave the file out).
    """
    root = Path(root)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    data = {"images": [], "annotations": [], "categories": []}
    data["categories"].append(
        {"id": 1, "name": "person", "keypoints": list(names), "skeleton": skeleton or [[1, 2]]}
    )
    ann_id = 1
    for k, spec in enumerate(images):
        w, h = spec["size"]
        file_name = spec.get("file_name", f"{k:06d}.jpg")
        data["images"].append({"id": k + 1, "file_name": file_name, "width": w, "height": h})
        pixels = spec.get("pixels")
        if pixels is None:
            pixels = np.full((h, w, 3), 40, np.uint8)
            for ann in spec["people"]:
                kp = np.asarray(ann["keypoints"], float).reshape(-1, 3)
                for x, y, v in kp:
                    if v > 0:
                        cv2.circle(pixels, (round(x), round(y)), 2, (255, 255, 255), -1)
        if spec.get("write", True):
            cv2.imwrite(str(image_dir / file_name), pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
        for ann in spec["people"]:
            data["annotations"].append({**ann, "id": ann_id, "image_id": k + 1})
            ann_id += 1
    ann_file = root / "annotations.json"
    ann_file.write_text(json.dumps(data))
    return ann_file, image_dir
