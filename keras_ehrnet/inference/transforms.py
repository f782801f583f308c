"""Test-time geometry: resize an image for the network and map predictions back.

HigherHRNet's test-time resize (``resize_align_multi_scale``) scales the image so
that its short side becomes the input size R (rounded up to a multiple of 64),
keeps the aspect ratio, rounds the long side up to the same multiple and
centres the image on the integer centre ``(int(w/2 + 0.5), int(h/2 + 0.5))``.
That is a similarity transform (one scale factor, no rotation), represented
here as a 2×3 affine matrix so that one matrix inverse maps every decoded
point back to original image pixels. Artefacts exported at a fixed input size
are served by the same transform with "fit inside and centre" (letterbox).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np

# Network inputs must be divisible by 32 (five stride-2 stages); the reference
# rounds to 64, which we keep by default for parity of sizes (R = 416 → 448).
DEFAULT_SIZE_MULTIPLE = 64
# A network input whose long side exceeds this many times R is refused (an
# extreme aspect ratio would otherwise ask for gigabytes of activations).
DEFAULT_MAX_ASPECT = 8.0


@dataclasses.dataclass(frozen=True)
class ScaleInput:
    """One test scale: the network input size and the affine from image pixels to it."""

    scale: float
    size: tuple[int, int]  # (height, width) of the network input
    affine: np.ndarray  # 2×3, original image pixels → network input pixels


@dataclasses.dataclass(frozen=True)
class TestPlan:
    """Every size and transform used to test one image (one entry per scale, largest first).

    Heatmaps of every scale are resized to `base_size` (the scale-1.0 input) where
    grouping happens; `base_affine` maps original image pixels to that grid.
    """

    image_size: tuple[int, int]  # (height, width) of the original image
    base_size: tuple[int, int]  # (height, width) of the grid where grouping happens
    base_affine: np.ndarray  # 2×3, image pixels → base grid pixels
    scales: tuple[ScaleInput, ...]

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Map [..., 2] (x, y) points from the base grid back to original image pixels."""
        return apply_affine(points, invert_affine(self.base_affine))


