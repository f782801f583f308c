"""The tf.data training pipeline: decode, augment, batch, then render targets per batch.

Per sample (parallel map, through OpenCV, which releases the GIL): read and decode the image,
draw the augmentation from a seed, warp the image and the ignore mask with one affine and move
the keypoints with it. Per batch (parallel map, in TensorFlow ops): cast the images, render both
heatmap resolutions and the joints tensor from the keypoints with vectorised scatters. Rendering
after batching writes the large heatmaps once, straight into the batch.

Randomness is a pure function of (seed, epoch, image index), so `make_dataset(seed=s, epoch=e)`
gives the same order and augmentation every time, whatever the parallelism, and a trainer can
resume mid-epoch with `.skip(step)`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from keras_ehrnet._tf import tf
from keras_ehrnet.data.augment import (
    AffineParams,
    AugmentConfig,
    affine_matrix,
    draw_params,
    scale_matrix,
    transform_keypoints,
    warp_image,
    warp_mask,
)
from keras_ehrnet.data.coco import CocoKeypoints, DatasetError, SkipLog, load_image
from keras_ehrnet.data.targets import joints_tensor, render_heatmaps

log = logging.getLogger("keras_ehrnet.data")

AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True)
class Sample:
    """One augmented sample before target rendering (NumPy).

    image: uint8 [R, R, 3] RGB; mask_quarter / mask_half: uint8 (1 = counted in the loss);
    keypoints: float32 [N, J, 3] in input-resolution pixels, left/right already swapped when
    mirrored; matrix: the 2x3 source-to-input affine.
    """

    image: np.ndarray
    mask_quarter: np.ndarray
    mask_half: np.ndarray
    keypoints: np.ndarray
    params: AffineParams
    matrix: np.ndarray


def _check_input_size(input_size: int) -> None:
    if input_size <= 0 or input_size % 32:
        raise ValueError(f"input_size must be a positive multiple of 32, got {input_size}")


def load_sample(
    dataset: CocoKeypoints,
    index: int,
    *,
    input_size: int,
    training: bool = True,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    epoch: int = 0,
    ignore_padding: bool = True,
    image: np.ndarray | None = None,
    ignore: np.ndarray | None = None,
    params: AffineParams | None = None,
) -> Sample:
    """Decode and augment `dataset[index]` exactly as the pipeline does for (seed, epoch).

    `image` / `ignore` skip the decoding (cache); `params` forces an augmentation. In eval
    mode (`training=False`) nothing is random: the short side fills the crop, centred.
    """
    _check_input_size(input_size)
    augment = augment or AugmentConfig()
    record = dataset[index]
    if image is None:
        image = load_image(record)
        ignore = record.ignore_mask()
    h, w = record.height, record.width
    if params is None:
        if training:
            keys = getattr(dataset, "sample_keys", None)  # the same for an image in any shard
            rng = np.random.default_rng([seed, epoch, keys[index] if keys is not None else index])
            params = draw_params(augment, rng, w, h)
        else:
            params = AffineParams()
    matrix = affine_matrix(w, h, input_size, params, augment.scale_type)
    flip_index = dataset.flip_index if params.flip else None
    return Sample(
        image=warp_image(image, matrix, input_size),
        mask_quarter=warp_mask(ignore, (h, w), scale_matrix(matrix, 0.25), input_size // 4, ignore_padding),
        mask_half=warp_mask(ignore, (h, w), scale_matrix(matrix, 0.5), input_size // 2, ignore_padding),
        keypoints=transform_keypoints(record.keypoints, matrix, flip_index),
        params=params,
        matrix=matrix,
    )


class _SampleLoader:
    """The per-sample NumPy step of the pipeline (runs in tf.data threads via numpy_function)."""

    def __init__(self, dataset, *, input_size, training, augment, seed, ignore_padding, cache, skip_log):
        self.dataset = dataset
        self.input_size = input_size
        self.training = training
        self.augment = augment
        self.seed = seed
        self.ignore_padding = ignore_padding
        self.cache: dict[int, tuple[np.ndarray, np.ndarray | None]] | None = {} if cache else None
        self.skip_log = skip_log

    def _decoded(self, index: int):
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        record = self.dataset[index]
        decoded = (load_image(record), record.ignore_mask())
        if self.cache is not None:
            self.cache[index] = decoded
        return decoded

    def __call__(self, index, key):
        index, key = int(index), int(key)
        try:
            image, ignore = self._decoded(index)
            s = load_sample(
                self.dataset,
                index,
                input_size=self.input_size,
                training=self.training,
                augment=self.augment,
                seed=self.seed,
                epoch=key,
                ignore_padding=self.ignore_padding,
                image=image,
                ignore=ignore,
            )
        except (DatasetError, OSError) as e:
            if self.skip_log is None:
                raise
            record = self.dataset[index]
            self.skip_log.add(record.image_id, record.path, str(e))
            r, j = self.input_size, self.dataset.num_joints
            return (
                np.zeros((r, r, 3), np.uint8),
                np.zeros((r // 4, r // 4), np.uint8),
                np.zeros((r // 2, r // 2), np.uint8),
                np.zeros((0, j, 3), np.float32),
                False,
            )
        return s.image, s.mask_quarter, s.mask_half, s.keypoints, True


def _pass_order(
    indices: np.ndarray, epoch: int, *, seed: int | None, shuffle: bool, length: int
) -> np.ndarray:
    """[length, 2] int64 rows of (image index, augmentation key) for one pass over a shard."""
    if seed is None:
        rng = np.random.default_rng()  # fresh entropy on every pass
        key = int(rng.integers(2**62))
    else:
        rng = np.random.default_rng([seed, epoch, 0x5EED])
        key = int(epoch)
    order = rng.permutation(indices) if shuffle else np.asarray(indices)
    order = order[:length]
    return np.stack([order, np.full_like(order, key)], axis=1).astype(np.int64)


def _report_at_end(ds: tf.data.Dataset, skip_log: SkipLog) -> tf.data.Dataset:
    """Append a step that logs the skip report once the stream is exhausted, yielding nothing."""

    def report():
        if skip_log.count:
            log.warning(skip_log.report())
        return False

    def dummy(_):
        return tf.nest.map_structure(
            lambda s: tf.zeros([d if d is not None else 0 for d in s.shape], s.dtype), ds.element_spec
        )

    tail = tf.data.Dataset.range(1).map(dummy)
    tail = tail.filter(lambda *_: tf.numpy_function(report, [], tf.bool, stateful=True))
    return ds.concatenate(tail)


def build_dataset(
    dataset: CocoKeypoints,
    *,
    input_size: int,
    batch_size: int,
    training: bool = True,
    augment: AugmentConfig | None = None,
    shuffle: bool | None = None,
    seed: int | None = None,
    epoch: int = 0,
    epochs: int | None = 1,
    deterministic: bool | None = None,
    cache: bool = False,
    skip_invalid: bool = False,
    max_people: int = 30,
    sigma: float = 2.0,
    drop_remainder: bool | None = None,
    ignore_padding: bool = True,
    input_context: tf.distribute.InputContext | None = None,
    num_parallel_calls: int = AUTOTUNE,
) -> tf.data.Dataset:
    """The pipeline over an already read `CocoKeypoints` (see `make_dataset` for the arguments)."""
    _check_input_size(input_size)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(dataset) == 0:
        what = "images with annotated people" if training else "images"
        raise DatasetError(f"{dataset.ann_file}: no {what} to read")
    augment = augment or AugmentConfig()
    shuffle = training if shuffle is None else shuffle
    if deterministic is None:  # order matters when seeded or not shuffled (e.g. evaluation)
        deterministic = seed is not None or not shuffle
    drop_remainder = training if drop_remainder is None else drop_remainder
    j, r = dataset.num_joints, input_size

    # Shard images first, so input pipelines never overlap whatever their seeds; equal shard
    # lengths keep synchronous replicas in step (the few left out change every pass).
    shards, shard = 1, 0
    per_replica = batch_size
    if input_context is not None:
        shards, shard = input_context.num_input_pipelines, input_context.input_pipeline_id
        per_replica = input_context.get_per_replica_batch_size(batch_size)
    pre_sharded = getattr(dataset, "num_shards", 1) > 1
    if pre_sharded:  # CocoKeypoints(shard=…) read only this pipeline's share of the file
        if (dataset.shard_index, dataset.num_shards) != (shard, shards):
            raise ValueError(
                f"{dataset.ann_file}: the dataset holds shard {dataset.shard_index} of {dataset.num_shards}, "
                f"but this is input pipeline {shard} of {shards}"
            )
        length = dataset.shard_size
        # every pipeline reads `length` images; a shard that lost some as invalid repeats a few
        indices = np.resize(np.arange(len(dataset), dtype=np.int64), max(length, len(dataset)))
    else:
        indices = np.arange(len(dataset), dtype=np.int64)[shard::shards]
        length = len(dataset) // shards if shards > 1 else len(indices)
    if length == 0:
        total = dataset.shard_size * shards if pre_sharded else len(dataset)
        raise DatasetError(f"{dataset.ann_file}: {total} images cannot feed {shards} input pipelines")

    def order(e):
        return _pass_order(indices, int(e), seed=seed, shuffle=shuffle, length=length)

    def pass_elements(e):
        rows = tf.numpy_function(order, [e], tf.int64, stateful=seed is None)
        rows = tf.ensure_shape(rows, [length, 2])
        return tf.data.Dataset.from_tensor_slices((rows[:, 0], rows[:, 1]))

    if epochs is None:
        passes = tf.data.Dataset.counter(start=epoch)
    else:
        passes = tf.data.Dataset.range(epoch, epoch + epochs)
    ds = passes.flat_map(pass_elements)

    skip_log = dataset.skip_log if skip_invalid else None
    loader = _SampleLoader(
        dataset,
        input_size=r,
        training=training,
        augment=augment,
        seed=0 if seed is None else seed,
        ignore_padding=ignore_padding,
        cache=cache,
        skip_log=skip_log,
    )

    def load(index, key):
        out = tf.numpy_function(loader, [index, key], [tf.uint8, tf.uint8, tf.uint8, tf.float32, tf.bool])
        image, mask_q, mask_h, keypoints, ok = out
        image = tf.ensure_shape(image, [r, r, 3])
        mask_q = tf.ensure_shape(mask_q, [r // 4, r // 4])
        mask_h = tf.ensure_shape(mask_h, [r // 2, r // 2])
        keypoints = tf.ensure_shape(keypoints, [None, j, 3])
        return image, mask_q, mask_h, keypoints, tf.ensure_shape(ok, [])

    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    if skip_invalid:
        ds = ds.filter(lambda *x: x[-1])
        if epochs is not None:
            ds = _report_at_end(ds, dataset.skip_log)
    ds = ds.map(lambda *x: x[:4])
    ds = ds.padded_batch(
        per_replica,
        padded_shapes=([r, r, 3], [r // 4, r // 4], [r // 2, r // 2], [None, j, 3]),
        drop_remainder=drop_remainder,
    )

    def targets(images, mask_q, mask_h, keypoints):
        b = images.shape[0]
        out = {
            "heatmaps_quarter": render_heatmaps(keypoints, 4, r // 4, r // 4, sigma),
            "heatmaps_half": render_heatmaps(keypoints, 2, r // 2, r // 2, sigma),
            "mask_quarter": tf.cast(mask_q, tf.float32),
            "mask_half": tf.cast(mask_h, tf.float32),
            "joints": joints_tensor(keypoints, 4, r // 4, r // 4, max_people),
        }
        for value in out.values():
            value.set_shape([b, *value.shape[1:]])
        return tf.cast(images, tf.float32), out

    ds = ds.map(targets, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    if epochs is not None and not skip_invalid:
        total = length * epochs
        ds = ds.apply(
            tf.data.experimental.assert_cardinality(
                total // per_replica if drop_remainder else -(-total // per_replica)
            )
        )
    options = tf.data.Options()
    options.deterministic = deterministic
    if input_context is not None:
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(AUTOTUNE)


def make_dataset(
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    input_size: int,
    batch_size: int,
    training: bool = True,
    augment: AugmentConfig | None = None,
    flip_pairs: Sequence[Sequence[int | str]] | None = None,
    num_joints: int | None = None,
    shuffle: bool | None = None,
    seed: int | None = None,
    epoch: int = 0,
    epochs: int | None = 1,
    deterministic: bool | None = None,
    cache: bool = False,
    skip_invalid: bool = False,
    skip_log: SkipLog | None = None,
    validate_images: str = "header",
    max_people: int = 30,
    sigma: float = 2.0,
    drop_remainder: bool | None = None,
    ignore_padding: bool = True,
    input_context: tf.distribute.InputContext | None = None,
    strategy: tf.distribute.Strategy | None = None,
    num_parallel_calls: int = AUTOTUNE,
) -> tf.data.Dataset | tf.distribute.DistributedDataset:
    """A tf.data pipeline of `(images, targets)` batches from a COCO-format keypoint dataset.

    images: float32 [B, R, R, 3], RGB 0..255. targets: "heatmaps_quarter" [B, R/4, R/4, J],
    "heatmaps_half" [B, R/2, R/2, J], "mask_quarter" [B, R/4, R/4], "mask_half" [B, R/2, R/2]
    (float32, mask 1 = counted), "joints" int32 [B, max_people, J, 2] (y*(R/4)+x at R/4, visible).

    Args:
        training: augment, shuffle, keep only images with annotations and drop the last
            partial batch (each overridable); eval mode is a fixed centred crop.
        augment: the random-affine ranges (AugmentConfig defaults = the paper's).
        flip_pairs, num_joints: see CocoKeypoints.
        seed, epoch, epochs: with a seed, pass k of the stream is epoch `epoch + k`, fully
            determined by (seed, epoch); `epochs=None` repeats forever. Without a seed every
            pass is freshly random.
        deterministic: keep element order under parallelism (default: when seeded or not
            shuffled); off, a slow sample does not hold up the ones behind it.
        cache: keep decoded images in memory (small datasets only).
        skip_invalid: leave out bad samples (recorded in `skip_log`, reported at the end of
            each finite pass) instead of raising.
        validate_images: the image check before the first batch ("header", "full" or "off";
            see `keras_ehrnet.data.validate`); annotations are always checked.
        batch_size: the global batch; with an input context or strategy each replica gets
            batch_size / replicas, and each input pipeline reads its own shard of the images
            (with several pipelines, only its shard's records are built and checked).
        strategy: return `strategy.distribute_datasets_from_function(...)` (a distributed
            dataset Keras `fit` accepts) instead of a tf.data.Dataset.
    """

    def read(ctx: tf.distribute.InputContext | None) -> CocoKeypoints:
        # Several input pipelines (workers): each reads only its share of the records.
        shard = None
        if ctx is not None and ctx.num_input_pipelines > 1:
            shard = (ctx.input_pipeline_id, ctx.num_input_pipelines)
        return CocoKeypoints(
            ann_file,
            image_dir,
            flip_pairs=flip_pairs,
            num_joints=num_joints,
            require_annotations=training,
            skip_invalid=skip_invalid,
            skip_log=skip_log,
            validate_images=validate_images,
            shard=shard,
        )

    kwargs = dict(
        input_size=input_size,
        batch_size=batch_size,
        training=training,
        augment=augment,
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        epochs=epochs,
        deterministic=deterministic,
        cache=cache,
        skip_invalid=skip_invalid,
        max_people=max_people,
        sigma=sigma,
        drop_remainder=drop_remainder,
        ignore_padding=ignore_padding,
        num_parallel_calls=num_parallel_calls,
    )
    if strategy is not None:
        if input_context is not None:
            raise ValueError("pass either strategy or input_context, not both")
        return strategy.distribute_datasets_from_function(
            lambda ctx: build_dataset(read(ctx), input_context=ctx, **kwargs)
        )
    return build_dataset(read(input_context), input_context=input_context, **kwargs)
