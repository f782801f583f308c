"""Losses against values worked out by hand and against a plain per-person loop."""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_ehrnet.train.losses import EHRNetLoss, ae_loss, gather_tags, heatmap_loss


def _tag_maps():
    """2×2 tag maps for two joint types; person 0 sees both joints, person 1 one, person 2 none."""
    tags = np.zeros((1, 2, 2, 2), np.float32)
    tags[0, 0, 0, 0] = 1.0  # joint 0 at (y=0, x=0) → flat 0
    tags[0, 0, 1, 0] = 3.0  # joint 0 at (y=0, x=1) → flat 1
    tags[0, 1, 1, 1] = 2.0  # joint 1 at (y=1, x=1) → flat 3
    tags[0, 0, 0, 1] = 50.0  # a decoy at flat 0 of channel 1: only channel 0 may be read there
    joints = np.zeros((1, 3, 2, 2), np.int32)
    joints[0, 0, 0] = (0, 1)
    joints[0, 0, 1] = (3, 1)
    joints[0, 1, 0] = (1, 1)
    joints[0, 1, 1] = (0, 0)  # invisible: ignored although channel 1 at flat 0 holds 50
    return tags, joints


def test_heatmap_loss_by_hand():
    pred = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32).reshape(1, 2, 2, 1)
    pred = np.concatenate([pred, 2 * pred], axis=0)
    target = np.zeros_like(pred)
    target[1] = 1.0
    mask = np.array([[1, 0], [1, 1]], np.float32)[None].repeat(2, axis=0)
    # sample 0: (1 + 9 + 16) / 4 pixels (the masked pixel still counts in the mean)
    # sample 1: ((2-1)² + (6-1)² + (8-1)²) / 4
    expected = [26 / 4, (1 + 25 + 49) / 4]
    np.testing.assert_allclose(heatmap_loss(pred, target, mask).numpy(), expected, rtol=1e-6)


def test_ae_loss_by_hand():
    tags, joints = _tag_maps()
    np.testing.assert_allclose(
        gather_tags(tags, joints).numpy()[0, :2], [[1.0, 2.0], [3.0, 50.0]]
    )  # masked later by visibility
    push, pull = ae_loss(tags, joints)
    # person 0: tags 1, 2 → mean 1.5, spread 0.25; person 1: tag 3 → spread 0. K = 2.
    assert pull.numpy()[0] == pytest.approx(0.25 / 2)
    # two ordered pairs of means 1.5 and 3: 0.5 · 2·exp(−1.5²) / (2·1)
    assert push.numpy()[0] == pytest.approx(0.5 * math.exp(-2.25), rel=1e-6)
    push_max, _ = ae_loss(tags, joints, "max")
    assert push_max.numpy()[0] == pytest.approx(0.0)  # |1.5 − 3| ≥ 1: no margin violation


def test_ae_loss_one_or_no_person():
    tags, joints = _tag_maps()
    one = joints.copy()
    one[0, 1] = 0  # only person 0 left
    push, pull = ae_loss(tags, one)
    assert push.numpy()[0] == 0.0
    assert pull.numpy()[0] == pytest.approx(0.25)
    push, pull = ae_loss(tags, np.zeros_like(joints))
    assert push.numpy()[0] == 0.0 and pull.numpy()[0] == 0.0


def test_ae_loss_single_tag_map():
    """tag_per_joint=False: every joint reads the one tag map."""
    tags = np.zeros((1, 2, 2, 1), np.float32)
    tags[0, :, :, 0] = [[0.0, 1.0], [2.0, 4.0]]
    joints = np.zeros((1, 2, 2, 2), np.int32)
    joints[0, 0] = [(0, 1), (1, 1)]  # tags 0, 1
    joints[0, 1] = [(2, 1), (3, 1)]  # tags 2, 4
    push, pull = ae_loss(tags, joints)
    assert pull.numpy()[0] == pytest.approx((0.25 + 1.0) / 2)
    assert push.numpy()[0] == pytest.approx(0.5 * math.exp(-(2.5**2)), rel=1e-6)