def _ceil_to(value: float, multiple: int) -> int:
    return int((value + multiple - 1) // multiple * multiple)


def _similarity(center: tuple[float, float], k: float, out_size: tuple[int, int]) -> np.ndarray:
    """Affine that scales by k about `center` and puts `center` at the middle of `out_size` (h, w)."""
    h, w = out_size
    cx, cy = center
    return np.array([[k, 0.0, w / 2.0 - k * cx], [0.0, k, h / 2.0 - k * cy]], dtype=np.float64)


def image_center(image_size: tuple[int, int]) -> tuple[int, int]:
    """The reference's integer image centre (x, y) = (int(w/2 + 0.5), int(h/2 + 0.5))."""
    h, w = image_size
    return int(w / 2.0 + 0.5), int(h / 2.0 + 0.5)


def multi_scale_size(
    image_size: tuple[int, int],
    input_size: int,
    scale: float = 1.0,
    min_scale: float = 1.0,
    size_multiple: int = DEFAULT_SIZE_MULTIPLE,
) -> tuple[tuple[int, int], float]:
    """Network input (height, width) and scale factor k for one test scale.

    The short side becomes ``ceil(min_scale·R)·scale/min_scale`` and the long side
    keeps the aspect ratio, rounded up at the smallest scale so that every scale
    is a whole multiple of `size_multiple` (as HigherHRNet's get_multi_scale_size).
    """
    h, w = image_size
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    if input_size <= 0 or input_size % 32:
        raise ValueError(f"input size must be a positive multiple of 32, got {input_size}")
    if scale <= 0 or min_scale <= 0:
        raise ValueError(f"scales must be positive, got scale={scale}, min_scale={min_scale}")
    min_input = _ceil_to(min_scale * input_size, size_multiple)
    ratio = scale / min_scale
    if w < h:
        w_r = int(min_input * ratio)
        h_r = int(_ceil_to(min_input / w * h, size_multiple) * ratio)
        k = w_r / w
    else:
        h_r = int(min_input * ratio)
        w_r = int(_ceil_to(min_input / h * w, size_multiple) * ratio)
        k = h_r / h
    if h_r % 32 or w_r % 32:
        raise ValueError(
            f"scale {scale} with input size {input_size} gives a network input of {h_r}x{w_r}, "
            "not divisible by 32; choose scales that are multiples of the smallest one"
        )
    return (h_r, w_r), k


def make_test_plan(
    image_size: tuple[int, int],
    input_size: int,
    scales: Sequence[float] = (1.0,),
    *,
    size_multiple: int = DEFAULT_SIZE_MULTIPLE,
    fixed_input_size: tuple[int, int] | None = None,
    max_aspect: float = DEFAULT_MAX_ASPECT,
) -> TestPlan:
    """The test-time sizes and transforms for one image.

    `fixed_input_size` (height, width): the network only takes that size (an
    exported artefact); the image is fitted inside it, centred (letterbox), and
    only scale 1.0 is possible. Otherwise the reference's multi-scale resize.
    """
    h, w = (int(v) for v in image_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image is empty: size {h}x{w}")
    scales = tuple(sorted((float(s) for s in scales), reverse=True))
    if not scales:
        raise ValueError("at least one test scale is needed")
    center = image_center((h, w))
    if fixed_input_size is not None:
        if scales != (1.0,):
            raise ValueError(
                f"multi-scale test {scales} needs a model that takes any input size; this one is "
                f"fixed at {fixed_input_size[0]}x{fixed_input_size[1]}"
            )
        fh, fw = (int(v) for v in fixed_input_size)
        k = min(fw / w, fh / h)
        affine = _similarity(center, k, (fh, fw))
        return TestPlan((h, w), (fh, fw), affine, (ScaleInput(1.0, (fh, fw), affine),))

    if 1.0 not in scales:
        raise ValueError(f"the test scales must include 1.0 (where grouping happens), got {scales}")
    min_scale = min(scales)
    entries = []
    for s in scales:
        size, k = multi_scale_size((h, w), input_size, s, min_scale, size_multiple)
        if max(size) > max_aspect * input_size * max(s, 1.0):
            raise ValueError(
                f"image of {w}x{h} pixels (width x height) needs a network input of {size[1]}x{size[0]} "
                f"at input size {input_size}: its aspect ratio is beyond {max_aspect:g}:1; crop it first"
            )
        entries.append(ScaleInput(s, size, _similarity(center, k, size)))
    base = next(e for e in entries if e.scale == 1.0)
    return TestPlan((h, w), base.size, base.affine, tuple(entries))


def parse_input_size(text: str) -> int | tuple[int, int]:
    """A command-line input size: "384" → 384 (a short side R), "384x576" → (384, 576) (height, width).

    Raises argparse.ArgumentTypeError (so argparse prints the message) for anything else.
    """
    import argparse

    try:
        parts = [int(v) for v in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1 and parts[0] > 0:
        return parts[0]
    if len(parts) == 2 and min(parts) > 0:
        return (parts[0], parts[1])
    raise argparse.ArgumentTypeError(f"expected R or HxW (e.g. 384 or 384x576), got {text!r}")


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """The inverse of a 2×3 affine matrix."""
    return cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64))


def apply_affine(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Apply a 2×3 affine to [..., 2] (x, y) points."""
    points = np.asarray(points, dtype=np.float64)
    a = np.asarray(affine, dtype=np.float64)
    return points @ a[:, :2].T + a[:, 2]


def warp_image(image: np.ndarray, scale_input: ScaleInput) -> np.ndarray:
    """The network input for one scale: the image warped (bilinear) to `scale_input.size`."""
    h, w = scale_input.size
    return cv2.warpAffine(image, scale_input.affine, (w, h), flags=cv2.INTER_LINEAR)
