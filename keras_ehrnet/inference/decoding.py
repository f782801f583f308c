"""Network outputs → people: HigherHRNet's bottom-up decoding, vectorised.

The steps and their defaults follow HigherHRNet's test code as used by the
EfficientHRNet authors (paper §4.2.3):

1. per scale, the R/4 output is resized (bilinear, half-pixel centres) to the
   R/2 grid and its heatmaps averaged with the R/2 heatmaps; tags come from the
   R/4 output;
2. flip test: the mirrored input's outputs are mirrored back, their channels
   swapped by the flip pairs, heatmaps averaged and tags stacked;
3. everything is resized to the scale-1.0 input grid ("project to image");
   heatmaps of all scales are averaged, tags concatenated into longer vectors;
4. max-pool NMS (kernel 5), the top 30 peaks per joint above the detection
   threshold 0.1;
5. associative-embedding grouping joint by joint in the reference order:
   Hungarian assignment (scipy) on round(tag distance)·100 − detection value,
   a match needs a tag distance below 1, everything else starts a new person;
6. quarter-pixel adjustment towards the higher neighbour, +0.5 pixel;
7. refinement of missing joints from the person's mean tag;
8. person score = mean detection value over all joints (before refinement);
9. points mapped back to original image pixels through the inverse resize.

Differences from the reference, all deliberate (`DecodeConfig.reference()`
restores the last three for comparisons):

* equal-valued maxima of one joint chained within NMS windows (plateaus, which
  ideal Gaussians and flip averaging produce) count as one peak instead of
  filling several top-k slots;
* people are kept in a list, not a dict keyed by their first tag value (which
  merged people whose tags happened to be equal);
* the assignment is gated: a pair farther apart than the tag threshold costs as
  much as no match, so the Hungarian solution never gives up a possible match
  to make two impossible ones (which the ungated cost does, then rejects both);
* the refinement never takes a joint another person holds: a pixel whose tag is
  at least as near the mean tag of another person who already has that joint
  is not a candidate, and only pixels scoring above `refine_threshold` are
  searched (`refine_mode="reference"` searches the whole map, as HigherHRNet);
* multi-scale tags are concatenated over all scales, as the paper says (the
  code keeps the scale-1.0 tags only: `multi_scale_tags="base"`).

Speed: heatmaps are the only full-resolution maps made (one bilinear resize per
resolution, flip and channel swap folded into one gather at R/4 and R/2); NMS
is one OpenCV dilation and one threshold pass; tags are read at the peaks only
(and at the refinement's candidate pixels), never resized to full resolution;
grouping is one small scipy assignment per joint; refinement handles all people
missing a joint at once.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from keras_ehrnet.inference.transforms import TestPlan
from keras_ehrnet.keypoints import COCO_FLIP_INDEX, COCO_JOINT_ORDER

REFINE_MODES = ("exclusive", "reference")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Every threshold and switch of the decoding (defaults: the reference's COCO test settings).

    `joint_order` and `flip_index` default to COCO's for 17 joints; for other joint
    counts the order defaults to 0 … J-1 and flip test needs `flip_index`.
    """

    detection_threshold: float = 0.1
    tag_threshold: float = 1.0
    max_people: int = 30  # top-k peaks per joint, and people a joint is matched against
    nms_kernel: int = 5
    use_detection_val: bool = True
    ignore_too_much: bool = False
    adjust: bool = True
    refine: bool = True
    refine_mode: str = "exclusive"
    refine_threshold: float = 0.01  # "exclusive" refinement: pixels searched score above this
    joint_order: tuple[int, ...] | None = None
    flip_index: tuple[int, ...] | None = None
    multi_scale_tags: str = "all"  # "all" scales (paper) or "base" (scale 1.0 only, as the code)
    merge_plateaus: bool = True
    gate_assignment: bool = True  # pairs beyond tag_threshold cost as much as no match at all

    @classmethod
    def reference(cls, **changes) -> DecodeConfig:
        """The reference's behaviour where ours differs on purpose (for comparisons): whole-map
        refinement, ungated assignment, scale-1.0 tags only."""
        settings = {"refine_mode": "reference", "gate_assignment": False, "multi_scale_tags": "base"}
        return cls(**{**settings, **changes})

    def __post_init__(self):
        if self.nms_kernel < 1 or self.nms_kernel % 2 == 0:
            raise ValueError(f"nms_kernel must be a positive odd number, got {self.nms_kernel}")
        if self.max_people < 1:
            raise ValueError(f"max_people must be at least 1, got {self.max_people}")
        if self.refine_mode not in REFINE_MODES:
            raise ValueError(f"refine_mode must be one of {REFINE_MODES}, got {self.refine_mode!r}")
        if self.multi_scale_tags not in ("all", "base"):
            raise ValueError(f"multi_scale_tags must be 'all' or 'base', got {self.multi_scale_tags!r}")

    def joint_order_for(self, num_joints: int) -> tuple[int, ...]:
        """The grouping order for `num_joints` joints (validated)."""
        if self.joint_order is not None:
            order = tuple(int(j) for j in self.joint_order)
        elif num_joints == len(COCO_JOINT_ORDER):
            order = COCO_JOINT_ORDER
        else:
            order = tuple(range(num_joints))
        if sorted(order) != list(range(num_joints)):
            raise ValueError(f"joint_order must be a permutation of 0..{num_joints - 1}, got {order}")
        return order

    def flip_index_for(self, num_joints: int) -> tuple[int, ...]:
        """The flip pairs as a permutation for `num_joints` joints (validated)."""
        if self.flip_index is not None:
            index = tuple(int(j) for j in self.flip_index)
        elif num_joints == len(COCO_FLIP_INDEX):
            index = COCO_FLIP_INDEX
        else:
            raise ValueError(
                f"flip test with {num_joints} joints needs flip_index (which channel each joint becomes "
                "in a mirrored image); COCO's is only the default for 17 joints"
            )
        if sorted(index) != list(range(num_joints)) or any(index[index[j]] != j for j in range(num_joints)):
            raise ValueError(
                f"flip_index must be a self-inverse permutation of 0..{num_joints - 1}, got {index}"
            )
        return index


