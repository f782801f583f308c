"""Heatmaps, joints tensor, augmentation geometry and flip pairs (no images needed)."""

import math

import numpy as np
import pytest
import tensorflow as tf
from synthetic_coco import COCO_NAMES, CROWDPOSE_NAMES

from keras_ehrnet.data import AffineParams, AugmentConfig, DatasetError, gaussian_heatmaps, infer_flip_index
from keras_ehrnet.data.augment import affine_matrix, draw_params, transform_keypoints
from keras_ehrnet.data.targets import joints_tensor, render_heatmaps
from keras_ehrnet.data.visualize import decode_joints
from keras_ehrnet.keypoints import (
    COCO,
    COCO_FLIP_INDEX,
    COCO_JOINT_ORDER,
    COCO_SKELETON,
    find_dataset_info,
    flip_index_from_pairs,
    resolve_flip_index,
)


def _kp(*points, j=1):
    """[N, j, 3] with joint 0 of person n at points[n] = (x, y, v)."""
    out = np.zeros((len(points), j, 3), np.float32)
    for n, p in enumerate(points):
        out[n, 0] = p
    return out


def test_gaussian_peak_sits_at_the_floor_cell_with_a_cut_window():
    h = gaussian_heatmaps(_kp((10.7, 5.2, 2)), 16, 32, sigma=2.0)[..., 0]
    assert h.shape == (16, 32)
    assert np.unravel_index(h.argmax(), h.shape) == (5, 10)
    assert h[5, 10] == 1.0
    assert h[5, 17] == pytest.approx(math.exp(-49 / 8), rel=1e-6)  # 3σ+1 = 7 px away: last in window
    assert h[5, 18] == 0.0 and h[5, 2] == 0.0
    assert h[6, 11] == pytest.approx(math.exp(-2 / 8), rel=1e-6)


def test_gaussian_keeps_the_maximum_over_people_not_the_sum():
    h = gaussian_heatmaps(_kp((10, 8, 2), (12, 8, 1)), 16, 32)[..., 0]
    assert h[8, 11] == pytest.approx(math.exp(-1 / 8), rel=1e-6)
    assert h[8, 10] == 1.0 and h[8, 12] == 1.0


def test_gaussian_drops_unlabelled_and_outside_keypoints():
    outside = _kp((5, 5, 0), (-0.5, 3, 2), (32.0, 3, 2), (4, 16.0, 2), (np.nan, 3, 2))
    assert not gaussian_heatmaps(outside, 16, 32).any()
    edge = gaussian_heatmaps(_kp((31.99, 15.99, 2)), 16, 32)[..., 0]
    assert edge[15, 31] == 1.0


def test_tf_renderer_equals_numpy_renderer():
    rng = np.random.default_rng(0)
    kp = np.zeros((3, 5, 4, 3), np.float32)
    kp[..., :2] = rng.uniform(-20, 140, size=(3, 5, 4, 2))
    kp[..., 2] = rng.integers(0, 3, size=(3, 5, 4))
    kp[1, 3:] = 0  # padded people, as padded_batch leaves them
    for stride, size in ((4, 32), (2, 64)):
        got = render_heatmaps(tf.constant(kp), stride, size, size).numpy()
        want = np.stack([gaussian_heatmaps(kp[b] / np.float32(stride), size, size) for b in range(3)])
        assert got.shape == (3, size, size, 4)
        np.testing.assert_array_equal(got, want)
        assert got.max() == 1.0


