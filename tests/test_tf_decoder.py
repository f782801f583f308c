"""In-graph decoder: the same people as the Python decoder (AP on the oracle), greedy matching, plateaus."""

import dataclasses
import itertools

import numpy as np
import pytest
import tensorflow as tf

from keras_ehrnet.data import sample_dataset
from keras_ehrnet.inference.decoding import (
    AggregatedMaps,
    DecodeConfig,
    DecodeResult,
    decode_maps,
    decode_outputs,
)
from keras_ehrnet.inference.oracle import oracle_maps, oracle_outputs, synthetic_crowd
from keras_ehrnet.inference.tf_decoder import TFDecoder, greedy_match, group, top_peaks
from keras_ehrnet.metrics.coco import coco_results, coco_summary, load_coco


def as_result(out: dict, plan=None) -> DecodeResult:
    """TF decoder output of one image → DecodeResult (keypoints mapped to the image when a plan is given)."""
    n = int(out["num_people"])
    kp = out["keypoints"][:n].astype(np.float64)
    found = kp[..., 2] > 0
    if plan is not None:
        kp[..., :2] = plan.to_image(kp[..., :2])
    kp[~found] = 0
    return DecodeResult(kp.astype(np.float32), out["scores"][:n], np.zeros((n, 1), np.float32))


def sorted_by_score(result: DecodeResult) -> np.ndarray:
    return result.keypoints[np.argsort(-result.scores, kind="stable")]


def test_in_graph_decoder_matches_the_python_decoder_on_the_oracle():
    """Ideal outputs of the sample's annotated people at input 512: same AP within 1 point (greedy vs
    Hungarian), and the same people and keypoints in most images (refinement modes: below)."""
    ann_file, _ = sample_dataset()
    coco = load_coco(ann_file)
    config = DecodeConfig()
    tf_decoder = TFDecoder(17, config)
    ids = [i for i in coco.getImgIds() if coco.getAnnIds(imgIds=i, iscrowd=False)]
    python_results, graph_results, identical = [], [], 0
    for image_id in ids:
        info = coco.imgs[image_id]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None))
        outputs, plan = oracle_outputs(anns, (info["height"], info["width"]), 512, flip=False)
        expected = decode_outputs(outputs, plan, config)
        got = as_result(tf_decoder(outputs[0].quarter, outputs[0].half), plan)
        python_results += coco_results(image_id, expected)
        graph_results += coco_results(image_id, got)
        if len(got) == len(expected):
            # joints scoring below 0.01 would be tails of Gaussians, where equal values tie
            want = sorted_by_score(expected)
            real = (want[..., 2] > 0.01) | (got.keypoints[..., 2] > 0.01)
            identical += not len(got) or np.abs(want - got.keypoints)[real].max(initial=0) < 1e-3
    ap_python = coco_summary(coco, python_results, ids, verbose=False)["AP"]
    ap_graph = coco_summary(coco, graph_results, ids, verbose=False)["AP"]
    assert ap_python > 0.9, ap_python  # the oracle is decodable at all
    assert abs(ap_graph - ap_python) <= 0.01, (ap_graph, ap_python)
    assert identical >= 0.8 * len(ids), f"{identical} of {len(ids)} images decoded identically"


def numpy_greedy(cost, allowed):
    """Reference greedy: take the cheapest allowed pair, strike its row and column, repeat."""
    pairs = sorted((cost[r, c], r, c) for r, c in itertools.product(*map(range, cost.shape)) if allowed[r, c])
    rows, cols, out = set(), set(), np.zeros(cost.shape)
    for _, r, c in pairs:
        if r not in rows and c not in cols:
            rows.add(r)
            cols.add(c)
            out[r, c] = 1
    return out


@pytest.mark.parametrize("seed", range(5))
def test_mutual_best_rounds_equal_sequential_greedy(seed):
    rng = np.random.default_rng(seed)
    k, p = rng.integers(1, 12, size=2)
    cost = rng.normal(size=(k, p)).astype(np.float32)
    allowed = rng.random((k, p)) < 0.7
    got = greedy_match(tf.constant(cost), tf.constant(allowed)).numpy()
    np.testing.assert_array_equal(got, numpy_greedy(cost, allowed))
    assert got.sum(axis=0).max(initial=0) <= 1 and got.sum(axis=1).max(initial=0) <= 1


def test_a_flat_top_is_one_peak_but_two_maxima_apart_are_two():
    heat = np.zeros((32, 32, 1), np.float32)
    heat[10, 10:12, 0] = 0.8  # plateau: two equal neighbouring maxima
    heat[20, 5, 0] = 0.8
    heat[20, 25, 0] = 0.8  # equal value, far away: its own peak
    config = DecodeConfig(max_people=4)
    vals, ys, xs = (t.numpy()[0] for t in top_peaks(tf.constant(heat), config))
    found = vals > config.detection_threshold
    assert sorted(zip(ys[found], xs[found])) == [(10, 10), (20, 5), (20, 25)]
    unmerged = dataclasses.replace(config, merge_plateaus=False)
    vals, _, _ = (t.numpy()[0] for t in top_peaks(tf.constant(heat), unmerged))
    assert (vals > 0.1).sum() == 4