@dataclasses.dataclass
class ScaleOutputs:
    """The network's outputs for one test scale, batch axis removed.

    `quarter` [h/4, w/4, J + T] (J heatmaps then T = J or 1 tag channels) and `half`
    [h/2, w/2, J]; `quarter_flip`/`half_flip`: the outputs for the mirrored input,
    exactly as the network returned them (not mirrored back).
    """

    quarter: np.ndarray
    half: np.ndarray
    quarter_flip: np.ndarray | None = None
    half_flip: np.ndarray | None = None
    scale: float = 1.0

    @property
    def flipped(self) -> bool:
        return self.quarter_flip is not None


@dataclasses.dataclass
class Person:
    """One detected person: keypoints [J, 3] (x, y, score) in image pixels, a score and a box.

    Joints neither detected nor refined have score 0 and (x, y) = (0, 0).
    `box` is (x0, y0, x1, y1) around the joints with a positive score.
    """

    keypoints: np.ndarray
    score: float
    box: tuple[float, float, float, float]
    tag: np.ndarray | None = None

    def to_dict(self, names: Sequence[str] | None = None) -> dict:
        """JSON-ready: keypoints as [[x, y, score], …] (and names when given)."""
        out = {
            "score": round(float(self.score), 5),
            "box": [round(float(v), 2) for v in self.box],
            "keypoints": [
                [round(float(x), 2), round(float(y), 2), round(float(s), 5)] for x, y, s in self.keypoints
            ],
        }
        if names is not None:
            out["keypoint_names"] = list(names)
        return out


@dataclasses.dataclass
class DecodeResult:
    """Decoded people of one image: keypoints [P, J, 3] (x, y, score), scores [P], mean tags [P, D]."""

    keypoints: np.ndarray
    scores: np.ndarray
    tags: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def people(self, min_score: float = 0.0) -> list[Person]:
        """The people as `Person` objects, best score first, those below `min_score` left out."""
        out = []
        for i in np.argsort(-self.scores, kind="stable"):
            if self.scores[i] < min_score:
                continue
            kp = self.keypoints[i]
            seen = kp[:, 2] > 0
            if seen.any():
                box = (*kp[seen, :2].min(axis=0), *kp[seen, :2].max(axis=0))
            else:
                box = (0.0, 0.0, 0.0, 0.0)
            out.append(
                Person(kp.copy(), float(self.scores[i]), tuple(float(v) for v in box), self.tags[i].copy())
            )
        return out


