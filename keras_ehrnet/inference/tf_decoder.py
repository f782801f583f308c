"""The pose decoder as TensorFlow ops, so an exported SavedModel can return people directly.

The steps, thresholds and defaults of `keras_ehrnet.inference.decoding` (HigherHRNet's
grouping; one scale, no flip), with the same `DecodeConfig`:

1. aggregate: the quarter-resolution output is resized (bilinear, half-pixel
   centres) to half resolution, its heatmaps averaged with the half-resolution
   ones, its tags kept; both are resized to the network input grid;
2. NMS: a peak is a local maximum in an `nms_kernel`² window; with
   `merge_plateaus` an equal-valued maximum with an earlier (raster order)
   maximum in its window is dropped, so a flat top is one peak;
3. top-k: the `max_people` strongest peaks per joint above `detection_threshold`;
4. grouping, joint by joint in the reference order: cost round(tag distance)·100
   − score against the mean tags of the first `max_people` people; a pair needs
   a distance below `tag_threshold`; unmatched peaks start new people. Where the
   Python decoder solves each joint's assignment with the Hungarian method,
   here it is greedy (cheapest allowed pair first), which needs no host code;
5. adjust: each keypoint moves a quarter pixel towards its higher neighbour, +0.5;
6. person score = mean keypoint score (before refinement);
7. refine ("exclusive" or "reference" mode, as `keras_ehrnet.inference.decoding`): each
   missing joint is filled at the maximum of heatmap − round(tag distance to the
   person's mean tag).

Coordinates are (x, y) in network-input pixels. The output holds the
`max_people` best people by score; unused slots are zero.
"""

from __future__ import annotations

from collections.abc import Sequence

from keras_ehrnet._tf import tf
from keras_ehrnet.inference.decoding import DecodeConfig

# People tracked while grouping, as a multiple of max_people (the Python decoder keeps every
# new person; single-joint false starts must not crowd real people out of a fixed-size buffer).
CAPACITY_FACTOR = 2
_NEG = -1e30


def check_config(config: DecodeConfig) -> None:
    """Refuse settings the in-graph decoder does not implement."""
    if config.ignore_too_much:
        raise ValueError("the in-graph decoder does not implement ignore_too_much=True")
    if not config.gate_assignment:
        raise ValueError("the in-graph decoder's greedy matching is always gated (gate_assignment=True)")


