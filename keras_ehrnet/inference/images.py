"""Reading images: a file or any image array → RGB uint8 [H, W, 3], with errors that name the file or value."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".ppm", ".pgm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


class ImageReadError(ValueError):
    """An image file that is missing or cannot be decoded."""


def to_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Any image array → RGB uint8 [H, W, 3]: grayscale repeated, alpha dropped.

    Value rule: uint8 as it is; uint16 divided by 257 (0..65535 → 0..255); other integers
    must lie in 0..255; floats whose maximum is at most 1 are taken as 0..1 and multiplied by
    255 (so a float image from most image libraries is not turned black), other floats must
    lie in 0..255 and are rounded. Anything else (NaN or infinite values, values outside
    those ranges, bool or non-numeric arrays, a batch, channels first) is refused with a
    ValueError that names the shape, dtype or value range.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        hint = ""
        if image.ndim == 4:
            hint = " (a batch? pass one image at a time)"
        elif image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] > 4:
            hint = " (channels first? use image.transpose(1, 2, 0))"
        raise ValueError(
            f"{name} must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]; got shape {image.shape}{hint}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    if image.dtype != np.uint8:
        if image.dtype == bool or not (
            np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
        ):
            raise ValueError(
                f"{name} must hold numbers in 0..255 (or floats in 0..1); got dtype {image.dtype}"
            )
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            raise ValueError(f"{name} holds NaN or infinite values (dtype {image.dtype})")
        low, high = image.min(), image.max()
        if image.dtype == np.uint16:
            image = image / 257.0
        elif np.issubdtype(image.dtype, np.floating) and low >= 0 and high <= 1:
            image = image * 255.0  # floats in 0..1
        elif low < 0 or high > 255:
            raise ValueError(
                f"{name} values must lie in 0..255 (or 0..1 for floats); got {low:.6g}..{high:.6g} "
                f"(dtype {image.dtype})"
            )
        image = np.rint(image).astype(np.uint8)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif image.shape[-1] == 4:
        image = image[..., :3]
    return np.ascontiguousarray(image)


def read_image(path: str | os.PathLike, *, ignore_orientation: bool = False) -> np.ndarray:
    """Read an image file as RGB uint8 [H, W, 3] (grayscale and RGBA converted).

    `ignore_orientation`: keep the stored pixel layout (COCO annotates it) instead of
    applying the EXIF rotation. Raises ImageReadError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageReadError(f"image file is empty (0 bytes): {path}")
    flags = cv2.IMREAD_COLOR | (cv2.IMREAD_IGNORE_ORIENTATION if ignore_orientation else 0)
    image = cv2.imdecode(data, flags)
    if image is None or image.size == 0:
        raise ImageReadError(f"cannot decode image {path}: not a readable image file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