class _Timer:
    """Adds the seconds spent in named stages to a dict (when one is given)."""

    def __init__(self, sink: dict | None):
        self.sink = sink
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.sink is not None:
            now = time.perf_counter()
            self.sink[name] = self.sink.get(name, 0.0) + now - self.t
            self.t = now


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of [h, w, C] to size (height, width) with half-pixel centres (as torch's
    interpolate(align_corners=False) and tf.image.resize)."""
    h, w = size
    if a.shape[:2] == (h, w):
        return a
    out = cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)
    return out.reshape(h, w, -1) if out.ndim == 2 else out


def _linear_taps(dst: np.ndarray, n_src: int, n_dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weight of a half-pixel-centre bilinear resize at destination positions."""
    s = np.maximum((dst + 0.5) * (n_src / n_dst) - 0.5, 0.0)
    i0 = np.floor(s).astype(np.int64)
    frac = (s - i0).astype(np.float32)
    i0 = np.minimum(i0, n_src - 1)
    i1 = np.minimum(i0 + 1, n_src - 1)
    return i0, i1, frac


# Up to this many points, tags are read from the R/4 map directly (grouping's few peaks);
# beyond, the R/2 map is made once and read with 4 taps (refinement's many pixels).
_DIRECT_SAMPLES = 4096


class _TagSource:
    """A quarter-resolution tag map, read at base-grid pixels as if it had been resized (bilinear)
    to the half-resolution grid and then to the base grid, as the reference does."""

    def __init__(self, tags: np.ndarray, mid_size: tuple[int, int], base_size: tuple[int, int]):
        self.quarter = tags  # [h/4, w/4, T], already mirrored back and relabelled for flipped inputs
        self.mid_size = mid_size
        self.base_size = base_size
        self._mid: np.ndarray | None = None
        self._row_taps = self._col_taps = None

    @property
    def mid(self) -> np.ndarray:
        if self._mid is None:
            self._mid = _resize(np.ascontiguousarray(self.quarter), self.mid_size)
        return self._mid

    def _sample_direct(self, ys: np.ndarray, xs: np.ndarray, js: np.ndarray | int) -> np.ndarray:
        """Both bilinear steps composed (16 taps per point): no half-resolution map needed."""
        q = self.quarter
        hq, wq, t = q.shape
        (h2, w2), (big_h, big_w) = self.mid_size, self.base_size

        def taps(pos, n_mid, n_big, n_q):
            m0, m1, f = _linear_taps(np.asarray(pos), n_mid, n_big)
            a0, a1, g0 = _linear_taps(m0, n_q, n_mid)
            b0, b1, g1 = _linear_taps(m1, n_q, n_mid)
            index = np.stack([a0, a1, b0, b1], axis=-1)
            weight = np.stack([(1 - f) * (1 - g0), (1 - f) * g0, f * (1 - g1), f * g1], axis=-1)
            return index, weight

        rows, wr = taps(ys, h2, big_h, hq)
        cols, wc = taps(xs, w2, big_w, wq)
        channel = np.zeros(np.shape(ys), np.int64) if t == 1 else np.broadcast_to(js, np.shape(ys))
        values = q[rows[:, :, None], cols[:, None, :], channel[:, None, None]]
        return (values * wr[:, :, None] * wc[:, None, :]).sum(axis=(1, 2))

    def _taps(self):
        if self._row_taps is None:
            h, w, _ = self.mid.shape
            big_h, big_w = self.base_size
            self._row_taps = _linear_taps(np.arange(big_h), h, big_h)
            self._col_taps = _linear_taps(np.arange(big_w), w, big_w)
        return self._row_taps, self._col_taps

    def sample(self, ys: np.ndarray, xs: np.ndarray, js: np.ndarray | int) -> np.ndarray:
        if self._mid is None and np.size(ys) <= _DIRECT_SAMPLES:
            return self._sample_direct(ys, xs, js)
        m = self.mid
        h, w, t = m.shape
        (r0, r1, rf), (c0, c1, cf) = self._taps()
        fy, fx = rf[ys], cf[xs]
        channel = np.zeros_like(np.asarray(js)) if t == 1 else js
        flat = m.reshape(-1)
        row0, row1 = r0[ys] * w, r1[ys] * w
        col0, col1 = c0[xs], c1[xs]
        top = flat[(row0 + col0) * t + channel] * (1 - fx) + flat[(row0 + col1) * t + channel] * fx
        bottom = flat[(row1 + col0) * t + channel] * (1 - fx) + flat[(row1 + col1) * t + channel] * fx
        return top * (1 - fy) + bottom * fy