def aggregate_outputs(
    quarter: tf.Tensor, half: tf.Tensor, num_joints: int, size: Sequence[int] | tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """(heatmaps [B, H, W, J], tags [B, H, W, T]) on the grid `size` (default: 2× the half grid).

    T is J (a tag per joint) or 1. Resizing is bilinear with half-pixel
    centres, as PyTorch's interpolate(align_corners=False) in the reference.
    """
    j = num_joints
    half_size = tf.shape(half)[1:3]
    quarter_up = tf.image.resize(quarter, half_size, method="bilinear")
    heatmaps = (quarter_up[..., :j] + half) * 0.5
    tags = quarter_up[..., j:]
    if size is None:
        size = half_size * 2
    heatmaps = tf.image.resize(heatmaps, size, method="bilinear")
    tags = tf.image.resize(tags, size, method="bilinear")
    return heatmaps, tags


def nms(heatmaps: tf.Tensor, kernel: int = 5) -> tf.Tensor:
    """Heatmaps [B, H, W, J] with everything but the local maxima (kernel² window) set to zero."""
    pooled = tf.nn.max_pool2d(heatmaps, kernel, 1, "SAME")
    return tf.where(tf.equal(pooled, heatmaps), heatmaps, tf.zeros_like(heatmaps))


def top_peaks(peaks: tf.Tensor, config: DecodeConfig) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """One image's NMS peaks [H, W, J] → the best `max_people` per joint: values, ys, xs [J, K].

    Only peaks above the detection threshold (others have value −1); ties in
    raster order. With `merge_plateaus`, of equal maxima within one window (a
    flat top) only the first in raster order counts.
    """
    num_joints = peaks.shape[-1]
    k = config.max_people
    extra = k if config.merge_plateaus else 0
    found = tf.cast(tf.where(peaks > config.detection_threshold), tf.int32)  # raster order
    vals = tf.gather_nd(peaks, found)
    ys, xs, js = found[:, 0], found[:, 1], found[:, 2]
    table = tf.where(js[None, :] == tf.range(num_joints)[:, None], vals[None, :], -1.0)  # [J, N]
    table = tf.concat([table, -tf.ones([num_joints, k + extra])], axis=1)
    top, pos = tf.math.top_k(table, k=k + extra)  # ties: lower index = earlier in raster order
    pad = tf.zeros([k + extra], tf.int32)
    y_k = tf.gather(tf.concat([ys, pad], 0), pos)
    x_k = tf.gather(tf.concat([xs, pad], 0), pos)
    if config.merge_plateaus:
        r = config.nms_kernel // 2
        raster = pos  # positions in `found` follow raster order
        earlier_twin = (
            (top[:, :, None] == top[:, None, :])
            & (tf.abs(y_k[:, :, None] - y_k[:, None, :]) <= r)
            & (tf.abs(x_k[:, :, None] - x_k[:, None, :]) <= r)
            & (raster[:, None, :] < raster[:, :, None])
            & (top[:, None, :] > config.detection_threshold)
        )
        top = tf.where(tf.reduce_any(earlier_twin, axis=2), -1.0, top)
        top, keep = tf.math.top_k(top, k=k)
        y_k = tf.gather(y_k, keep, batch_dims=1)
        x_k = tf.gather(x_k, keep, batch_dims=1)
    return top, y_k, x_k


def greedy_match(cost: tf.Tensor, allowed: tf.Tensor) -> tf.Tensor:
    """One-to-one assignment [K, P] (0/1): greedy, cheapest allowed pair first.

    Computed as rounds of mutually cheapest pairs (the cheapest in their row and
    column), which greedy would take in any case; a few rounds instead of one
    step per pair.
    """
    big = tf.constant(-_NEG, cost.dtype)
    cost = tf.where(allowed, cost, big)

    def first(mask, axis):
        return mask & (tf.cumsum(tf.cast(mask, tf.int32), axis=axis) == 1)

    def body(c, assign):
        best = (c == tf.reduce_min(c, axis=1, keepdims=True)) & (c == tf.reduce_min(c, axis=0, keepdims=True))
        best = first(first(best & (c < big), 1), 0)
        assign = assign + tf.cast(best, c.dtype)
        used = tf.reduce_any(best, axis=1, keepdims=True) | tf.reduce_any(best, axis=0, keepdims=True)
        return tf.where(used, big, c), assign

    _, assign = tf.while_loop(
        lambda c, _: tf.reduce_min(c) < big,
        body,
        (cost, tf.zeros_like(cost)),
        maximum_iterations=tf.minimum(tf.shape(cost)[0], tf.shape(cost)[1]),
    )
    return assign


def _quarter_step(det: tf.Tensor, x: tf.Tensor, y: tf.Tensor, j: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """±0.25 in x and y towards the higher neighbour in det [H, W, J] (the reference's adjustment)."""
    h, w = tf.shape(det)[0], tf.shape(det)[1]

    def at(yy, xx):
        return tf.gather_nd(det, tf.stack([yy, xx, j], axis=-1))

    dx = tf.where(at(y, tf.minimum(x + 1, w - 1)) > at(y, tf.maximum(x - 1, 0)), 0.25, -0.25)
    dy = tf.where(at(tf.minimum(y + 1, h - 1), x) > at(tf.maximum(y - 1, 0), x), 0.25, -0.25)
    return dx, dy


def _group_image(det: tf.Tensor, peaks: tf.Tensor, tag: tf.Tensor, config: DecodeConfig):
    """One image: det, peaks, tag [H, W, J] → keypoints [P, J, 3], scores [P], count (P = max_people)."""
    num_joints = det.shape[-1]
    capacity = CAPACITY_FACTOR * config.max_people
    dtype = det.dtype

    vals, ys_i, xs_i = top_peaks(peaks, config)  # [J, K]
    tags_k = tf.gather_nd(
        tag, tf.stack([ys_i, xs_i, tf.broadcast_to(tf.range(num_joints)[:, None], tf.shape(ys_i))], -1)
    )
    xs_k = tf.cast(xs_i, dtype)
    ys_k = tf.cast(ys_i, dtype)

    slots = tf.range(capacity)
    order = tf.constant(config.joint_order_for(num_joints), tf.int32)

    def add_joint(i, count, tag_sum, tag_count, points):
        j = order[i]
        v, t = vals[j], tags_k[j]
        valid = v > config.detection_threshold
        mean_tag = tag_sum / tf.maximum(tag_count, 1.0)
        dist = tf.abs(t[:, None] - mean_tag[None, :])  # [K, C]; one tag value per joint
        cost = tf.round(dist) * 100.0 - v[:, None] if config.use_detection_val else dist
        matchable = slots < tf.minimum(count, config.max_people)
        allowed = valid[:, None] & matchable[None, :] & (dist < config.tag_threshold)
        assign = greedy_match(cost, allowed)
        new = valid & (tf.reduce_sum(assign, axis=1) == 0)
        slot = count + tf.cumsum(tf.cast(new, tf.int32)) - 1
        new = new & (slot < capacity)
        assign = assign + tf.one_hot(tf.where(new, slot, -1), capacity, dtype=dtype)
        count = count + tf.reduce_sum(tf.cast(new, tf.int32))
        column = tf.matmul(assign, tf.stack([xs_k[j], ys_k[j], v], axis=1), transpose_a=True)  # [C, 3]
        points = points + column[:, None, :] * tf.one_hot(j, num_joints, dtype=dtype)[None, :, None]
        tag_sum = tag_sum + tf.linalg.matvec(assign, t, transpose_a=True)
        tag_count = tag_count + tf.reduce_sum(assign, axis=0)
        return i + 1, count, tag_sum, tag_count, points

    _, count, tag_sum, tag_count, points = tf.while_loop(
        lambda i, *_: i < num_joints,
        add_joint,
        (
            tf.constant(0),
            tf.constant(0),
            tf.zeros([capacity], dtype),
            tf.zeros([capacity], dtype),
            tf.zeros([capacity, num_joints, 3], dtype),
        ),
    )
    x, y, v = points[..., 0], points[..., 1], points[..., 2]  # [C, J] peak pixels and values
    found = v > 0
    if config.adjust:
        joint_ids = tf.broadcast_to(tf.range(num_joints)[None, :], [capacity, num_joints])
        dx, dy = _quarter_step(det, tf.cast(x, tf.int32), tf.cast(y, tf.int32), joint_ids)
        x = tf.where(found, x + 0.5 + dx, x)
        y = tf.where(found, y + 0.5 + dy, y)
    scores = tf.reduce_mean(v, axis=1)
    if config.refine:
        mean_tag = tag_sum / tf.maximum(tag_count, 1.0)
        x, y, v = _refine(det, tag, x, y, v, mean_tag, count, config)

    scores = tf.where(slots < count, scores, -1.0)
    order = tf.argsort(scores, direction="DESCENDING", stable=True)[: config.max_people]
    keypoints = tf.gather(tf.stack([x, y, v], axis=-1), order)
    scores = tf.gather(scores, order)
    alive = scores >= 0
    keypoints = tf.where(alive[:, None, None] & (keypoints[..., 2:] > 0), keypoints, 0.0)
    return keypoints, tf.maximum(scores, 0.0), tf.minimum(count, config.max_people)


def _refine(det, tag, x, y, v, mean_tag, count, config: DecodeConfig):
    """Fill each person's missing joints at argmax(det − round(|tag − person's tag|)) (step 7).

    "reference": the whole map is searched. "exclusive": only pixels above
    `refine_threshold`, not where another person holding that joint has a tag at
    least as near, and when two people missing a joint pick the same pixel the
    nearer tag (then the earlier person) gets it; those pixels are listed once,
    so the search is sparse.
    """
    h, w = tf.shape(det)[0], tf.shape(det)[1]
    num_joints = det.shape[-1]
    joint_ids = tf.range(num_joints)
    flat_det = tf.reshape(det, [h * w, num_joints])
    flat_tag = tf.reshape(tag, [h * w, num_joints])
    missing = tf.equal(v, 0.0)
    exclusive = config.refine_mode == "exclusive"
    if exclusive:
        where = tf.cast(
            tf.where(flat_det > config.refine_threshold), tf.int32
        )  # (pixel, joint), raster order
        pix = tf.concat([where[:, 0], [0]], 0)  # one dummy entry (joint −1: ignored by segment ops)
        joint = tf.concat([where[:, 1], [-1]], 0)
        val = tf.concat([tf.gather_nd(flat_det, where), [0.0]], 0)
        cand_tag = tf.concat([tf.gather_nd(flat_tag, where), [0.0]], 0)
        holds_joint = tf.transpose(tf.concat([~missing, tf.zeros_like(missing[:, :1])], 1))  # [J+1, C]
        holders = tf.gather(holds_joint, tf.where(joint < 0, num_joints, joint))  # [N, C]

        def nearest_body(p, nearest):
            d = tf.abs(cand_tag - mean_tag[p])
            return p + 1, tf.minimum(nearest, tf.where(holders[:, p], d, -_NEG))

        _, nearest = tf.while_loop(
            lambda p, _: p < count, nearest_body, (tf.constant(0), tf.fill(tf.shape(val), -_NEG))
        )
        size = tf.shape(val)[0]

        def search(p):
            d = tf.abs(cand_tag - mean_tag[p])
            score = tf.where((nearest > d) & (joint >= 0), val - tf.round(d), _NEG)
            best = tf.math.unsorted_segment_max(score, joint, num_joints)
            is_best = (score >= tf.gather(best, tf.maximum(joint, 0))) & (score > _NEG)
            first = tf.math.unsorted_segment_min(tf.where(is_best, tf.range(size), size), joint, num_joints)
            found = first < size
            first = tf.minimum(first, size - 1)
            return (
                tf.gather(pix, first),
                tf.where(found, tf.gather(val, first), 0.0),
                tf.gather(d, first),
                found,
            )

    else:

        def search(p):
            d = tf.abs(flat_tag - mean_tag[p])
            score = flat_det - tf.round(d)
            top = tf.reduce_max(score, axis=0)
            # the first pixel in raster order among ties (tf.argmax does not promise which)
            best = tf.reduce_min(tf.where(score >= top, tf.range(h * w)[:, None], h * w), axis=0)
            at = tf.stack([best, joint_ids], axis=-1)
            return best, tf.gather_nd(flat_det, at), tf.gather_nd(d, at), tf.ones([num_joints], tf.bool)

    def body(p, picks):
        return p + 1, [a.write(p, t) for a, t in zip(picks, search(p))]

    dtypes = (tf.int32, det.dtype, det.dtype, tf.bool)
    picks = [tf.TensorArray(d, size=count, element_shape=[num_joints]) for d in dtypes]
    _, picks = tf.while_loop(lambda p, _: p < count, body, (tf.constant(0), picks))
    best, value, dist, found = (a.stack() for a in picks)  # [n, J], n = count
    need = missing[:count] & found
    if exclusive:
        # one pixel, one person: a nearer tag (then an earlier person) wins
        people = tf.range(count)
        nearer = (dist[:, None, :] < dist[None, :, :]) | (
            (dist[:, None, :] == dist[None, :, :]) & (people[:, None, None] < people[None, :, None])
        )
        beaten = need[:, None, :] & need[None, :, :] & (best[:, None, :] == best[None, :, :]) & nearer
        need = need & ~tf.reduce_any(beaten, axis=0)
    fill = need & (value > 0)
    by, bx = best // w, best % w
    dx, dy = _quarter_step(det, bx, by, tf.broadcast_to(joint_ids[None, :], tf.shape(best)))

    def merge(new, old):
        return tf.concat([tf.where(fill, new, old[:count]), old[count:]], axis=0)

    return (
        merge(tf.cast(bx, x.dtype) + 0.5 + dx, x),
        merge(tf.cast(by, y.dtype) + 0.5 + dy, y),
        merge(value, v),
    )


def group(
    heatmaps: tf.Tensor, tags: tf.Tensor, config: DecodeConfig = DecodeConfig()
) -> dict[str, tf.Tensor]:
    """Group a batch of heatmaps [B, H, W, J] and tags [B, H, W, J or 1] into people.

    Returns keypoints [B, P, J, 3] ((x, y, score) in grid pixels), scores [B, P]
    and num_people [B] (P = config.max_people; best first, unused slots zero).
    """
    check_config(config)
    heatmaps = tf.convert_to_tensor(heatmaps, tf.float32)
    tags = tf.convert_to_tensor(tags, tf.float32)
    num_joints = heatmaps.shape[-1]
    if num_joints is None:
        raise ValueError("the number of joints (last axis of heatmaps) must be static")
    if tags.shape[-1] not in (1, num_joints):
        raise ValueError(f"tags need 1 or {num_joints} channels (one per joint), got {tags.shape[-1]}")
    config.joint_order_for(num_joints)  # validates
    tags = tf.broadcast_to(tags, tf.shape(heatmaps))
    peaks = nms(heatmaps, config.nms_kernel)
    people = config.max_people
    keypoints, scores, count = tf.map_fn(
        lambda args: _group_image(args[0], args[1], args[2], config),
        (heatmaps, peaks, tags),
        fn_output_signature=(
            tf.TensorSpec([people, num_joints, 3], tf.float32),
            tf.TensorSpec([people], tf.float32),
            tf.TensorSpec([], tf.int32),
        ),
        parallel_iterations=1,
    )
    return {"keypoints": keypoints, "scores": scores, "num_people": count}


def decode_people(
    quarter: tf.Tensor,
    half: tf.Tensor,
    num_joints: int,
    config: DecodeConfig = DecodeConfig(),
    size: Sequence[int] | tf.Tensor | None = None,
) -> dict[str, tf.Tensor]:
    """Network outputs (quarter, half) → people on the input grid `size` (default 4× the quarter grid).

    Returns keypoints [B, P, J, 3] ((x, y, score) in input pixels), scores [B, P], num_people [B].
    """
    quarter = tf.convert_to_tensor(quarter, tf.float32)
    half = tf.convert_to_tensor(half, tf.float32)
    if size is None:
        size = tf.shape(quarter)[1:3] * 4
    heatmaps, tags = aggregate_outputs(quarter, half, num_joints, size)
    return group(heatmaps, tags, config)


class TFDecoder:
    """numpy in, numpy out: the in-graph decoder, traced once per channel count for any image size."""

    def __init__(self, num_joints: int, config: DecodeConfig = DecodeConfig()):
        check_config(config)
        self.num_joints = num_joints
        self.config = config
        self._functions: dict[int, tf.types.experimental.GenericFunction] = {}

    def _function(self, quarter_channels: int):
        if quarter_channels not in self._functions:
            self._functions[quarter_channels] = tf.function(
                lambda q, h: decode_people(q, h, self.num_joints, self.config),
                input_signature=[
                    tf.TensorSpec([None, None, None, quarter_channels], tf.float32),
                    tf.TensorSpec([None, None, None, self.num_joints], tf.float32),
                ],
            )
        return self._functions[quarter_channels]

    def __call__(self, quarter, half) -> dict:
        """Outputs [B, …] (or one image without the batch axis) → dict of numpy arrays."""
        import numpy as np

        quarter = np.asarray(quarter, np.float32)
        half = np.asarray(half, np.float32)
        single = quarter.ndim == 3
        if single:
            quarter, half = quarter[None], half[None]
        out = {k: t.numpy() for k, t in self._function(quarter.shape[-1])(quarter, half).items()}
        return {k: a[0] for k, a in out.items()} if single else out
