"""Decoding: grouping with known answers, flip symmetry, multi-scale shapes, coordinate mapping."""

import numpy as np
import pytest

from keras_ehrnet.inference.decoding import (
    AggregatedMaps,
    DecodeConfig,
    ScaleOutputs,
    aggregate_outputs,
    decode,
    decode_maps,
    decode_outputs,
    find_peaks,
)
from keras_ehrnet.inference.oracle import mirror_keypoints, oracle_maps, oracle_outputs, synthetic_crowd
from keras_ehrnet.inference.transforms import apply_affine, invert_affine, make_test_plan
from keras_ehrnet.keypoints import COCO_FLIP_INDEX


def blobs(size, peaks, num_joints, sigma=2.0):
    """Heatmaps [H, W, J] with Gaussians at integer (joint, x, y, value) and tags [H, W, J] that
    carry each peak's tag wherever its Gaussian is the strongest."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    heat = np.zeros((h, w, num_joints), np.float32)
    tags = np.zeros((h, w, num_joints), np.float32)
    for j, x, y, value, tag in peaks:
        g = value * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)).astype(np.float32)
        stronger = g > heat[..., j]
        heat[..., j] = np.where(stronger, g, heat[..., j])
        tags[..., j] = np.where(stronger, tag, tags[..., j])
    return heat, tags


def person_with(result, tag, tol=0.3):
    matches = [i for i, t in enumerate(result.tags) if abs(float(t[0]) - tag) < tol]
    assert len(matches) == 1, f"expected one person with tag {tag}, got tags {result.tags.ravel()}"
    return result.keypoints[matches[0]]


def test_two_people_crossing_are_separated_by_their_tags():
    # A runs top-left → bottom-right, B top-right → bottom-left; at the crossing their joint 2
    # peaks are 4 px apart (both survive the 5x5 NMS) and only the tags tell them apart.
    a = [(10, 10), (20, 20), (28, 30), (40, 40)]
    b = [(50, 10), (40, 20), (32, 30), (20, 40)]
    peaks = [(j, x, y, 1.0, 1.0) for j, (x, y) in enumerate(a)]
    peaks += [(j, x, y, 0.9, 3.0) for j, (x, y) in enumerate(b)]
    heat, tags = blobs((64, 64), peaks, 4)
    config = DecodeConfig(refine=False)
    result = decode_maps(AggregatedMaps.from_arrays(heat, tags), config)
    assert len(result) == 2
    for tag, points, value in ((1.0, a, 1.0), (3.0, b, 0.9)):
        kp = person_with(result, tag)
        # peak pixel + 0.5, then -0.25 towards the (equal, so not higher) neighbours
        np.testing.assert_allclose(kp[:, :2], np.asarray(points) + 0.25, atol=1e-5)
        np.testing.assert_allclose(kp[:, 2], value, atol=1e-6)
    scores = sorted(result.scores)
    np.testing.assert_allclose(scores, [0.9, 1.0], atol=1e-6)


def test_missing_joint_is_refined_from_the_mean_tag():
    # Person A's joint 3 only reaches 0.06 (below the 0.1 detection threshold) but carries A's tag.
    peaks = [(0, 10, 10, 1.0, 1.0), (1, 12, 20, 1.0, 1.0), (2, 14, 30, 1.0, 1.0), (3, 16, 41, 0.06, 1.0)]
    peaks += [(0, 40, 10, 1.0, 3.0), (1, 42, 20, 1.0, 3.0), (2, 44, 30, 1.0, 3.0), (3, 46, 40, 1.0, 3.0)]
    heat, tags = blobs((56, 56), peaks, 4)
    maps = AggregatedMaps.from_arrays(heat, tags)
    plain = decode_maps(maps, DecodeConfig(refine=False))
    assert person_with(plain, 1.0)[3, 2] == 0
    for mode in ("exclusive", "reference"):
        refined = decode_maps(maps, DecodeConfig(refine=True, refine_mode=mode))
        kp = person_with(refined, 1.0)
        np.testing.assert_allclose(kp[3], [16.25, 41.25, 0.06], atol=1e-5)
        # the person score is taken before refinement, as the reference does
        np.testing.assert_allclose(sorted(refined.scores), sorted(plain.scores))


def test_exclusive_refine_never_takes_a_joint_another_person_holds():
    # B has no joint 3 at all; the only joint-3 response belongs to A.
    peaks = [(0, 10, 10, 1.0, 1.0), (1, 10, 20, 1.0, 1.0), (3, 10, 30, 1.0, 1.0)]
    peaks += [(0, 40, 10, 1.0, 2.0), (1, 40, 20, 1.0, 2.0)]
    heat, tags = blobs((48, 56), peaks, 4)
    maps = AggregatedMaps.from_arrays(heat, tags)
    reference = decode_maps(maps, DecodeConfig(refine_mode="reference"))
    exclusive = decode_maps(maps, DecodeConfig(refine_mode="exclusive"))
    b_ref, b_excl = person_with(reference, 2.0), person_with(exclusive, 2.0)
    assert b_ref[3, 2] > 0.5 and abs(b_ref[3, 0] - 10.25) < 1e-5  # the reference takes A's joint
    assert b_excl[3, 2] == 0  # ours leaves it missing
    np.testing.assert_allclose(person_with(exclusive, 1.0)[3], [10.25, 30.25, 1.0], atol=1e-5)
    # nobody holds joint 3 and both want the one response: the nearer tag gets it, only once
    peaks = [(0, 10, 10, 1.0, 1.0), (1, 10, 20, 1.0, 1.0), (0, 40, 10, 1.0, 3.0), (1, 40, 20, 1.0, 3.0)]
    peaks += [(3, 25, 30, 0.05, 1.2)]
    heat, tags = blobs((48, 56), peaks, 4)
    maps = AggregatedMaps.from_arrays(heat, tags)
    exclusive = decode_maps(maps, DecodeConfig(refine_mode="exclusive"))
    assert person_with(exclusive, 1.0)[3, 2] == pytest.approx(0.05) and person_with(exclusive, 3.0)[3, 2] == 0
    reference = decode_maps(maps, DecodeConfig(refine_mode="reference"))
    assert person_with(reference, 1.0)[3, 2] == person_with(reference, 3.0)[3, 2] == pytest.approx(0.05)


def test_more_than_max_people_candidates_keeps_the_strongest():
    rng = np.random.default_rng(0)
    values = rng.permutation(np.linspace(0.2, 0.95, 40))
    peaks = [(0, 8 + 10 * (i % 8), 8 + 10 * (i // 8), float(v), 2.0 * i) for i, v in enumerate(values)]
    heat, tags = blobs((60, 90), peaks, 1)
    maps = AggregatedMaps.from_arrays(heat, tags)
    joint, ys, xs, vals = find_peaks(heat, DecodeConfig())
    np.testing.assert_allclose(vals, np.sort(values)[::-1][:30], atol=1e-6)
    result = decode_maps(maps, DecodeConfig(refine=False))
    assert len(result) == 30
    np.testing.assert_allclose(np.sort(result.scores), np.sort(values)[-30:], atol=1e-6)
    assert len(decode_maps(maps, DecodeConfig(refine=False, max_people=40))) == 40


def test_plateaus_count_as_one_peak():
    heat = np.zeros((20, 20, 1), np.float32)
    heat[5, 5:9, 0] = 0.8  # a flat top wider than the NMS window
    heat[15, 15, 0] = 0.5
    joint, ys, xs, vals = find_peaks(heat, DecodeConfig())
    assert list(zip(ys, xs)) == [(5, 5), (15, 15)]
    _, ys, xs, _ = find_peaks(heat, DecodeConfig(merge_plateaus=False))
    assert len(ys) == 5


def test_gated_assignment_does_not_trade_a_match_for_two_impossible_ones():
    # Joint 0 starts three people with tags 2, 6 and 5; joint 1 has peaks with tags 1, 6 and 2
    # (flip-stacked, so distances are √2 × the tag gap). Ungated Hungarian on round(d)·100 − v
    # gives tag 1 to the person with tag 2 and tag 2 to the one with tag 5, then rejects both.
    peaks = [(0, 10, 10, 1.0, 2.0), (0, 30, 10, 1.0, 6.0), (0, 50, 10, 1.0, 5.0)]
    peaks += [(1, 10, 30, 0.9, 1.0), (1, 30, 30, 0.9, 6.0), (1, 50, 30, 0.9, 2.0)]
    heat, tags = blobs((40, 60), peaks, 2)
    maps = AggregatedMaps.from_arrays(heat, np.stack([tags, tags], axis=-1))
    gated = decode_maps(maps, DecodeConfig(refine=False))
    ungated = decode_maps(maps, DecodeConfig(refine=False, gate_assignment=False))
    assert len(ungated) == 5
    assert len(gated) == 4
    np.testing.assert_allclose(person_with(gated, 2.0)[1, :2], [50.25, 30.25], atol=1e-5)


def oracle_pair(keypoints, size):
    quarter, half = oracle_maps(keypoints, size)
    mirrored = mirror_keypoints(keypoints, size[1], COCO_FLIP_INDEX)
    quarter_f, half_f = oracle_maps(mirrored, size)
    return quarter, half, quarter_f, half_f


def test_flip_test_is_symmetric():
    size = (128, 192)
    kp = np.asarray(
        [[[40 + 3 * j, 20 + 5 * j, 2] for j in range(17)], [[140 - 2 * j, 30 + 4 * j, 2] for j in range(17)]],
        np.float64,
    )
    q, h, qf, hf = oracle_pair(kp, size)
    config = DecodeConfig()
    maps = aggregate_outputs([ScaleOutputs(q, h, qf, hf)], size, config)
    swapped = aggregate_outputs([ScaleOutputs(qf, hf, q, h)], size, config)
    flip = list(COCO_FLIP_INDEX)
    np.testing.assert_allclose(maps.heatmaps, swapped.heatmaps[:, ::-1][..., flip], atol=1e-6)
    a = decode(q, h, qf, hf, config)
    b = decode(qf, hf, q, h, config)
    assert len(a) == len(b) == 2
    for person in a.keypoints:
        mirrored = person[flip].copy()
        mirrored[:, 0] = size[1] - mirrored[:, 0]
        err = [np.abs(other[:, :2] - mirrored[:, :2]).max() for other in b.keypoints]
        # ±0.25 adjustment breaks ties towards the left/top, so a mirror can move by 0.5
        assert min(err) <= 0.5 + 1e-5
    # ideal outputs: flip test finds the same people at (nearly) the same places as without
    plain = decode(q, h, config=config)
    for person in a.keypoints:
        assert min(np.abs(p[:, :2] - person[:, :2]).max() for p in plain.keypoints) <= 2.5


def test_other_joint_sets_and_a_single_tag_channel():
    # 14 joints (CrowdPose-like pairs) with flip test, and one tag channel shared by all joints
    flip14 = (1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12, 13)
    size = (128, 160)
    kp = np.asarray(
        [[[30 + 2 * j, 10 + 8 * j, 2] for j in range(14)], [[120 - 3 * j, 12 + 8 * j, 2] for j in range(14)]],
        np.float64,
    )
    for tag_per_joint in (True, False):
        q, h = oracle_maps(kp, size, tag_per_joint=tag_per_joint)
        qf, hf = oracle_maps(mirror_keypoints(kp, size[1], flip14), size, tag_per_joint=tag_per_joint)
        assert q.shape[-1] == (28 if tag_per_joint else 15)
        order = (13, 12, *range(12))
        result = decode(q, h, qf, hf, DecodeConfig(flip_index=flip14, joint_order=order))
        assert len(result) == 2 and result.keypoints.shape[1:] == (14, 3)
        for person in kp:
            assert min(np.abs(p[:, :2] - person[:, :2]).max() for p in result.keypoints) <= 2.5


def test_flip_needs_flip_pairs_for_other_joint_sets():
    q = np.zeros((8, 8, 8), np.float32)
    h = np.zeros((16, 16, 4), np.float32)
    with pytest.raises(ValueError, match="flip_index"):
        decode(q, h, q, h)
    result = decode(q, h, q, h, DecodeConfig(flip_index=(1, 0, 3, 2)))
    assert len(result) == 0 and result.keypoints.shape == (0, 4, 3)
    with pytest.raises(ValueError, match="self-inverse"):
        decode(q, h, q, h, DecodeConfig(flip_index=(1, 2, 3, 0)))
    with pytest.raises(ValueError, match="joint_order"):
        decode(q, h, config=DecodeConfig(joint_order=(0, 1, 2)))


def test_multi_scale_shapes_and_people():
    anns = synthetic_crowd(3, (300, 420), seed=1)
    scales = (0.5, 1.0, 1.5)
    outputs, plan = oracle_outputs(anns, (300, 420), 256, scales=scales, flip=True)
    assert [e.scale for e in plan.scales] == [1.5, 1.0, 0.5]
    for entry, out in zip(plan.scales, outputs):
        assert min(entry.size) == int(256 * entry.scale)
        assert entry.size[0] % 32 == 0 and entry.size[1] % 32 == 0
        assert out.half.shape == (entry.size[0] // 2, entry.size[1] // 2, 17)
        assert out.quarter.shape == (entry.size[0] // 4, entry.size[1] // 4, 34)
    assert plan.base_size == next(e.size for e in plan.scales if e.scale == 1.0)
    maps = aggregate_outputs(outputs, plan.base_size, DecodeConfig())
    assert maps.heatmaps.shape == (*plan.base_size, 17)
    assert maps.tags_at(np.array([5]), np.array([5]), np.array([0])).shape == (1, 6)  # 3 scales x flip
    base_only = aggregate_outputs(outputs, plan.base_size, DecodeConfig(multi_scale_tags="base"))
    assert base_only.tags_at(np.array([5]), np.array([5]), np.array([0])).shape == (1, 2)
    result = decode_outputs(outputs, plan)
    assert len(result) == 3
    truth = np.stack([np.reshape(a["keypoints"], (17, 3)) for a in anns])
    stride = 4 / (256 / 300)  # one R/4 output pixel in image pixels
    for person in truth:
        assert min(np.abs(p[:, :2] - person[:, :2]).max() for p in result.keypoints) <= stride


@pytest.mark.parametrize("size", [(300, 500), (500, 300), (333, 333), (123, 457)])
def test_inverse_transform_is_within_one_output_pixel(size):
    rng = np.random.default_rng(3)
    pts = rng.uniform([0, 0], [size[1] - 1, size[0] - 1], (50, 2))
    for fixed in (None, (256, 256)):
        plan = make_test_plan(size, 256, fixed_input_size=fixed)
        back = apply_affine(apply_affine(pts, plan.base_affine), invert_affine(plan.base_affine))
        np.testing.assert_allclose(back, pts, atol=1e-6)
        # the image fills the network input, centred: the reference's integer centre and its
        # pixel-centre convention move the edges by less than one image pixel
        k = plan.base_affine[0, 0]
        corners = apply_affine(np.array([[0, 0], [size[1] - 1, size[0] - 1]], float), plan.base_affine)
        assert corners.min() >= -k
        assert (corners.max(axis=0) <= np.array(plan.base_size[::-1]) - 1 + k).all()
    # end to end: ideal outputs of people at known places come back within one R/4 output pixel
    anns = synthetic_crowd(2, size, seed=5)
    for fixed in (None, (256, 320)):
        outputs, plan = oracle_outputs(anns, size, 256, flip=False, fixed_input_size=fixed)
        result = decode_outputs(outputs, plan)
        k = plan.base_affine[0, 0]
        truth = np.stack([np.reshape(a["keypoints"], (17, 3)) for a in anns])
        assert len(result) == 2
        for person in truth:
            err = min(np.abs(p[:, :2] - person[:, :2]).max() for p in result.keypoints)
            assert err <= 4 / k, (size, fixed, err)


def test_plan_rejects_bad_sizes():
    with pytest.raises(ValueError, match="empty"):
        make_test_plan((0, 10), 256)
    with pytest.raises(ValueError, match="aspect"):
        make_test_plan((10, 4000), 256)
    with pytest.raises(ValueError, match="multiple of 32"):
        make_test_plan((100, 100), 250)
    with pytest.raises(ValueError, match="fixed"):
        make_test_plan((100, 100), 256, (0.5, 1.0), fixed_input_size=(256, 256))
    plan = make_test_plan((100, 100), 416)
    assert plan.base_size == (448, 448)  # the reference rounds to 64
    assert make_test_plan((100, 100), 416, size_multiple=32).base_size == (416, 416)


def test_decode_takes_a_batch_of_one_and_refuses_more():
    q = np.zeros((1, 8, 8, 34), np.float32)
    h = np.zeros((1, 16, 16, 17), np.float32)
    assert len(decode(q, h)) == 0
    with pytest.raises(ValueError, match="one image"):
        decode(np.zeros((2, 8, 8, 34)), np.zeros((2, 16, 16, 17)))
    with pytest.raises(ValueError, match="channels"):
        decode(np.zeros((8, 8, 20)), h[0])
