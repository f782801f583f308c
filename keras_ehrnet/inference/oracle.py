"""Ideal network outputs built from ground truth: the ceiling of decoding and coordinate mapping.

For each test scale (and the mirrored input under flip test) the annotated
keypoints are carried into the network input by the same transform the
predictor uses, then rendered as the network is trained to output them:
Gaussian heatmaps (σ = 2 at R/4 and at R/2, placed by
`keras_ehrnet.data.targets.gaussian_heatmaps`, keypoints scaled by 1/4 and 1/2
as the training targets are) and tags holding one constant value per person,
written wherever that person's Gaussian is the strongest (0 elsewhere).
Decoding these outputs measures everything after the network: a transform
error shows up as a lost AP point at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from keras_ehrnet.inference.decoding import ScaleOutputs
from keras_ehrnet.inference.transforms import DEFAULT_SIZE_MULTIPLE, TestPlan, apply_affine, make_test_plan
from keras_ehrnet.keypoints import COCO_FLIP_INDEX


@dataclasses.dataclass(frozen=True)
class Oracle:
    """Stands in for a network in `evaluate_coco`: ideal outputs from each image's annotations."""

    sigma: float = 2.0
    tag_per_joint: bool = True
    num_joints: int = 17
    name: str = "oracle"


def person_keypoints(anns: Sequence[dict], num_joints: int = 17) -> np.ndarray:
    """[N, J, 3] (x, y, v) of the non-crowd COCO annotations that have keypoints."""
    rows = []
    for ann in anns:
        if ann.get("iscrowd", 0) or not ann.get("num_keypoints", 0) or "keypoints" not in ann:
            continue
        kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        if kp.shape[0] != num_joints:
            raise ValueError(f"annotation {ann.get('id')} has {kp.shape[0]} keypoints, expected {num_joints}")
        rows.append(kp)
    return np.stack(rows) if rows else np.zeros((0, num_joints, 3))