def blobs(size, peaks, num_joints, sigma=2.0):
    """Heatmaps [H, W, J] with Gaussians at (joint, x, y, value, tag) and tag maps [H, W, J] holding
    each peak's tag where its Gaussian is the strongest."""
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


# A's joint 3 is below the detection threshold (refinement finds it); B has no joint 3 at all
# (the reference refinement takes A's, the exclusive one leaves it missing).
REFINE_SCENES = {
    "weak joint": [
        (0, 10, 10, 1.0, 1.0),
        (1, 12, 20, 1.0, 1.0),
        (2, 14, 30, 1.0, 1.0),
        (3, 16, 41, 0.06, 1.0),
    ]
    + [(0, 40, 10, 1.0, 3.0), (1, 42, 20, 1.0, 3.0), (2, 44, 30, 1.0, 3.0), (3, 46, 40, 1.0, 3.0)],
    "no joint": [(0, 10, 10, 1.0, 1.0), (1, 10, 20, 1.0, 1.0), (3, 10, 30, 1.0, 1.0)]
    + [(0, 40, 10, 1.0, 2.0), (1, 40, 20, 1.0, 2.0)],
    # nobody holds joint 3 and both want its one response: exclusive gives it to the nearer tag only
    "one response": [
        (0, 10, 10, 1.0, 1.0),
        (1, 10, 20, 1.0, 1.0),
        (0, 40, 10, 1.0, 3.0),
        (1, 40, 20, 1.0, 3.0),
    ]
    + [(3, 25, 30, 0.05, 1.2)],
}


@pytest.mark.parametrize("scene", sorted(REFINE_SCENES))
@pytest.mark.parametrize("mode", ["exclusive", "reference"])
def test_refinement_follows_the_python_decoder(scene, mode):
    heat, tags = blobs((56, 56), REFINE_SCENES[scene], 4)
    config = DecodeConfig(refine_mode=mode)
    expected = decode_maps(AggregatedMaps.from_arrays(heat, tags), config)
    got = as_result({k: v.numpy()[0] for k, v in group(heat[None], tags[None], config).items()})
    assert len(got) == len(expected) == 2
    np.testing.assert_allclose(got.keypoints, sorted_by_score(expected), atol=1e-5)
    np.testing.assert_allclose(got.scores, np.sort(expected.scores)[::-1], atol=1e-6)
    if scene == "no joint":  # B (tag 2, scored 2/4) is second; its joint 3 depends on the mode
        assert (got.keypoints[1, 3, 2] > 0.5) == (mode == "reference")
    if scene == "one response":
        assert (got.keypoints[:, 3, 2] > 0).sum() == (1 if mode == "exclusive" else 2)


def test_batch_equals_images_one_by_one():
    size = (96, 128)
    maps = []
    for seed, n in ((0, 3), (1, 5)):
        anns = synthetic_crowd(n, size, seed=seed)
        kp = np.stack([np.asarray(a["keypoints"], np.float64).reshape(17, 3) for a in anns])
        maps.append(oracle_maps(kp, size))
    decoder = TFDecoder(17)
    batch = decoder(np.stack([m[0] for m in maps]), np.stack([m[1] for m in maps]))
    for b, (q, h) in enumerate(maps):
        one = decoder(q, h)
        for key in ("keypoints", "scores", "num_people"):
            np.testing.assert_array_equal(batch[key][b], one[key])
    assert list(batch["num_people"]) == [3, 5]


def test_more_people_than_slots_keeps_the_best():
    size = (256, 256)
    anns = synthetic_crowd(12, size, seed=2)
    kp = np.stack([np.asarray(a["keypoints"], np.float64).reshape(17, 3) for a in anns])
    quarter, half = oracle_maps(kp, size)
    config = DecodeConfig(max_people=8)
    out = TFDecoder(17, config)(quarter, half)
    assert out["keypoints"].shape == (8, 17, 3)
    assert out["num_people"] == 8
    assert np.all(np.diff(out["scores"]) <= 0)  # best first


def test_unsupported_settings_are_refused():
    heat = tf.zeros([1, 32, 32, 17])
    with pytest.raises(ValueError, match="ignore_too_much"):
        group(heat, heat, DecodeConfig(ignore_too_much=True))
    with pytest.raises(ValueError, match="gated"):
        group(heat, heat, DecodeConfig(gate_assignment=False))
    with pytest.raises(ValueError, match="tags need 1 or 17"):
        group(heat, tf.zeros([1, 32, 32, 3]))