@dataclasses.dataclass
class AggregatedMaps:
    """Heatmaps [H, W, J] on the base grid and the tag maps (read lazily at base-grid pixels)."""

    heatmaps: np.ndarray
    tag_sources: list

    @classmethod
    def from_arrays(cls, heatmaps: np.ndarray, tags: np.ndarray) -> AggregatedMaps:
        """Maps given directly on the grouping grid: heatmaps [H, W, J], tags [H, W, J or 1(, D)]."""
        heatmaps = np.ascontiguousarray(heatmaps, dtype=np.float32)
        tags = np.asarray(tags, dtype=np.float32)
        if tags.ndim == 3:
            tags = tags[..., None]
        size = heatmaps.shape[:2]
        if heatmaps.ndim != 3 or tags.ndim != 4 or tags.shape[:2] != size:
            raise ValueError(
                f"need heatmaps [H, W, J] and tags [H, W, J, D]; got {heatmaps.shape} and {tags.shape}"
            )
        sources = [_TagSource(np.ascontiguousarray(tags[..., d]), size, size) for d in range(tags.shape[-1])]
        return cls(heatmaps, sources)

    def tags_at(self, ys: np.ndarray, xs: np.ndarray, js: np.ndarray | int) -> np.ndarray:
        """Tag vectors [n, D] at base-grid pixels (ys, xs) for joints js."""
        return np.stack([src.sample(ys, xs, js) for src in self.tag_sources], axis=-1)

    def tag_maps(self) -> np.ndarray:
        """The full tag maps [H, W, J, D] on the base grid (for tests and comparisons; slow)."""
        big_h, big_w = self.heatmaps.shape[:2]
        num_joints = self.heatmaps.shape[-1]
        ys, xs, js = np.meshgrid(np.arange(big_h), np.arange(big_w), np.arange(num_joints), indexing="ij")
        return self.tags_at(ys.ravel(), xs.ravel(), js.ravel()).reshape(big_h, big_w, num_joints, -1)


def _check_outputs(out: ScaleOutputs) -> tuple[int, int]:
    q, h = out.quarter, out.half
    if q.ndim != 3 or h.ndim != 3:
        raise ValueError(
            f"outputs must be [height, width, channels] per image, got quarter {q.shape} and half {h.shape}"
        )
    num_joints = h.shape[-1]
    tag_channels = q.shape[-1] - num_joints
    if tag_channels not in (1, num_joints):
        raise ValueError(
            f"quarter output has {q.shape[-1]} channels; expected {num_joints} heatmaps then {num_joints} "
            "tags (or 1 tag channel)"
        )
    if out.flipped and (
        out.quarter_flip.shape != q.shape or out.half_flip is None or out.half_flip.shape != h.shape
    ):
        raise ValueError("flipped outputs must have the same shapes as the plain ones")
    return num_joints, tag_channels


@functools.lru_cache(maxsize=64)
def _mirror_index(width: int, perm: tuple[int, ...]) -> np.ndarray:
    channels = len(perm)
    return ((width - 1 - np.arange(width))[:, None] * channels + np.asarray(perm)[None, :]).reshape(-1)