def _ae_loss_loop(tags, joints):
    """The definition, one image and one person at a time."""
    pushes, pulls = [], []
    for b in range(tags.shape[0]):
        flat = tags[b].reshape(-1, tags.shape[-1])
        means, pull = [], 0.0
        for person in joints[b]:
            values = [flat[i, j] for j, (i, v) in enumerate(person) if v > 0]
            if values:
                means.append(np.mean(values))
                pull += np.mean((np.array(values) - means[-1]) ** 2)
        k = len(means)
        pulls.append(pull / k if k else 0.0)
        if k < 2:
            pushes.append(0.0)
            continue
        push = sum(
            math.exp(-((a - c) ** 2)) for i, a in enumerate(means) for m, c in enumerate(means) if i != m
        )
        pushes.append(0.5 * push / (k * (k - 1)))
    return np.array(pushes), np.array(pulls)


def test_ae_loss_matches_per_person_loop_inside_tf_function():
    rng = np.random.default_rng(0)
    batch, size, num_joints, people = 4, 8, 5, 6
    tags = rng.normal(size=(batch, size, size, num_joints)).astype(np.float32)
    joints = np.zeros((batch, people, num_joints, 2), np.int32)
    for b, count in enumerate([0, 1, 3, 6]):
        joints[b, :count, :, 0] = rng.integers(0, size * size, (count, num_joints))
        joints[b, :count, :, 1] = rng.random((count, num_joints)) < 0.7
    push, pull = tf.function(ae_loss)(tf.constant(tags), tf.constant(joints))
    want_push, want_pull = _ae_loss_loop(tags, joints)
    assert want_push[2] > 0 and want_pull[3] > 0
    np.testing.assert_allclose(push.numpy(), want_push, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(pull.numpy(), want_pull, rtol=1e-5, atol=1e-7)


def test_pull_gradient_draws_tags_to_the_person_mean():
    tags, joints = _tag_maps()
    tags = tf.Variable(tags)
    with tf.GradientTape() as tape:
        _, pull = ae_loss(tags, joints)
    grad = tape.gradient(pull, tags).numpy()
    assert grad[0, 0, 0, 0] < 0 < grad[0, 1, 1, 1]  # tag 1 goes up, tag 2 comes down, towards 1.5
    assert grad[0, 0, 0, 1] == 0.0  # the invisible decoy gets no gradient


def test_multi_resolution_loss_weights_and_channel_split():
    tags, joints = _tag_maps()
    heat_q = np.full((1, 2, 2, 2), 0.5, np.float32)
    half = np.ones((1, 4, 4, 2), np.float32)
    targets = {
        "heatmaps_quarter": np.zeros((1, 2, 2, 2), np.float32),
        "heatmaps_half": np.zeros((1, 4, 4, 2), np.float32),
        "mask_quarter": np.ones((1, 2, 2), np.float32),
        "mask_half": np.ones((1, 4, 4), np.float32),
        "joints": joints,
    }
    loss = EHRNetLoss(2, heatmap_factors=(1.0, 2.0), push_factor=1e-3, pull_factor=1e-2)
    terms = loss([np.concatenate([heat_q, tags], axis=-1), half], targets)
    assert set(terms) == {"heatmaps_quarter", "heatmaps_half", "push", "pull"}
    assert terms["heatmaps_quarter"].numpy()[0] == pytest.approx(0.25)
    assert terms["heatmaps_half"].numpy()[0] == pytest.approx(2.0)
    assert terms["push"].numpy()[0] == pytest.approx(1e-3 * 0.5 * math.exp(-2.25), rel=1e-6)
    assert terms["pull"].numpy()[0] == pytest.approx(1e-2 * 0.125)


def test_bad_loss_settings_are_refused():
    with pytest.raises(ValueError, match="hinge"):
        EHRNetLoss(17, ae_type="hinge")
    with pytest.raises(ValueError, match="heatmap_factors"):
        EHRNetLoss(17, heatmap_factors=(1.0,))
