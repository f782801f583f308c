"""HigherHRNet training targets: Gaussian heatmaps and the joints tensor for the tag loss.

Placement convention (the reference's): a keypoint at (x, y) in a resolution's pixel
coordinates puts the Gaussian's peak at pixel (floor(x), floor(y)), provided 0 <= x < width and
0 <= y < height and its visibility is > 0. The Gaussian is exp(-d² / 2σ²) over integer pixel
offsets d, cut to a (6σ + 3)-wide window; overlapping people keep the maximum.
The NumPy renderer (for tools and tests) and the TensorFlow one (for the pipeline) agree
bit for bit on float32 input.
"""

from __future__ import annotations

import numpy as np

from keras_ehrnet._tf import tf


def _radius(sigma: float) -> int:
    return int(3 * sigma + 1)


def gaussian_heatmaps(keypoints: np.ndarray, height: int, width: int, sigma: float = 2.0) -> np.ndarray:
    """Render float32 [height, width, J] heatmaps from float [N, J, 3] keypoints (x, y, v).

    The cells are floored at the caller's precision (float32 input gives the pipeline's maps).
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[-1] != 3:
        raise ValueError(f"keypoints must be [N, J, 3], got shape {kp.shape}")
    j = kp.shape[1]
    out = np.zeros(height * width * j, np.float32)
    with np.errstate(invalid="ignore"):
        xi, yi = np.floor(kp[..., 0]), np.floor(kp[..., 1])
        valid = (kp[..., 2] > 0) & (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
    n, k = np.nonzero(valid)
    if n.size:
        r = _radius(sigma)
        offsets = np.arange(-r, r + 1)
        g = np.exp(-(offsets.astype(np.float32) ** 2) / np.float32(2 * sigma * sigma)).astype(np.float32)
        ys = yi[n, k].astype(np.int64)[:, None] + offsets
        xs = xi[n, k].astype(np.int64)[:, None] + offsets
        inside = ((ys >= 0) & (ys < height))[:, :, None] & ((xs >= 0) & (xs < width))[:, None, :]
        flat = (ys[:, :, None] * width + xs[:, None, :]) * j + k[:, None, None]
        values = np.broadcast_to(g[:, None] * g[None, :], flat.shape)
        np.maximum.at(out, flat[inside], values[inside])
    return out.reshape(height, width, j)


def _gaussian_1d(sigma: float) -> tuple[tf.Tensor, int]:
    r = _radius(sigma)
    offsets = np.arange(-r, r + 1)
    g = np.exp(-(offsets.astype(np.float32) ** 2) / np.float32(2 * sigma * sigma)).astype(np.float32)
    return tf.constant(g), r


def _valid_cells(keypoints: tf.Tensor, stride: float, height: int, width: int):
    """Integer cells at one resolution of [B, N, J, 3] input-resolution keypoints, and which count."""
    x = tf.math.floor(keypoints[..., 0] / stride)
    y = tf.math.floor(keypoints[..., 1] / stride)
    valid = (keypoints[..., 2] > 0) & (x >= 0) & (x < width) & (y >= 0) & (y < height)
    return (
        tf.cast(x, tf.int64) * tf.cast(valid, tf.int64),
        tf.cast(y, tf.int64) * tf.cast(valid, tf.int64),
        valid,
    )


def render_heatmaps(
    keypoints: tf.Tensor, stride: float, height: int, width: int, sigma: float = 2.0
) -> tf.Tensor:
    """TF batch renderer: float32 [B, height, width, J] from [B, N, J, 3] input-resolution keypoints.

    Vectorised: every (visible keypoint, window pixel) pair becomes one scatter-max update,
    so the cost grows with the number of visible keypoints, not with people × map size.
    """
    keypoints = tf.convert_to_tensor(keypoints, tf.float32)
    b = tf.shape(keypoints, out_type=tf.int64)[0]
    j = keypoints.shape[2]
    x, y, valid = _valid_cells(keypoints, stride, height, width)
    where = tf.where(valid)  # [K, 3]: (batch, person, joint)
    xk, yk = tf.gather_nd(x, where), tf.gather_nd(y, where)
    g, r = _gaussian_1d(sigma)
    offsets = tf.range(-r, r + 1, dtype=tf.int64)
    ys = yk[:, None] + offsets
    xs = xk[:, None] + offsets
    inside = ((ys >= 0) & (ys < height))[:, :, None] & ((xs >= 0) & (xs < width))[:, None, :]
    flat = ((where[:, 0, None, None] * height + ys[:, :, None]) * width + xs[:, None, :]) * j + where[
        :, 2, None, None
    ]
    values = tf.broadcast_to(g[:, None] * g[None, :], tf.shape(flat))
    flat = tf.boolean_mask(flat, inside)
    values = tf.boolean_mask(values, inside)
    out = tf.tensor_scatter_nd_max(tf.zeros([b * height * width * j], tf.float32), flat[:, None], values)
    return tf.reshape(out, [b, height, width, j])


def joints_tensor(
    keypoints: tf.Tensor, stride: float, height: int, width: int, max_people: int = 30
) -> tf.Tensor:
    """int32 [B, max_people, J, 2] of (y * width + x, visible) at one resolution, for the tag loss.

    People with no visible keypoint inside the map take no row; the others fill rows in
    annotation order, at most `max_people` of them (later ones keep their heatmaps but get no tag
    row). Unused rows and invisible joints are all zero.
    """
    keypoints = tf.convert_to_tensor(keypoints, tf.float32)
    b = tf.shape(keypoints, out_type=tf.int64)[0]
    j = keypoints.shape[2]
    x, y, valid = _valid_cells(keypoints, stride, height, width)
    entries = tf.stack([y * width + x, tf.cast(valid, tf.int64)], axis=-1)  # [B, N, J, 2]
    has = tf.reduce_any(valid, axis=-1)  # [B, N]
    row = tf.cumsum(tf.cast(has, tf.int64), axis=1, exclusive=True)
    keep = tf.where(has & (row < max_people))  # [M, 2]: (batch, person)
    target = tf.stack([keep[:, 0], tf.gather_nd(row, keep)], axis=1)
    out = tf.scatter_nd(target, tf.gather_nd(entries, keep), tf.stack([b, max_people, j, 2]))
    return tf.cast(out, tf.int32)
