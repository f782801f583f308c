"""One random affine per sample, applied alike to image, ignore mask and keypoints.

The geometry follows the released HigherHRNet/EfficientHRNet training transforms: the crop is
a square box of `200 * scale` source pixels around the (shifted) image centre, where `scale`
is the short (or long) side / 200 times a random zoom in [min_scale, max_scale]; it is rotated
by up to ±max_rotation degrees, shifted by up to ±max_translate units of that 200-pixel box
(so 40 means ±20 % of the crop) and mirrored with probability flip_prob. Coordinates at an
output resolution r are the input-resolution coordinates times r / input_size, as in the
reference. Unlike the reference, the mirror is part of the affine, so image, masks and
keypoints are mirrored about the same axis at every resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Random-affine ranges (defaults: the paper and the released configs)."""

    max_rotation: float = 30.0
    min_scale: float = 0.75
    max_scale: float = 1.5
    max_translate: float = 40.0
    flip_prob: float = 0.5
    scale_type: str = "short"

    def __post_init__(self) -> None:
        if self.scale_type not in ("short", "long"):
            raise ValueError(f"scale_type must be 'short' or 'long', got {self.scale_type!r}")
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {self.min_scale}, {self.max_scale}")
        if self.max_rotation < 0 or self.max_translate < 0:
            raise ValueError("max_rotation and max_translate must be >= 0")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")


@dataclass(frozen=True)
class AffineParams:
    """One draw of the augmentation: zoom factor, rotation (degrees), centre shift (source px), mirror."""

    scale: float = 1.0
    rotation: float = 0.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    flip: bool = False


def draw_params(config: AugmentConfig, rng: np.random.Generator, width: int, height: int) -> AffineParams:
    """Draw the augmentation of one sample; the shift scales with the crop box, as in the reference."""
    scale = rng.uniform(config.min_scale, config.max_scale)
    rotation = rng.uniform(-config.max_rotation, config.max_rotation)
    box = _box_scale(config.scale_type, width, height) * scale
    shift_x, shift_y = rng.uniform(-1.0, 1.0, size=2) * config.max_translate * box
    flip = bool(rng.random() < config.flip_prob)
    return AffineParams(float(scale), float(rotation), float(shift_x), float(shift_y), flip)


def _box_scale(scale_type: str, width: int, height: int) -> float:
    side = min(width, height) if scale_type == "short" else max(width, height)
    return side / 200.0


def affine_matrix(
    width: int, height: int, input_size: int, params: AffineParams, scale_type: str = "short"
) -> np.ndarray:
    """2x3 float64 matrix mapping source pixel coordinates to input-resolution coordinates."""
    box = 200.0 * _box_scale(scale_type, width, height) * params.scale
    s = input_size / box
    cx = width / 2.0 + params.shift_x
    cy = height / 2.0 + params.shift_y
    half = input_size / 2.0
    # Scale about the (shifted) centre, then rotate by -rotation about the crop centre.
    theta = math.radians(-params.rotation)
    c, n = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -n], [n, c]])
    linear = rot * s
    offset = np.array([half, half]) - linear @ np.array([cx, cy])
    m = np.concatenate([linear, offset[:, None]], axis=1)
    if params.flip:
        m = np.array([[-1.0, 0.0, input_size - 1.0], [0.0, 1.0, 0.0]]) @ np.vstack([m, [0, 0, 1]])
    return m


def scale_matrix(matrix: np.ndarray, factor: float) -> np.ndarray:
    """The same affine expressed at a resolution `factor` times the input's (e.g. 1/4)."""
    return matrix * factor


def warp_image(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Bilinear warp into a size x size canvas; outside the source is black."""
    return cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def warp_mask(
    ignore: np.ndarray | None,
    source_shape: tuple[int, int],
    matrix: np.ndarray,
    size: int,
    ignore_padding: bool = True,
) -> np.ndarray:
    """Loss mask at one output resolution: uint8 [size, size], 1 = counted, 0 = ignored.

    `ignore` is the source-resolution ignore map (1 = ignore) or None. Nearest-neighbour
    sampling keeps the mask binary (the reference's bilinear warp thresholded at one half
    differs only along region borders). With `ignore_padding` the area outside the source
    image is ignored too, as the reference's zero-filled warp does.
    """
    if ignore is None and not ignore_padding:
        return np.ones((size, size), np.uint8)
    valid = np.ones(source_shape, np.uint8) if ignore is None else (ignore == 0).view(np.uint8)
    return cv2.warpAffine(
        valid,
        matrix,
        (size, size),
        flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0 if ignore_padding else 1,
    )


def transform_keypoints(
    keypoints: np.ndarray, matrix: np.ndarray, flip_index: Sequence[int] | None = None
) -> np.ndarray:
    """Apply the affine to [N, J, 3] keypoints (x, y, v); with `flip_index`, also swap left/right."""
    out = np.array(keypoints, dtype=np.float32, copy=True)
    xy = out[..., :2].astype(np.float64)
    out[..., :2] = xy @ matrix[:, :2].T + matrix[:, 2]
    if flip_index is not None:
        out = out[:, list(flip_index)]
    return out
