"""People with identities over frames: OKS association, track ids, missed-frame survival.

    tracker = Tracker()
    for frame in frames:
        people = tracker.update(predictor.predict(frame))   # each with a `track_id`

The tracker is fed people from any runtime (`Person` objects, dicts with "keypoints", or
[J, 3] arrays), so a TFLite model on a Pi and ONNX Runtime on a server track the same way.
Association is by object keypoint similarity (OKS, COCO's per-joint constants), computed
against each track's pose moved on by its recent velocity, so two people crossing keep their
ids where box overlap alone would swap them. The assignment itself is scipy's Hungarian
solver (`scipy.optimize.linear_sum_assignment`); the tracker adds only the bookkeeping
(ids, velocity, missed-frame counts).

Why not a tracker package: norfair (keypoint-native) pins numpy < 2 and rich < 15, which
this project's numpy 2.4 and Keras' rich 15 rule out; `trackers`/`supervision` (ByteTrack)
associate boxes only and pull in opencv-python (clashing with opencv-python-headless) and
PyAV. scipy is already a dependency.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from keras_ehrnet.inference.decoding import Person
from keras_ehrnet.keypoints import BBOX_AREA_FACTOR, COCO

DEFAULT_SIGMA = 0.0669  # per-joint OKS constant for keypoint sets other than COCO's (as evaluate.py)


@dataclasses.dataclass
class TrackedPerson(Person):
    """A `Person` with the id of the track it belongs to (stable while the person stays in view)."""

    track_id: int = -1

    def to_dict(self, names: Sequence[str] | None = None) -> dict:
        """JSON-ready, as `Person.to_dict`, with "track_id" first."""
        return {"track_id": int(self.track_id), **super().to_dict(names)}


@dataclasses.dataclass
class Track:
    """One identity: its last pose, velocity (pixels per frame) and when it was last seen."""

    track_id: int
    keypoints: np.ndarray  # [J, 3] as last seen
    last_frame: int
    velocity: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(2))
    hits: int = 1

    def predicted(self, frame: int) -> np.ndarray:
        """The pose moved on by the velocity to `frame`."""
        kp = self.keypoints.copy()
        kp[:, :2] += self.velocity * (frame - self.last_frame)
        return kp


def as_keypoints(person: Any) -> np.ndarray:
    """[J, 3] (x, y, score) of a `Person`, a dict with "keypoints" or an array."""
    kp = person.get("keypoints") if isinstance(person, dict) else getattr(person, "keypoints", person)
    kp = np.asarray(kp, dtype=np.float64)
    if kp.ndim == 1 and kp.size % 3 == 0:
        kp = kp.reshape(-1, 3)  # COCO's flat [x, y, v, …]
    if kp.ndim != 2 or kp.shape[1] < 2:
        raise ValueError(f"a person's keypoints must be [J, 3] (x, y, score); got shape {kp.shape}")
    if kp.shape[1] == 2:
        kp = np.column_stack([kp, np.ones(len(kp))])
    return kp[:, :3]


def _as_person(person: Any, kp: np.ndarray, visible: np.ndarray) -> Person:
    if isinstance(person, Person):
        return person
    score = float(person.get("score", 1.0)) if isinstance(person, dict) else 1.0
    pts = kp[visible, :2] if visible.any() else np.zeros((1, 2))
    box = (*pts.min(0), *pts.max(0))
    return Person(kp, score, tuple(float(v) for v in box))


def oks_matrix(
    a: np.ndarray,
    b: np.ndarray,
    sigmas: Sequence[float],
    *,
    min_keypoint_score: float = 0.0,
) -> np.ndarray:
    """OKS [N, M] between poses `a` [N, J, 3] and `b` [M, J, 3] (x, y, score).

    COCO's formula, mean over the joints scoring above `min_keypoint_score` in both poses of
    exp(-d² / (2 · s² · (2σ)²)); the scale s² is the area of the box around `b`'s joints
    × `BBOX_AREA_FACTOR` (as for ground truth without an area). No common joint: 0.
    """
    a = np.asarray(a, np.float64).reshape(-1, len(sigmas), 3)
    b = np.asarray(b, np.float64).reshape(-1, len(sigmas), 3)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    var = (2.0 * np.asarray(sigmas, np.float64)) ** 2
    vis_b = b[..., 2] > min_keypoint_score
    areas = np.empty(len(b))
    for j, (pose, vis) in enumerate(zip(b, vis_b)):
        pts = pose[vis, :2] if vis.any() else np.zeros((1, 2))
        span = pts.max(0) - pts.min(0)
        areas[j] = max(float(span[0] * span[1]) * BBOX_AREA_FACTOR, 1.0)
    d2 = ((a[:, None, :, :2] - b[None, :, :, :2]) ** 2).sum(-1)  # [N, M, J]
    e = np.exp(-d2 / (2.0 * var * areas[None, :, None]))
    common = (a[:, None, :, 2] > min_keypoint_score) & vis_b[None]
    counts = common.sum(-1)
    return np.where(counts > 0, (e * common).sum(-1) / np.maximum(counts, 1), 0.0)


def sigmas_for(num_joints: int) -> tuple[float, ...]:
    """COCO's OKS constants for 17 joints, `DEFAULT_SIGMA` each otherwise."""
    return COCO.sigmas if num_joints == COCO.num_joints else (DEFAULT_SIGMA,) * num_joints