def oracle_maps(
    keypoints: np.ndarray,
    input_size: tuple[int, int],
    *,
    sigma: float = 2.0,
    tag_values: Sequence[float] | None = None,
    tag_per_joint: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Ideal (quarter [h/4, w/4, J + T], half [h/2, w/2, J]) for keypoints [N, J, 3] in input pixels.

    Person n's tag is `tag_values[n]` (default n + 1), written in joint j's tag channel
    wherever n's Gaussian for j is the strongest; T = J, or 1 without `tag_per_joint`
    (then wherever any of n's Gaussians is the strongest).
    """
    from keras_ehrnet.data.targets import gaussian_heatmaps

    h, w = input_size
    if h % 4 or w % 4:
        raise ValueError(f"input size must be divisible by 4, got {h}x{w}")
    kp = np.asarray(keypoints, dtype=np.float64)
    n, num_joints = kp.shape[0], kp.shape[1]
    tags = np.arange(1, n + 1, dtype=np.float32) if tag_values is None else np.asarray(tag_values, np.float32)
    if tags.shape != (n,):
        raise ValueError(f"need one tag value per person: {n} people, {tags.shape} values")

    def scaled(stride: int) -> np.ndarray:
        out = kp.copy()
        out[..., :2] /= stride
        return out

    hq, wq = h // 4, w // 4
    quarter_kp = scaled(4)
    if n:
        per_person = np.stack([gaussian_heatmaps(quarter_kp[i : i + 1], hq, wq, sigma) for i in range(n)])
        heat_q = per_person.max(axis=0)
    else:
        per_person = np.zeros((0, hq, wq, num_joints), np.float32)
        heat_q = np.zeros((hq, wq, num_joints), np.float32)
    if not tag_per_joint:
        per_person = per_person.max(axis=-1, keepdims=True)
    if n:
        owner = per_person.argmax(axis=0)
        tag_q = np.where(per_person.max(axis=0) > 0, tags[owner], 0.0).astype(np.float32)
    else:
        tag_q = np.zeros((hq, wq, per_person.shape[-1]), np.float32)
    heat_h = gaussian_heatmaps(scaled(2), h // 2, w // 2, sigma)
    return np.concatenate([heat_q, tag_q], axis=-1), heat_h


def mirror_keypoints(keypoints: np.ndarray, width: int, flip_index: Sequence[int]) -> np.ndarray:
    """Keypoints of the mirrored image (x → width − 1 − x), joints relabelled by the flip pairs."""
    out = np.asarray(keypoints, dtype=np.float64)[:, list(flip_index)].copy()
    out[..., 0] = width - 1 - out[..., 0]
    return out


def oracle_scale_outputs(
    keypoints: np.ndarray,
    plan: TestPlan,
    *,
    flip: bool = True,
    flip_index: Sequence[int] | None = None,
    sigma: float = 2.0,
    tag_per_joint: bool = True,
) -> list[ScaleOutputs]:
    """Ideal outputs for every scale of `plan` from keypoints [N, J, 3] in original image pixels."""
    kp = np.asarray(keypoints, dtype=np.float64)
    if flip and flip_index is None:
        if kp.shape[1] != len(COCO_FLIP_INDEX):
            raise ValueError(f"flip test with {kp.shape[1]} joints needs flip_index")
        flip_index = COCO_FLIP_INDEX
    outputs = []
    for entry in plan.scales:
        inp = kp.copy()
        inp[..., :2] = apply_affine(kp[..., :2], entry.affine)
        quarter, half = oracle_maps(inp, entry.size, sigma=sigma, tag_per_joint=tag_per_joint)
        quarter_f = half_f = None
        if flip:
            mirrored = mirror_keypoints(inp, entry.size[1], flip_index)
            quarter_f, half_f = oracle_maps(mirrored, entry.size, sigma=sigma, tag_per_joint=tag_per_joint)
        outputs.append(ScaleOutputs(quarter, half, quarter_f, half_f, entry.scale))
    return outputs


def oracle_outputs(
    anns: Sequence[dict],
    image_shape: Sequence[int],
    input_size: int,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = True,
    flip_index: Sequence[int] | None = None,
    sigma: float = 2.0,
    num_joints: int = 17,
    tag_per_joint: bool = True,
    size_multiple: int = DEFAULT_SIZE_MULTIPLE,
    fixed_input_size: tuple[int, int] | None = None,
) -> tuple[list[ScaleOutputs], TestPlan]:
    """Ideal outputs of one image from its COCO annotations, with the plan that places them.

    `image_shape` is (height, width[, channels]) of the original image. Decode with
    `keras_ehrnet.inference.decoding.decode_outputs(outputs, plan)`.
    """
    plan = make_test_plan(
        tuple(image_shape[:2]),
        input_size,
        scales,
        size_multiple=size_multiple,
        fixed_input_size=fixed_input_size,
    )
    kp = person_keypoints(anns, num_joints)
    outputs = oracle_scale_outputs(
        kp, plan, flip=flip, flip_index=flip_index, sigma=sigma, tag_per_joint=tag_per_joint
    )
    return outputs, plan


# A person standing, facing the camera: COCO's 17 joints as (x, y) in units of body height,
# x from the body's centre line, y down from the top of the head.
STANDING_POSE: tuple[tuple[float, float], ...] = (
    (0.0, 0.06),
    (0.02, 0.04),
    (-0.02, 0.04),
    (0.045, 0.055),
    (-0.045, 0.055),
    (0.11, 0.19),
    (-0.11, 0.19),
    (0.15, 0.35),
    (-0.15, 0.35),
    (0.16, 0.49),
    (-0.16, 0.49),
    (0.07, 0.53),
    (-0.07, 0.53),
    (0.08, 0.74),
    (-0.08, 0.74),
    (0.08, 0.95),
    (-0.08, 0.95),
)


def synthetic_crowd(
    num_people: int,
    image_size: tuple[int, int] = (480, 640),
    *,
    seed: int = 0,
    jitter: float = 0.03,
    image_id: int = 1,
) -> list[dict]:
    """COCO-style annotations of `num_people` standing people on a jittered grid over an image of
    (height, width): every joint visible and inside the image; neighbours may overlap a little.

    For timing the decoding against crowd size (with `oracle_outputs`) and for its tests.
    """
    if num_people < 0:
        raise ValueError(f"num_people must be >= 0, got {num_people}")
    h, w = image_size
    rng = np.random.default_rng(seed)
    cols = max(1, int(np.ceil(np.sqrt(num_people * w / h)))) if num_people else 1
    rows = max(1, int(np.ceil(num_people / cols))) if num_people else 1
    cell_w, cell_h = w / cols, h / rows
    pose = np.asarray(STANDING_POSE)
    anns = []
    for n in range(num_people):
        r, c = divmod(n, cols)
        height = cell_h * rng.uniform(0.75, 0.9)
        cx = (c + 0.5) * cell_w + rng.uniform(-0.1, 0.1) * cell_w
        top = r * cell_h + rng.uniform(0.02, 0.08) * cell_h
        xy = pose * height + rng.normal(0.0, jitter * height, pose.shape)
        xy[:, 0] += cx
        xy[:, 1] += top
        xy[:, 0] = np.clip(xy[:, 0], 0, w - 1)
        xy[:, 1] = np.clip(xy[:, 1], 0, h - 1)
        kp = np.concatenate([xy, np.full((len(pose), 1), 2.0)], axis=1)
        x0, y0 = xy.min(axis=0)
        x1, y1 = xy.max(axis=0)
        anns.append(
            {
                "id": image_id * 1000 + n + 1,
                "image_id": image_id,
                "category_id": 1,
                "iscrowd": 0,
                "num_keypoints": len(pose),
                "keypoints": [round(float(v), 2) for v in kp.reshape(-1)],
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "area": float((x1 - x0) * (y1 - y0)),
            }
        )
    return anns