def test_joints_tensor_rows_decode_back_to_the_keypoint_cells():
    kp = np.zeros((2, 4, 3, 3), np.float32)
    kp[0, 0] = [[9, 13, 2], [50, 1, 1], [7, 7, 0]]  # person 0: two labelled joints
    kp[0, 1] = [[500, 5, 2], [-3, 5, 2], [5, 5, 0]]  # person 1: all outside or unlabelled → no row
    kp[0, 2] = [[0, 0, 2], [63.9, 63.9, 2], [20, 30, 2]]
    kp[1, 0] = [[33, 17, 2], [0, 0, 0], [0, 0, 0]]
    joints = joints_tensor(tf.constant(kp), 4, 16, 16, max_people=3).numpy()
    assert joints.shape == (2, 3, 3, 2) and joints.dtype == np.int32
    cells = decode_joints(joints, 16)
    np.testing.assert_array_equal(cells[0, 0], [[2, 3, 1], [12, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(cells[0, 1], [[0, 0, 1], [15, 15, 1], [5, 7, 1]])  # person 2, compacted
    assert not joints[0, 2].any()
    np.testing.assert_array_equal(cells[1, 0, 0], [8, 4, 1])
    assert not joints[1, 1:].any()


def test_joints_tensor_keeps_at_most_max_people_rows():
    kp = np.zeros((1, 5, 1, 3), np.float32)
    kp[0, :, 0] = [[4 * n, 0, 2] for n in range(5)]
    joints = joints_tensor(tf.constant(kp), 4, 8, 8, max_people=3).numpy()
    np.testing.assert_array_equal(joints[0, :, 0, 0], [0, 1, 2])


def test_eval_affine_fits_the_short_side_centred():
    m = affine_matrix(640, 480, 512, AffineParams())
    pts = transform_keypoints(np.array([[[320, 240, 2], [320, 0, 2], [0, 240, 2]]], np.float32), m)
    np.testing.assert_allclose(pts[0, :, :2], [[256, 256], [256, 0], [256 - 320 * 512 / 480, 256]], atol=1e-4)
    long = affine_matrix(640, 480, 512, AffineParams(), scale_type="long")
    assert transform_keypoints(np.array([[[0, 240, 1]]], np.float32), long)[0, 0, 0] == pytest.approx(
        0, abs=1e-4
    )


def test_affine_rotation_zoom_shift_and_flip():
    p = AffineParams(scale=2.0, rotation=90.0, shift_x=10.0, shift_y=0.0, flip=False)
    m = affine_matrix(400, 400, 200, p)
    # Crop box = 2 × 400 px around (210, 200): 4 source px per input px; rotated by 90°.
    pts = transform_keypoints(np.array([[[210, 200, 1], [250, 200, 1]]], np.float32), m)[0, :, :2]
    np.testing.assert_allclose(pts[0], [100, 100], atol=1e-4)
    np.testing.assert_allclose(np.abs(pts[1] - pts[0]), [0, 10], atol=1e-4)
    flipped = affine_matrix(400, 400, 200, AffineParams(scale=2.0, rotation=90.0, shift_x=10.0, flip=True))
    q = transform_keypoints(np.array([[[250, 200, 1]]], np.float32), flipped)[0, 0]
    np.testing.assert_allclose(q[:2], [199 - pts[1, 0], pts[1, 1]], atol=1e-4)


def test_flip_keypoints_swaps_left_and_right():
    kp = np.zeros((1, 3, 3), np.float32)
    kp[0, :, 0] = [1, 2, 3]
    out = transform_keypoints(kp, np.array([[1.0, 0, 0], [0, 1, 0]]), [0, 2, 1])
    np.testing.assert_array_equal(out[0, :, 0], [1, 3, 2])


def test_draw_params_stay_in_the_configured_ranges():
    cfg = AugmentConfig()
    rng = np.random.default_rng(1)
    draws = [draw_params(cfg, rng, 640, 480) for _ in range(2000)]
    scales = np.array([d.scale for d in draws])
    rots = np.array([d.rotation for d in draws])
    # The shift is ±max_translate units of the 200 px box, which scales with the zoom.
    shift = np.array([abs(d.shift_x) / (480 / 200 * d.scale) for d in draws])
    assert 0.75 <= scales.min() < 0.77 and 1.48 < scales.max() <= 1.5
    assert -30 <= rots.min() < -29 and 29 < rots.max() <= 30
    assert shift.max() <= 40 and shift.max() > 39
    assert 0.45 < np.mean([d.flip for d in draws]) < 0.55
    off = AugmentConfig(max_rotation=0, min_scale=1, max_scale=1, max_translate=0, flip_prob=0)
    assert draw_params(off, rng, 640, 480) == AffineParams()


@pytest.mark.parametrize(
    "kwargs",
    [dict(scale_type="wide"), dict(min_scale=2, max_scale=1), dict(flip_prob=1.5), dict(max_rotation=-1)],
)
def test_augment_config_rejects_bad_ranges(kwargs):
    with pytest.raises(ValueError):
        AugmentConfig(**kwargs)


def test_flip_index_from_names():
    coco = infer_flip_index(COCO_NAMES)
    for i, name in enumerate(COCO_NAMES):
        partner = name.replace("left", "RIGHT").replace("right", "left").replace("RIGHT", "right")
        assert COCO_NAMES[coco[i]] == partner
    crowd = infer_flip_index(CROWDPOSE_NAMES)
    assert crowd[:12] == [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10] and crowd[12:] == [12, 13]
    assert infer_flip_index(["head", "eye_l", "eye_r", "L_paw", "R_paw"]) == [0, 2, 1, 4, 3]


def test_coco_is_one_dataset_instance_whose_flip_index_comes_from_its_names():
    # HigherHRNet's published FLIP_CONFIG["COCO"], which decoding used as a literal before
    assert COCO_FLIP_INDEX == (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
    assert find_dataset_info(COCO_NAMES) is COCO and COCO.flip_index == COCO_FLIP_INDEX
    assert COCO.skeleton == COCO_SKELETON and len(COCO.sigmas) == COCO.num_joints == 17
    assert sorted(COCO_JOINT_ORDER) == list(range(17))
    assert all(0 <= a < 17 and 0 <= b < 17 for a, b in COCO_SKELETON)
    assert resolve_flip_index(COCO_NAMES) == list(COCO_FLIP_INDEX)
    assert resolve_flip_index(["a", "b", "c"], [("a", "c")]) == [2, 1, 0]


def test_flip_index_refuses_to_guess():
    with pytest.raises(DatasetError, match="leftEye"):
        infer_flip_index(["leftEye", "rightEye"])
    with pytest.raises(DatasetError, match="right_knee"):
        infer_flip_index(["left_knee", "nose"])


def test_explicit_flip_pairs_by_index_or_name():
    names = ["a", "b", "c", "d"]
    assert flip_index_from_pairs([(0, 3), ("b", "c")], names) == [3, 2, 1, 0]
    with pytest.raises(DatasetError, match="more than one pair"):
        flip_index_from_pairs([(0, 1), (1, 2)], names)
    with pytest.raises(DatasetError, match="not a keypoint"):
        flip_index_from_pairs([(0, 9)], names)
