"""Pieces every exporter shares: sizes, the letterbox (in TensorFlow), calibration images, metadata."""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keras_ehrnet._tf import tf
from keras_ehrnet.fileio import atomic_write_json

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_CALIBRATION_IMAGES = 100
log = logging.getLogger("keras_ehrnet.deploy")
_SKIPPED: contextvars.ContextVar[list[dict] | None] = contextvars.ContextVar(
    "calibration_skipped", default=None
)


@contextlib.contextmanager
def collect_skipped() -> Iterator[list[dict]]:
    """Inside the block, calibration images that cannot be read are skipped and listed in the
    yielded list ({"input": path, "reason": …}), so a caller can report them (and fail if asked)."""
    records: list[dict] = []
    token = _SKIPPED.set(records)
    try:
        yield records
    finally:
        _SKIPPED.reset(token)


def as_size(value: int | Sequence[int] | None) -> tuple[int, int] | None:
    """An input size (R or (H, W)) as (H, W), checked to be positive multiples of 32."""
    if value is None:
        return None
    size = (int(value), int(value)) if np.isscalar(value) else tuple(int(v) for v in value)
    if len(size) != 2 or min(size) <= 0 or size[0] % 32 or size[1] % 32:
        raise ValueError(f"input size must be a positive multiple of 32 (R or (H, W)); got {value!r}")
    return size


def model_input_size(model: Any) -> tuple[int, int] | None:
    """The fixed (H, W) a model was built for, or None if it takes any size."""
    shape = tuple(model.inputs[0].shape[1:3])
    return None if None in shape else (int(shape[0]), int(shape[1]))


def resolve_size(
    model: Any, input_size: int | Sequence[int] | None, *, fixed: bool
) -> tuple[int, int] | None:
    """The export size: the one asked for, else the model's own, else (if `fixed`) the level's native R."""
    size = as_size(input_size)
    own = model_input_size(model)
    if size is not None and own is not None and size != own:
        raise ValueError(
            f"the model was built for input {own[0]}x{own[1]}; cannot export it at {size[0]}x{size[1]}"
        )
    size = size or own
    if size is None and fixed:
        native = getattr(getattr(model, "config", None), "input_size", None)
        if native is None:
            raise ValueError("this format needs a fixed input size: pass input_size (--input-size R)")
        size = (int(native), int(native))
    return size


def native_size(model: Any, size: tuple[int, int] | None) -> tuple[int, int]:
    """The size images are letterboxed to where one size is needed (encoded-image signature)."""
    if size is not None:
        return size
    r = int(getattr(getattr(model, "config", None), "input_size", 512))
    return (r, r)


def letterbox_affine(image_size: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """2×3 affine, image pixels → a (H, W) canvas: fit inside and centre (as keras_ehrnet.inference.transforms).

    Scale k = min(W/w, H/h) about the reference's integer image centre
    (int(w/2 + 0.5), int(h/2 + 0.5)), which lands on the canvas centre.
    """
    hw = tf.cast(image_size, tf.float32)
    out_h, out_w = float(size[0]), float(size[1])
    k = tf.minimum(out_w / hw[1], out_h / hw[0])
    cx = tf.floor(hw[1] / 2.0 + 0.5)
    cy = tf.floor(hw[0] / 2.0 + 0.5)
    zero = tf.zeros_like(k)
    return tf.stack([tf.stack([k, zero, out_w / 2.0 - k * cx]), tf.stack([zero, k, out_h / 2.0 - k * cy])])


def letterbox_tf(image: tf.Tensor, size: Sequence[int]) -> tuple[tf.Tensor, tf.Tensor]:
    """One RGB image [h, w, 3] (uint8) → (uint8 [H, W, 3] letterboxed, its 2×3 affine).

    Bilinear warp with black borders, the same pixels as cv2.warpAffine does
    for the evaluation program, so served and evaluated inputs agree.
    """
    affine = letterbox_affine(tf.shape(image)[:2], size)
    k, tx, ty = affine[0, 0], affine[0, 2], affine[1, 2]
    inverse = tf.stack([1.0 / k, 0.0, -tx / k, 0.0, 1.0 / k, -ty / k, 0.0, 0.0])[None]
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None],
        transforms=inverse,
        output_shape=tf.constant(list(size), tf.int32),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]
    pixels = tf.cast(tf.clip_by_value(tf.round(warped), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(pixels, [size[0], size[1], 3]), affine


def letterbox(image: np.ndarray, size: int | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """numpy wrapper of `letterbox_tf`: RGB uint8 [h, w, 3] → (uint8 [H, W, 3], affine 2×3)."""
    size = as_size(size)
    pixels, affine = letterbox_tf(tf.convert_to_tensor(np.asarray(image, np.uint8)), size)
    return pixels.numpy(), affine.numpy()


def decode_image_tf(data: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF bytes → RGB uint8 [h, w, 3] (first frame)."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    return tf.ensure_shape(image, [None, None, 3])


def read_image(path: str | Path) -> np.ndarray:
    """An image file → RGB uint8 [h, w, 3], decoded as the serving graph decodes it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        return decode_image_tf(tf.io.read_file(str(path))).numpy()
    except tf.errors.InvalidArgumentError as err:
        raise ValueError(f"{path} is not a JPEG/PNG/BMP/GIF image: {err.message}") from err


def list_images(folder: str | Path) -> list[Path]:
    """Image files (jpg, jpeg, png, bmp) in a folder, sorted; a clear error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"calibration image folder not found: {folder}")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in calibration folder {folder}")
    return images


def calibration_images(
    folder: str | Path,
    size: tuple[int, int],
    count: int = DEFAULT_CALIBRATION_IMAGES,
    *,
    progress: bool = True,
    desc: str = "calibration images",
) -> Iterator[np.ndarray]:
    """Up to `count` real images from `folder`, letterboxed to `size`: float32 [H, W, 3] RGB 0..255.

    The same pre-processing as serving, so quantisation ranges fit real inputs.
    Spread evenly over the folder when it holds more than `count` images.
    """
    paths = list_images(folder)
    if count <= 0:
        raise ValueError(f"the number of calibration images must be positive, got {count}")
    if len(paths) > count:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, count).round().astype(int)]
    from tqdm.auto import tqdm

    used = 0
    for path in tqdm(paths, desc=desc, unit="img", disable=not progress):
        try:
            image = read_image(path)
        except (FileNotFoundError, ValueError) as err:  # one bad file never stops the calibration
            log.warning("skipped calibration image %s", err)
            records = _SKIPPED.get()
            if records is not None:
                records.append({"input": str(path), "reason": str(err).splitlines()[0]})
            continue
        used += 1
        pixels, _ = letterbox(image, size)
        yield pixels.astype(np.float32)
    if not used:
        raise ValueError(f"none of the {len(paths)} calibration images in {folder} could be read")


def write_json(path: Path, data: dict) -> None:
    """Write metadata beside an artefact (creating its folder), atomically."""
    atomic_write_json(path, data, indent=2, sort_keys=True)


def model_metadata(model: Any, **extra: Any) -> dict:
    """What a runner wants to know about an exported model."""
    config = getattr(model, "config", None)
    meta = {
        "level": getattr(config, "name", None),
        "num_joints": int(getattr(model, "num_joints", None) or model.outputs[1].shape[-1]),
        "native_input_size": getattr(config, "input_size", None),
        "producer": "keras_ehrnet",
    }
    meta.update(extra)
    return meta
