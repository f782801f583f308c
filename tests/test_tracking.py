"""Tracker: ids through a crossing of real people, gaps bridged, new people, and motmetrics scoring."""

import itertools

import numpy as np
import pytest

from evaluation.track import load_cutouts, make_sequence, noisy_detections, score_tracks
from keras_ehrnet.data import sample_dataset
from keras_ehrnet.inference.decoding import Person
from keras_ehrnet.inference.predictor import Predictor
from keras_ehrnet.inference.tracking import Tracker, oks_matrix, sigmas_for


@pytest.fixture(scope="module")
def crossing():
    """90 frames of three real people (from the shipped coco-mini sample): two crossing, one coming in."""
    return make_sequence(load_cutouts(*sample_dataset()), 90, render=False)


def pose(x, y, height=200.0, score=1.0):
    """A standing person: 17 joints spread over a `height`-tall box whose top-left is (x, y)."""
    rng = np.random.default_rng(7)
    kp = np.zeros((17, 3))
    kp[:, 0] = x + rng.uniform(0, height / 3, 17)
    kp[:, 1] = y + np.linspace(0, height, 17)
    kp[:, 2] = score
    return kp


def test_ids_stable_through_the_crossing_with_noisy_poses(crossing):
    # the two walkers really do cross: they swap sides between the first and last frame
    first = {i: kp[kp[:, 2] > 0, 0].mean() for i, kp in crossing.truth[0]}
    last = {i: kp[kp[:, 2] > 0, 0].mean() for i, kp in crossing.truth[-1]}
    assert first[1] < first[2] and last[1] > last[2]
    for seed in range(3):
        dets = noisy_detections(crossing.truth, noise=0.02, drop_joint=0.1, miss=0.05, seed=seed)
        tracker = Tracker()
        tracked = [tracker.update(people) for people in dets]
        metrics = score_tracks(crossing.truth, tracked)
        assert metrics["num_switches"] == 0, seed
        assert metrics["idf1"] >= 0.95, (seed, metrics)
        assert metrics["num_false_positives"] == 0


def test_the_crossing_score_can_fail(crossing):
    # ids that change every frame score far below the bar, so the test above can fail
    fresh = itertools.count(1)
    dets = noisy_detections(crossing.truth, seed=0)
    tracked = [[{"keypoints": kp, "track_id": next(fresh)} for kp in frame] for frame in dets]
    metrics = score_tracks(crossing.truth, tracked)
    assert metrics["idf1"] < 0.2 and metrics["num_switches"] > 50


def test_a_gap_of_missed_frames_is_bridged_and_a_long_one_is_not():
    tracker = Tracker(max_missed=4)
    a = [tracker.update([pose(100 + 5 * f, 50)])[0].track_id for f in range(5)]
    assert a == [1] * 5
    # unseen for frames 5..8 (4 missed), seen again at frame 9 where its velocity puts it
    assert tracker.update([pose(100 + 5 * 9, 50)], frame=9)[0].track_id == 1
    # unseen for 5 frames: the track is retired, the person comes back with a new id
    assert tracker.update([pose(100 + 5 * 15, 50)], frame=15)[0].track_id == 2


def test_a_new_person_gets_a_new_id_and_ids_are_never_reused():
    tracker = Tracker(max_missed=1)
    assert [p.track_id for p in tracker.update([pose(50, 50), pose(400, 50)])] == [1, 2]
    # order of detections says nothing: ids follow the poses
    assert [p.track_id for p in tracker.update([pose(402, 52), pose(52, 51), pose(250, 260)])] == [2, 1, 3]
    for _ in range(3):
        tracker.update([pose(52, 51)])
    assert [p.track_id for p in tracker.update([pose(52, 51), pose(402, 52)])] == [1, 4]


def test_tracker_takes_any_runtimes_people_and_keeps_their_fields():
    kp = pose(10, 10)
    person = Person(kp, 0.8, (10.0, 10.0, 60.0, 210.0))
    tracker = Tracker()
    out = tracker.update([person, {"keypoints": pose(300, 10).tolist(), "score": 0.5}, pose(600, 10)])
    assert [p.track_id for p in out] == [1, 2, 3]
    assert out[0].score == 0.8 and out[0].box == person.box and out[1].score == 0.5
    assert out[0].to_dict()["track_id"] == 1 and len(out[0].to_dict()["keypoints"]) == 17
    with pytest.raises(ValueError, match="frames must increase"):
        tracker.update([], frame=0)
    with pytest.raises(ValueError, match="joint counts"):
        tracker.update([pose(0, 0), np.zeros((14, 3))])
    with pytest.raises(ValueError, match="OKS sigmas"):
        Tracker(sigmas=[0.1] * 5).update([pose(0, 0)])


def test_oks_matrix_is_one_for_the_same_pose_and_falls_with_distance():
    a = pose(100, 100)
    far = pose(160, 100)
    oks = oks_matrix(np.stack([a, far]), a[None], sigmas_for(17))
    assert oks.shape == (2, 1) and oks[0, 0] == pytest.approx(1.0) and oks[1, 0] < 0.2
    hidden = a.copy()
    hidden[:, 2] = 0
    assert oks_matrix(hidden[None], a[None], sigmas_for(17))[0, 0] == 0.0


def test_predictor_track_gives_ids_frame_by_frame():
    frames = [pose(100 + 4 * f, 80) for f in range(4)]

    class Fake:
        def predict(self, frame):  # the "image" is the pose itself
            return [Person(frame, 1.0, (0, 0, 1, 1)), Person(pose(500, 80), 0.9, (0, 0, 1, 1))]

    out = list(Predictor.track(Fake(), iter(frames)))
    assert [[p.track_id for p in people] for people in out] == [[1, 2]] * 4


def test_eleven_people_close_together_keep_their_ids_under_a_panning_camera():
    from evaluation.track import make_pan_sequence

    seq = make_pan_sequence(*sample_dataset(), 30)
    assert len(seq.truth[0]) >= 10 and len(seq.frames) == 30
    assert {i for i, _ in seq.truth[-1]} <= {i for i, _ in seq.truth[0]}  # the zoom only loses people
    tracker = Tracker()
    tracked = [tracker.update(people) for people in noisy_detections(seq.truth, seed=1)]
    assert score_tracks(seq.truth, tracked)["num_switches"] == 0