def _mirror_relabel(a: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """[h, w, C] mirrored left-right with channel c taken from channel perm[c] (one gather)."""
    h, w, c = a.shape
    index = _mirror_index(w, tuple(int(p) for p in perm))
    return np.ascontiguousarray(a).reshape(h, w * c)[:, index].reshape(h, w, c)


def aggregate_outputs(
    outputs: Sequence[ScaleOutputs],
    base_size: tuple[int, int],
    config: DecodeConfig = DecodeConfig(),
) -> AggregatedMaps:
    """Steps 1–3: stage average, flip average, projection to `base_size` (h, w) and scale average.

    Bilinear resizing is linear and commutes with mirroring, so the mirrored input's outputs
    are mirrored back and relabelled at R/4 and the R/4 heatmaps of both passes resized
    together: one resize per resolution instead of four, same maps up to float rounding.
    """
    if not outputs:
        raise ValueError("no network outputs to decode")
    num_joints, _ = _check_outputs(outputs[0])
    flip_index = None
    heatmaps = None
    tag_sources = []
    for out in outputs:
        if _check_outputs(out)[0] != num_joints:
            raise ValueError("every scale must have the same number of joints")
        mid = out.half.shape[:2]
        quarter_hm = out.quarter[..., :num_joints]
        half_flip = None
        use_tags = config.multi_scale_tags == "all" or out.scale == 1.0 or len(outputs) == 1
        if use_tags:
            tag_sources.append(_TagSource(out.quarter[..., num_joints:], mid, base_size))
        if out.flipped:
            if flip_index is None:
                flip_index = np.asarray(config.flip_index_for(num_joints))
            channels = out.quarter.shape[-1]
            tag_perm = flip_index if channels == 2 * num_joints else np.zeros(1, np.int64)
            perm = np.concatenate([flip_index, num_joints + tag_perm])
            back = _mirror_relabel(out.quarter_flip, perm)
            quarter_hm = quarter_hm + back[..., :num_joints]
            half_flip = _mirror_relabel(out.half_flip, flip_index)
            if use_tags:
                tag_sources.append(_TagSource(back[..., num_joints:], mid, base_size))
        hm = _resize(np.ascontiguousarray(quarter_hm, dtype=np.float32), mid)
        hm += out.half
        if half_flip is not None:
            hm += half_flip
        hm *= np.float32(0.25 if out.flipped else 0.5)
        hm = _resize(hm, base_size)
        if heatmaps is None:
            heatmaps = hm
        else:
            heatmaps += hm
    if len(outputs) > 1:
        heatmaps /= np.float32(len(outputs))
    return AggregatedMaps(np.ascontiguousarray(heatmaps, dtype=np.float32), tag_sources)


def find_peaks(
    heatmaps: np.ndarray, config: DecodeConfig = DecodeConfig(), above: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Step 4: max-pool NMS and the top `max_people` peaks per joint above the detection threshold.

    Returns (joint, y, x, value) of the peaks, grouped by joint, best first within a joint
    (ties: raster order). `above`: flat indices of the values above the detection threshold
    when already known.
    """
    big_h, big_w, num_joints = heatmaps.shape
    flat = heatmaps.reshape(-1)
    idx = np.flatnonzero(flat > config.detection_threshold) if above is None else above
    k = config.nms_kernel
    if idx.size:
        pooled = cv2.dilate(heatmaps, np.ones((k, k), np.uint8)).reshape(heatmaps.shape)
        idx = idx[flat[idx] == pooled.reshape(-1)[idx]]
    vals = flat[idx]
    joint = idx % num_joints
    pix = idx // num_joints
    order = np.lexsort((pix, -vals, joint))
    joint, pix, vals = joint[order], pix[order], vals[order]
    ys, xs = pix // big_w, pix % big_w
    if config.merge_plateaus and vals.size > 1:
        keep = _merge_plateaus(joint, ys, xs, vals, k // 2)
        joint, ys, xs, vals = joint[keep], ys[keep], xs[keep], vals[keep]
    # top-k within each joint
    starts = np.searchsorted(joint, np.arange(num_joints))
    rank = np.arange(joint.size) - starts[joint]
    keep = rank < config.max_people
    return joint[keep], ys[keep], xs[keep], vals[keep]


def _merge_plateaus(joint, ys, xs, vals, radius) -> np.ndarray:
    """Keep one peak (the first in raster order) per plateau: equal-valued maxima of one joint
    chained by NMS-window neighbourhood (a flat top wider than the window leaves several)."""
    same = (joint[1:] == joint[:-1]) & (vals[1:] == vals[:-1])
    keep = np.ones(joint.size, dtype=bool)
    if not same.any():
        return keep
    # runs of equal (joint, value), sorted by raster order within a run
    boundaries = np.flatnonzero(~same) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [joint.size]])
    for s, e in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
        y, x = ys[s:e], xs[s:e]
        near = (np.abs(y[:, None] - y[None, :]) <= radius) & (np.abs(x[:, None] - x[None, :]) <= radius)
        # connected components of the neighbourhood graph; keep each component's first member
        label = np.arange(e - s)
        while True:
            new = np.where(near, label[None, :], e - s).min(axis=1)
            if np.array_equal(new, label):
                break
            label = new
        keep[s:e] = label == np.arange(e - s)
    return keep


def group_peaks(
    joint: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    vals: np.ndarray,
    tags: np.ndarray,
    num_joints: int,
    config: DecodeConfig = DecodeConfig(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 5: associative-embedding grouping of peaks into people.

    Joints are taken in `joint_order`; each joint's peaks are matched to the people
    found so far by the Hungarian algorithm on round(‖tag − person's mean tag‖)·100 −
    value (or the plain distance without `use_detection_val`); a match needs a
    distance below `tag_threshold`; unmatched peaks start new people.
    Returns keypoints [P, J, 3] (x, y, value; peak pixel coordinates), the index of
    the peak behind each keypoint [P, J] (-1: none) and mean tags [P, D].
    """
    order = config.joint_order_for(num_joints)
    dim = tags.shape[-1] if tags.ndim == 2 else 1
    tags = tags.reshape(len(vals), dim)
    starts = np.searchsorted(joint, np.arange(num_joints + 1))
    cap = max(8, len(vals))
    source = np.full((cap, num_joints), -1, dtype=np.int64)
    tag_sum = np.zeros((cap, dim))
    tag_count = np.zeros(cap)
    count = 0
    for j in order:
        lo, hi = starts[j], starts[j + 1]
        if lo == hi:
            continue
        cand = np.arange(lo, hi)
        t = tags[lo:hi].astype(np.float64)
        unmatched = np.ones(hi - lo, dtype=bool)
        if count:
            m = min(count, config.max_people)
            if config.ignore_too_much and m == config.max_people:
                continue
            means = tag_sum[:m] / tag_count[:m, None]
            dist = np.sqrt(((t[:, None, :] - means[None, :, :]) ** 2).sum(-1))
            cost = np.round(dist) * 100 - vals[lo:hi, None] if config.use_detection_val else dist
            if config.gate_assignment:
                cost = np.where(dist < config.tag_threshold, cost, 1e10)
            rows, cols = linear_sum_assignment(cost)
            ok = dist[rows, cols] < config.tag_threshold
            rows, cols = rows[ok], cols[ok]
            source[cols, j] = cand[rows]
            tag_sum[cols] += t[rows]
            tag_count[cols] += 1
            unmatched[rows] = False
        new_rows = np.flatnonzero(unmatched)
        n = len(new_rows)
        source[count : count + n, j] = cand[new_rows]
        tag_sum[count : count + n] = t[new_rows]
        tag_count[count : count + n] = 1
        count += n
    source = source[:count]
    keypoints = np.zeros((count, num_joints, 3), dtype=np.float64)
    found = source >= 0
    src = source[found]
    keypoints[found] = np.stack([xs[src], ys[src], vals[src]], axis=-1)
    return keypoints, source, tag_sum[:count] / np.maximum(tag_count[:count, None], 1)


def _quarter_offsets(heatmaps: np.ndarray, ys: np.ndarray, xs: np.ndarray, js: np.ndarray):
    """±0.25 towards the higher horizontal / vertical neighbour (HigherHRNet's adjustment)."""
    big_h, big_w = heatmaps.shape[:2]
    right = heatmaps[ys, np.minimum(xs + 1, big_w - 1), js]
    left = heatmaps[ys, np.maximum(xs - 1, 0), js]
    down = heatmaps[np.minimum(ys + 1, big_h - 1), xs, js]
    up = heatmaps[np.maximum(ys - 1, 0), xs, js]
    return np.where(right > left, 0.25, -0.25), np.where(down > up, 0.25, -0.25)


def adjust_keypoints(keypoints: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    """Step 6: pixel → pixel + 0.5 ± 0.25 towards the higher neighbour, for found joints."""
    keypoints = keypoints.copy()
    p, j = np.nonzero(keypoints[:, :, 2] > 0)
    xs = keypoints[p, j, 0].astype(np.int64)
    ys = keypoints[p, j, 1].astype(np.int64)
    dx, dy = _quarter_offsets(heatmaps, ys, xs, j)
    keypoints[p, j, 0] = xs + 0.5 + dx
    keypoints[p, j, 1] = ys + 0.5 + dy
    return keypoints


def _pixels_by_joint(
    heatmaps: np.ndarray, floor: float, above: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Flat [H·W·J] indices of values above `floor` (or `above`, when already known), grouped by
    joint (raster order within a joint), and where each joint's group starts."""
    num_joints = heatmaps.shape[-1]
    idx = np.flatnonzero(heatmaps.reshape(-1) > floor) if above is None else above
    joint = (idx % num_joints).astype(np.uint8 if num_joints < 256 else np.uint16)
    order = np.argsort(joint, kind="stable")  # radix sort on small integers
    idx = idx[order]
    starts = np.searchsorted(joint[order], np.arange(num_joints + 1))
    return idx, starts


def refine_keypoints(
    keypoints: np.ndarray,
    person_tags: np.ndarray,
    maps: AggregatedMaps,
    config: DecodeConfig = DecodeConfig(),
    chunk: int = 1 << 15,
    above: np.ndarray | None = None,
) -> np.ndarray:
    """Step 7: fill each person's missing joints at argmax(value − round(‖tag − mean tag‖)).

    "reference": the whole map is searched and the joint filled if its value is
    positive, as HigherHRNet does (it may take another person's joint).
    "exclusive": only pixels scoring above `refine_threshold` are searched, and a pixel
    whose tag is at least as near the mean tag of another person who already holds
    that joint is not a candidate, so a joint is never taken from another person; when
    two people missing a joint pick the same pixel, the one with the nearer tag gets it.
    Vectorised: per joint, all pixels and all people missing it at once (ties: the
    first pixel in raster order, as numpy's argmax in the reference).
    """
    keypoints = keypoints.copy()
    heatmaps = maps.heatmaps
    big_h, big_w, num_joints = heatmaps.shape
    if not len(keypoints):
        return keypoints
    exclusive = config.refine_mode == "exclusive"
    missing = keypoints[:, :, 2] == 0
    if not missing.any():
        return keypoints
    flat = heatmaps.reshape(-1)
    if exclusive:
        idx, starts = _pixels_by_joint(heatmaps, config.refine_threshold, above)
    means = person_tags.astype(np.float32)
    for source in maps.tag_sources:  # many pixels to read: make the R/2 tag maps once
        _ = source.mid
    for j in range(num_joints):
        need = np.flatnonzero(missing[:, j])
        if not need.size:
            continue
        holders = np.flatnonzero(~missing[:, j]) if exclusive else np.zeros(0, np.int64)
        if exclusive:
            pixels = idx[starts[j] : starts[j + 1]] // num_joints
        else:
            pixels = np.arange(big_h * big_w)
        best = np.full(need.size, -np.inf)
        best_pix = np.full(need.size, -1, dtype=np.int64)
        best_dist = np.full(need.size, np.inf)
        for lo in range(0, pixels.size, chunk):
            pix = pixels[lo : lo + chunk]
            vals = flat[pix * num_joints + j]
            t = maps.tags_at(pix // big_w, pix % big_w, j)
            d_all = _distances(t, means)
            d = d_all[:, need]
            if holders.size:
                # pixels at least as near another person holding the joint are theirs
                allowed = d < d_all[:, holders].min(axis=1)[:, None]
                rows = np.flatnonzero(allowed.any(axis=1))
                if not rows.size:
                    continue
                pix, vals, d, allowed = pix[rows], vals[rows], d[rows], allowed[rows]
                score = np.where(allowed, vals[:, None] - np.round(d), -np.inf)
            else:
                score = vals[:, None] - np.round(d)
            arg = np.argmax(score, axis=0)
            top = score[arg, np.arange(need.size)]
            better = top > best  # strictly: earlier chunks hold earlier pixels
            best[better] = top[better]
            best_pix[better] = pix[arg[better]]
            best_dist[better] = d[arg[better], np.flatnonzero(better)]
        found = best_pix >= 0
        if exclusive and found.sum() > 1:
            # two people may not take the same pixel: the nearer tag keeps it
            order = np.lexsort((best_dist, best_pix))
            first = np.ones(order.size, dtype=bool)
            first[1:] = best_pix[order][1:] != best_pix[order][:-1]
            found[order[~first]] = False
        people, pix = need[found], best_pix[found]
        ys, xs = pix // big_w, pix % big_w
        vals = heatmaps[ys, xs, j]
        ok = vals > 0
        people, ys, xs, vals = people[ok], ys[ok], xs[ok], vals[ok]
        if not people.size:
            continue
        dx, dy = _quarter_offsets(heatmaps, ys, xs, np.full(ys.shape, j))
        keypoints[people, j, 0] = xs + 0.5 + dx
        keypoints[people, j, 1] = ys + 0.5 + dy
        keypoints[people, j, 2] = vals
    return keypoints


def _distances(t: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Euclidean distances [n, m] between tag vectors t [n, D] and means [m, D] (D is small)."""
    d2 = np.zeros((t.shape[0], means.shape[0]), dtype=np.result_type(t, means))
    for k in range(t.shape[1]):
        diff = t[:, k, None] - means[None, :, k]
        diff *= diff
        d2 += diff
    return np.sqrt(d2, out=d2)


def decode_maps(
    maps: AggregatedMaps,
    config: DecodeConfig = DecodeConfig(),
    plan: TestPlan | None = None,
    timings: dict | None = None,
) -> DecodeResult:
    """Steps 4–9 on aggregated maps: peaks, grouping, adjustment, refinement, score, mapping."""
    timer = _Timer(timings)
    heatmaps = maps.heatmaps
    num_joints = heatmaps.shape[-1]
    # one pass over the map finds the pixels both the NMS and the refinement look at
    flat = heatmaps.reshape(-1)
    refine_above = None
    exclusive = config.refine and config.refine_mode == "exclusive"
    if exclusive and config.refine_threshold < config.detection_threshold:
        refine_above = np.flatnonzero(flat > config.refine_threshold)
        peaks_above = refine_above[flat[refine_above] > config.detection_threshold]
    else:
        peaks_above = np.flatnonzero(flat > config.detection_threshold)
        if exclusive and config.refine_threshold == config.detection_threshold:
            refine_above = peaks_above
    joint, ys, xs, vals = find_peaks(heatmaps, config, peaks_above)
    timer.lap("nms")
    tags = maps.tags_at(ys, xs, joint)
    keypoints, _, person_tags = group_peaks(joint, ys, xs, vals, tags, num_joints, config)
    timer.lap("group")
    if config.adjust:
        keypoints = adjust_keypoints(keypoints, heatmaps)
    scores = keypoints[:, :, 2].mean(axis=1) if len(keypoints) else np.zeros(0)
    if config.refine:
        keypoints = refine_keypoints(keypoints, person_tags, maps, config, above=refine_above)
    timer.lap("refine")
    found = keypoints[:, :, 2] > 0
    if plan is not None:
        keypoints[..., :2] = plan.to_image(keypoints[..., :2])
    keypoints[~found] = 0.0
    timer.lap("map")
    return DecodeResult(
        keypoints.astype(np.float32), scores.astype(np.float32), person_tags.astype(np.float32)
    )


def decode_outputs(
    outputs: Sequence[ScaleOutputs] | ScaleOutputs,
    plan: TestPlan | None = None,
    config: DecodeConfig = DecodeConfig(),
    timings: dict | None = None,
) -> DecodeResult:
    """Network outputs of one image (one `ScaleOutputs` per test scale) → people.

    With a `plan` (from `keras_ehrnet.inference.transforms.make_test_plan`) keypoints are in
    original image pixels; without, in pixels of the network input whose outputs
    were given (one scale only). `timings`, when a dict, receives seconds per stage.
    """
    if isinstance(outputs, ScaleOutputs):
        outputs = [outputs]
    if plan is None:
        if len(outputs) != 1:
            raise ValueError("decoding several scales needs the TestPlan that made them")
        h2, w2 = outputs[0].half.shape[:2]
        base_size = (2 * h2, 2 * w2)
    else:
        base_size = plan.base_size
        if len(outputs) != len(plan.scales):
            raise ValueError(f"{len(outputs)} scale outputs for a plan of {len(plan.scales)} scales")
    timer = _Timer(timings)
    maps = aggregate_outputs(outputs, base_size, config)
    timer.lap("aggregate")
    return decode_maps(maps, config, plan, timings)


def decode(
    quarter: np.ndarray,
    half: np.ndarray,
    quarter_flip: np.ndarray | None = None,
    half_flip: np.ndarray | None = None,
    config: DecodeConfig = DecodeConfig(),
) -> DecodeResult:
    """One image's outputs at one scale (batch axis optional) → people in network-input pixels.

    The plain-array entry point for comparing other decoders (e.g. an in-graph one)."""

    def one(a):
        if a is None:
            return None
        a = np.asarray(a, dtype=np.float32)
        if a.ndim == 4:
            if a.shape[0] != 1:
                raise ValueError(f"decode takes one image; got a batch of {a.shape[0]}")
            a = a[0]
        return a

    out = ScaleOutputs(one(quarter), one(half), one(quarter_flip), one(half_flip))
    return decode_outputs([out], None, config)