class Tracker:
    """Give each person a `track_id` that stays while they stay in view.

    `max_missed`: frames a track survives unseen (then its id is retired, never reused).
    `min_similarity`: the least OKS between a person and a track's predicted pose to match.
    `min_keypoint_score`: joints scoring at most this take no part in the similarity.
    `velocity_smoothing`: weight of the newest motion in the track's velocity (0..1).
    `sigmas`: per-joint OKS constants (default: COCO's for 17 joints, 0.0669 each otherwise).
    """

    def __init__(
        self,
        *,
        max_missed: int = 10,
        min_similarity: float = 0.2,
        min_keypoint_score: float = 0.1,
        velocity_smoothing: float = 0.5,
        sigmas: Sequence[float] | None = None,
    ):
        if max_missed < 0:
            raise ValueError(f"max_missed must be ≥ 0, got {max_missed}")
        if not 0.0 <= min_similarity <= 1.0:
            raise ValueError(f"min_similarity must lie in 0..1, got {min_similarity}")
        if not 0.0 < velocity_smoothing <= 1.0:
            raise ValueError(f"velocity_smoothing must lie in (0, 1], got {velocity_smoothing}")
        self.max_missed = int(max_missed)
        self.min_similarity = float(min_similarity)
        self.min_keypoint_score = float(min_keypoint_score)
        self.velocity_smoothing = float(velocity_smoothing)
        self.sigmas = tuple(float(s) for s in sigmas) if sigmas is not None else None
        self.tracks: list[Track] = []
        self.frame = -1
        self.next_id = 1

    def reset(self) -> None:
        """Forget every track (a new video); ids start again at 1."""
        self.tracks, self.frame, self.next_id = [], -1, 1

    def update(self, people: Iterable[Any], frame: int | None = None) -> list[TrackedPerson]:
        """Match this frame's people to the tracks; returns them, in order, with their `track_id`.

        `frame`: the frame's index (default: the previous one + 1); give it when frames are
        skipped (`--every N`, dropped frames) so velocities and missed counts stay in frames.
        """
        frame = self.frame + 1 if frame is None else int(frame)
        if frame <= self.frame:
            raise ValueError(f"frame {frame} comes after frame {self.frame}; frames must increase")
        self.frame = frame
        people = list(people)
        poses = [as_keypoints(p) for p in people]
        if poses and len({len(kp) for kp in poses}) != 1:
            raise ValueError(
                f"people with different joint counts in one frame: {sorted({len(k) for k in poses})}"
            )
        sigmas = self.sigmas
        if poses and sigmas is None:
            sigmas = sigmas_for(len(poses[0]))
        if poses and len(sigmas) != len(poses[0]):
            raise ValueError(f"{len(sigmas)} OKS sigmas for people with {len(poses[0])} joints")
        self.tracks = [t for t in self.tracks if frame - t.last_frame <= self.max_missed + 1]
        ids = [0] * len(poses)
        unmatched = list(range(len(poses)))
        if poses and self.tracks:
            predicted = np.stack([t.predicted(frame) for t in self.tracks])
            sim = oks_matrix(np.stack(poses), predicted, sigmas, min_keypoint_score=self.min_keypoint_score)
            rows, cols = linear_sum_assignment(-sim)
            for r, c in zip(rows, cols):
                if sim[r, c] >= self.min_similarity:
                    self._extend(self.tracks[c], poses[r], frame)
                    ids[r] = self.tracks[c].track_id
                    unmatched.remove(r)
        for r in unmatched:
            self.tracks.append(Track(self.next_id, poses[r].copy(), frame))
            ids[r] = self.next_id
            self.next_id += 1
        out = []
        for person, kp, track_id in zip(people, poses, ids):
            base = _as_person(person, kp, kp[:, 2] > self.min_keypoint_score)
            fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(Person)}
            out.append(TrackedPerson(**fields, track_id=track_id))
        return out

    def _extend(self, track: Track, kp: np.ndarray, frame: int) -> None:
        """A track seen again: new pose, velocity from the joints seen both times."""
        common = (kp[:, 2] > self.min_keypoint_score) & (track.keypoints[:, 2] > self.min_keypoint_score)
        if common.any():
            step = (kp[common, :2] - track.keypoints[common, :2]).mean(0) / (frame - track.last_frame)
            a = self.velocity_smoothing if track.hits > 1 else 1.0
            track.velocity = a * step + (1.0 - a) * track.velocity
        # joints not seen now keep their last place (moved on with the track) and score
        missing = kp[:, 2] <= self.min_keypoint_score
        track.keypoints = np.where(missing[:, None], track.predicted(frame), kp)
        track.last_frame = frame
        track.hits += 1
