"""Pictures of what the pipeline feeds the network, to check targets by eye."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from keras_ehrnet.data.augment import AugmentConfig
from keras_ehrnet.data.coco import CocoKeypoints
from keras_ehrnet.data.pipeline import build_dataset

_PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255]],
    np.uint8,
)  # fmt: skip


def decode_joints(joints: np.ndarray, width: int) -> np.ndarray:
    """float32 [P, J, 3] (x cell, y cell, visible) from int [P, J, 2] joints rows at a map `width` wide."""
    joints = np.asarray(joints)
    flat, visible = joints[..., 0], joints[..., 1]
    return np.stack([flat % width, flat // width, visible], axis=-1).astype(np.float32)


def _overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Image blended with a colour map of a [h, w] map in [0, 1], upsampled to the image."""
    r = image.shape[0]
    heat = cv2.resize(heat.astype(np.float32), (r, r), interpolation=cv2.INTER_NEAREST)
    colour = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    alpha = np.clip(heat, 0, 1)[..., None] * 0.7
    return (image * (1 - alpha) + colour * alpha).astype(np.uint8)


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    panel = np.ascontiguousarray(panel)
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    cv2.rectangle(panel, (0, 0), (w + 10, h + base + 8), (0, 0, 0), -1)
    cv2.putText(panel, text, (5, h + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return panel


def target_panels(
    image: np.ndarray,
    targets: dict[str, np.ndarray],
    skeleton: Sequence[tuple[int, int]],
    flip_index: Sequence[int] | None = None,
) -> np.ndarray:
    """A 2x2 RGB uint8 grid for one sample: keypoints + skeleton, both heatmaps, loss mask.

    Keypoints are drawn where the joints tensor puts them (centres of their quarter-resolution
    cells), coloured per tag row, so the picture shows exactly what the tag loss sees. With
    `flip_index`, the second keypoint of each left/right pair (COCO: the right one) is a ring,
    so a mirrored sample must still show rings on the people's right side.
    """
    image = np.clip(image, 0, 255).astype(np.uint8)
    r = image.shape[0]
    q = r // 4
    kp = image.copy()
    for p, row in enumerate(decode_joints(targets["joints"], q)):
        visible = row[:, 2] > 0
        if not visible.any():
            continue
        x, y = row[:, 0] * 4 + 1.5, row[:, 1] * 4 + 1.5  # centre of the cell in input pixels
        colour = tuple(int(c) for c in _PALETTE[p % len(_PALETTE)])
        for a, b in skeleton:
            if visible[a] and visible[b]:
                cv2.line(kp, (int(x[a]), int(y[a])), (int(x[b]), int(y[b])), colour, 2, cv2.LINE_AA)
        for k in np.flatnonzero(visible):
            ring = flip_index is not None and flip_index[k] < k
            cv2.circle(kp, (int(x[k]), int(y[k])), 4 if ring else 3, colour, 1 if ring else -1, cv2.LINE_AA)
    hq = _overlay(image, np.asarray(targets["heatmaps_quarter"]).max(axis=-1))
    hh = _overlay(image, np.asarray(targets["heatmaps_half"]).max(axis=-1))
    ignored = cv2.resize(np.asarray(targets["mask_half"]), (r, r), interpolation=cv2.INTER_NEAREST) == 0
    mask = image.copy()
    mask[ignored] = (mask[ignored] * 0.35 + np.array([255, 0, 0]) * 0.65).astype(np.uint8)
    top = np.concatenate([_label(kp, "keypoints (joints, R/4)"), _label(hq, "heatmaps R/4")], axis=1)
    bottom = np.concatenate([_label(hh, "heatmaps R/2"), _label(mask, "mask R/2 (red = ignored)")], axis=1)
    return np.concatenate([top, bottom], axis=0)


def write_target_pngs(
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    input_size: int,
    n: int = 8,
    seed: int = 0,
    training: bool = True,
    augment: AugmentConfig | None = None,
) -> list[Path]:
    """Write `n` PNG grids (see target_panels) of pipeline samples into `out_dir`; returns their paths."""
    dataset = CocoKeypoints(ann_file, image_dir, require_annotations=training)
    ds = build_dataset(
        dataset,
        input_size=input_size,
        batch_size=1,
        training=training,
        augment=augment,
        seed=seed,
        epochs=None,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (images, targets) in enumerate(tqdm(ds.take(n), total=n, desc="targets", unit="img")):
        sample = {k: v[0].numpy() for k, v in targets.items()}
        panel = target_panels(images[0].numpy(), sample, dataset.skeleton, dataset.flip_index)
        path = out / f"targets_{i:03d}.png"
        if not cv2.imwrite(str(path), panel[..., ::-1]):
            raise OSError(f"cannot write {path}")
        paths.append(path)
    return paths
