"""Tracking scored with motmetrics (MOTA, IDF1, id switches) on a synthetic sequence of real people.

    python -m evaluation.track --ann coco-mini/annotations/person_keypoints_train2017.json \\
        --images coco-mini/train2017 --json track_gt.json                    # noisy ground-truth poses
    python -m evaluation.track --model runs/quickstart/model.keras --input-size 256x256 --scene pan --json track_model.json

The sequence (default: the sample images shipped with the package, or `--ann`/`--images`): real
people cut from COCO images with their annotated keypoints, on a plain background, moving
smoothly for `--frames` frames: two walk towards each other and cross mid-sequence, a third
comes in later and grows as it approaches (a new person must get a new id). Each has a
ground-truth id. Without `--model` the tracker is fed the ground-truth poses with noise
(`--noise`: keypoint jitter as a fraction of the person's height; `--drop-joint`: joints left
out; `--miss`: people missed for a frame); with `--model` the frames are drawn and the model's
people are tracked. `--scene pan` is instead one whole image (the one with the most people)
under a slow camera zoom and pan, each annotated person with its id: a model that has learnt the
sample's whole images (the quickstart's) is scored on it. A person matches a ground-truth person
when their OKS is at least 0.5.
Exit status 2 for bad options, data or model.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MATCH_OKS = 0.5
METRICS = (
    "num_frames",
    "mota",
    "motp",
    "idf1",
    "num_switches",
    "num_false_positives",
    "num_misses",
    "mostly_tracked",
    "num_unique_objects",
    "precision",
    "recall",
)


@dataclasses.dataclass
class Cutout:
    """A person cut from a real image: its pixels and keypoints (x, y, v) in the cut's frame."""

    patch: np.ndarray
    keypoints: np.ndarray
    source: str


@dataclasses.dataclass
class SyntheticSequence:
    """Ground truth per frame (lists of (id, keypoints [J, 3])) and the drawn frames (or None)."""

    truth: list[list[tuple[int, np.ndarray]]]
    frames: list[np.ndarray] | None
    size: tuple[int, int]


def load_cutouts(
    ann_file: str | Path, image_dir: str | Path, count: int = 3, *, min_keypoints: int = 12
) -> list[Cutout]:
    """The `count` largest non-crowd people with at least `min_keypoints` labelled joints, one per image."""
    from keras_ehrnet.data.validate import load_annotation_json
    from keras_ehrnet.inference.images import read_image

    data = load_annotation_json(ann_file)
    files = {img["id"]: img["file_name"] for img in data.get("images", [])}
    anns = [
        a
        for a in data.get("annotations", [])
        if not a.get("iscrowd") and a.get("num_keypoints", 0) >= min_keypoints and a.get("image_id") in files
    ]
    anns.sort(key=lambda a: (-float(a.get("area", 0)), a["id"]))
    out: list[Cutout] = []
    used: set = set()
    for ann in anns:
        if ann["image_id"] in used:
            continue
        path = Path(image_dir) / files[ann["image_id"]]
        image = read_image(path, ignore_orientation=True)
        x, y, w, h = ann["bbox"]
        m = 0.1 * max(w, h)
        x0, y0 = int(max(0, x - m)), int(max(0, y - m))
        x1, y1 = int(min(image.shape[1], x + w + m)), int(min(image.shape[0], y + h + m))
        kp = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
        kp[:, :2] -= (x0, y0)
        kp[kp[:, 2] == 0, :2] = 0
        out.append(Cutout(image[y0:y1, x0:x1].copy(), kp, f"{path.name} annotation {ann['id']}"))
        used.add(ann["image_id"])
        if len(out) == count:
            return out
    raise ValueError(
        f"{ann_file}: only {len(out)} people with ≥ {min_keypoints} keypoints on distinct images; need {count}"
    )


def _paths(frames: int) -> list[tuple[int, int, Any, Any]]:
    """(first, last, centre(t) as fractions of the frame, height(t) as a fraction) per actor; t in 0..1."""
    ease = lambda t: 0.5 - 0.5 * np.cos(np.pi * t)  # noqa: E731 - smooth start and stop
    third = frames // 3
    return [
        (0, frames - 1, lambda t: (0.15 + 0.7 * ease(t), 0.55), lambda t: 0.62 + 0.08 * t),  # left → right
        (0, frames - 1, lambda t: (0.85 - 0.7 * ease(t), 0.52), lambda t: 0.66 - 0.08 * t),  # right → left
        (third, frames - 1, lambda t: (0.2 + 0.25 * t, 0.75 - 0.2 * t), lambda t: 0.35 + 0.3 * t),  # comes in
    ]


def make_sequence(
    cutouts: Sequence[Cutout],
    frames: int = 60,
    size: tuple[int, int] = (480, 640),
    *,
    render: bool = True,
    height_scale: float = 1.0,
) -> SyntheticSequence:
    """The synthetic sequence: three cut-out people moving smoothly, the first two crossing.

    `height_scale` multiplies each person's height on screen (1: about 2/3 of the frame for the
    crossing pair). Frames are drawn only with `render`; ground truth ids are 1, 2, 3.
    """
    import cv2

    if len(cutouts) < 3:
        raise ValueError(f"the sequence needs 3 people, got {len(cutouts)}")
    if frames < 6:
        raise ValueError(f"the sequence needs at least 6 frames, got {frames}")
    h, w = size
    background = np.full((h, w, 3), 110, np.uint8)
    background[:] = np.linspace(90, 140, h, dtype=np.uint8)[:, None, None]
    truth: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(frames)]
    drawn = [background.copy() for _ in range(frames)] if render else None
    # the person coming in is drawn first (behind), the right-to-left walker last (in front)
    order = [2, 0, 1]
    for k in order:
        first, last, centre, height = _paths(frames)[k]
        cut = cutouts[k]
        for f in range(first, last + 1):
            t = (f - first) / max(1, last - first)
            cx, cy = centre(t)
            scale = height(t) * height_scale * h / cut.patch.shape[0]
            ph, pw = cut.patch.shape[:2]
            x0, y0 = cx * w - scale * pw / 2, cy * h - scale * ph / 2
            kp = cut.keypoints.copy()
            kp[:, 0] = kp[:, 0] * scale + x0
            kp[:, 1] = kp[:, 1] * scale + y0
            inside = (kp[:, 0] >= 0) & (kp[:, 0] < w) & (kp[:, 1] >= 0) & (kp[:, 1] < h)
            kp[:, 2] = np.where((kp[:, 2] > 0) & inside, kp[:, 2], 0)
            kp[kp[:, 2] == 0, :2] = 0
            if (kp[:, 2] > 0).sum() >= 3:
                truth[f].append((k + 1, kp))
            if drawn is not None:
                affine = np.float32([[scale, 0, x0], [0, scale, y0]])
                warped = cv2.warpAffine(cut.patch, affine, (w, h), flags=cv2.INTER_LINEAR)
                mask = cv2.warpAffine(np.ones(cut.patch.shape[:2], np.uint8), affine, (w, h)) > 0
                drawn[f][mask] = warped[mask]
    for people in truth:
        people.sort(key=lambda item: item[0])
    return SyntheticSequence(truth, drawn, size)


def make_pan_sequence(
    ann_file: str | Path, image_dir: str | Path, frames: int = 60, *, min_keypoints: int = 5
) -> SyntheticSequence:
    """One whole real image seen by a camera that slowly zooms in (×1 → ×1.15) and pans: the image
    of `ann_file` with the most people having ≥ `min_keypoints` joints; ids in annotation order.

    A model that has learnt these very images (the quickstart's) sees them as it was trained."""
    import cv2

    from keras_ehrnet.data.validate import load_annotation_json
    from keras_ehrnet.inference.images import read_image
    from keras_ehrnet.inference.oracle import person_keypoints

    data = load_annotation_json(ann_file)
    by_image: dict[int, list[dict]] = {}
    for a in data.get("annotations", []):
        if not a.get("iscrowd") and a.get("num_keypoints", 0) >= min_keypoints:
            by_image.setdefault(a["image_id"], []).append(a)
    if not by_image:
        raise ValueError(f"{ann_file}: no person with ≥ {min_keypoints} keypoints")
    info = max(data["images"], key=lambda i: (len(by_image.get(i["id"], [])), -i["id"]))
    image = read_image(Path(image_dir) / info["file_name"], ignore_orientation=True)
    people = person_keypoints(by_image[info["id"]])
    h, w = image.shape[:2]
    truth: list[list[tuple[int, np.ndarray]]] = []
    drawn = []
    for f in range(frames):
        t = 0.5 - 0.5 * np.cos(np.pi * f / (frames - 1))
        s = 1.0 + 0.15 * t
        tx, ty = (1 - s) * w * (0.35 + 0.3 * t), (1 - s) * h * 0.5
        affine = np.float64([[s, 0, tx], [0, s, ty]])
        drawn.append(cv2.warpAffine(image, affine, (w, h), flags=cv2.INTER_LINEAR))
        frame = []
        for k, kp in enumerate(people):
            moved = kp.copy()
            moved[:, :2] = kp[:, :2] * s + (tx, ty)
            inside = (moved[:, 0] >= 0) & (moved[:, 0] < w) & (moved[:, 1] >= 0) & (moved[:, 1] < h)
            moved[:, 2] = np.where((kp[:, 2] > 0) & inside, kp[:, 2], 0)
            moved[moved[:, 2] == 0, :2] = 0
            if (moved[:, 2] > 0).sum() >= 3:
                frame.append((k + 1, moved))
        truth.append(frame)
    return SyntheticSequence(truth, drawn, (h, w))


def noisy_detections(
    truth: list[list[tuple[int, np.ndarray]]],
    *,
    noise: float = 0.02,
    drop_joint: float = 0.1,
    miss: float = 0.05,
    seed: int = 0,
) -> list[list[np.ndarray]]:
    """Ground-truth poses as a detector would give them: jittered by `noise` × the person's height,
    each joint left out with probability `drop_joint`, each person missed with probability `miss`,
    shuffled within the frame (a detector's order says nothing of identity)."""
    rng = np.random.default_rng(seed)
    out = []
    for people in truth:
        frame = []
        for _, kp in people:
            if rng.random() < miss:
                continue
            vis = kp[:, 2] > 0
            height = np.ptp(kp[vis, 1]) if vis.sum() > 1 else 1.0
            det = kp.copy()
            det[:, :2] += rng.normal(0.0, noise * height, (len(kp), 2))
            keep = vis & (rng.random(len(kp)) >= drop_joint)
            det[:, 2] = keep.astype(float)
            det[~keep, :2] = 0
            frame.append(det)
        rng.shuffle(frame)
        out.append(frame)
    return out


def score_tracks(
    truth: list[list[tuple[int, np.ndarray]]],
    tracked: list[list[Any]],
    sigmas: Sequence[float] | None = None,
) -> dict[str, float]:
    """motmetrics' MOTA, IDF1, id switches … of `tracked` (people with `track_id`, per frame)
    against `truth`; a person matches a ground-truth person when their OKS ≥ 0.5."""
    import motmetrics as mm

    from keras_ehrnet.inference.tracking import as_keypoints, oks_matrix, sigmas_for

    if len(truth) != len(tracked):
        raise ValueError(f"{len(truth)} frames of ground truth but {len(tracked)} tracked frames")
    acc = mm.MOTAccumulator(auto_id=True)
    for people, hyps in zip(truth, tracked):
        gt_ids = [i for i, _ in people]
        hyp_ids = [int(p["track_id"] if isinstance(p, dict) else p.track_id) for p in hyps]
        if people and hyps:
            gt = np.stack([kp for _, kp in people])
            sig = sigmas if sigmas is not None else sigmas_for(gt.shape[1])
            oks = oks_matrix(np.stack([as_keypoints(p) for p in hyps]), gt, sig).T
            dist = np.where(oks >= MATCH_OKS, 1.0 - oks, np.nan)
        else:
            dist = np.empty((len(gt_ids), len(hyp_ids)))
        acc.update(gt_ids, hyp_ids, dist)
    table = mm.metrics.create().compute(acc, metrics=list(METRICS), name="sequence")
    return {k: float(table[k].iloc[0]) for k in METRICS}


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A Markdown table, a row per run."""
    head = "| run | frames | MOTA | IDF1 | ID switches | FP | misses | precision | recall |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for name, m in rows.items():
        lines.append(
            f"| {name} | {int(m['num_frames'])} | {m['mota']:.3f} | {m['idf1']:.3f} | {int(m['num_switches'])} "
            f"| {int(m['num_false_positives'])} | {int(m['num_misses'])} | {m['precision']:.3f} | {m['recall']:.3f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluation.track", description=__doc__.split("\n")[0])
    p.add_argument("--ann", type=Path, help="COCO keypoint annotations (default: the package's sample)")
    p.add_argument("--images", type=Path, help="their image folder (default: the package's sample)")
    p.add_argument("--frames", type=int, default=90, help="frames in the sequence (default 90)")
    p.add_argument(
        "--scene",
        choices=("crossing", "pan"),
        default="crossing",
        help="crossing: cut-out people walking, two crossing, one coming in (default); pan: one whole "
        "image under a slow zoom and pan (the image with the most people)",
    )
    p.add_argument(
        "--seeds", type=int, default=3, help="noisy ground truth: runs with seeds 0..N-1 (default 3)"
    )
    p.add_argument("--noise", type=float, default=0.02, help="keypoint jitter × person height (default 0.02)")
    p.add_argument("--drop-joint", type=float, default=0.1, help="chance a joint is left out (default 0.1)")
    p.add_argument(
        "--miss", type=float, default=0.05, help="chance a person is missed in a frame (default 0.05)"
    )
    p.add_argument(
        "--model", type=Path, help="track this model's people (.keras, SavedModel, .tflite, .onnx)"
    )
    p.add_argument("--input-size", help="the model's input: R or HxW (as evaluation.predict)")
    p.add_argument(
        "--height-scale",
        type=float,
        default=1.0,
        help="person size on screen (1: the walkers about 2/3 of the height)",
    )
    p.add_argument("--min-score", type=float, default=0.1, help="people scoring below are dropped")
    p.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, default=False, help="flip test (default off)"
    )
    p.add_argument("--video", type=Path, help="write the tracked sequence, drawn, to this .mp4")
    p.add_argument("--json", type=Path, help="write the metrics (JSON) here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from keras_ehrnet.data import sample_dataset
    from keras_ehrnet.errors import DatasetError
    from keras_ehrnet.fileio import OutputPathError, atomic_write_json, check_writable, one_line
    from keras_ehrnet.inference.images import ImageReadError
    from keras_ehrnet.inference.tracking import Tracker
    from keras_ehrnet.inference.transforms import parse_input_size

    ann, images = sample_dataset()
    ann, images = args.ann or ann, args.images or images
    try:
        if args.frames < 6 or args.seeds < 1:
            raise ValueError(f"--frames must be ≥ 6 and --seeds ≥ 1; got {args.frames} and {args.seeds}")
        for path, flag in ((args.json, "--json"), (args.video, "--video")):
            if path is not None:
                check_writable(path, what=flag)
        cutouts = load_cutouts(ann, images)
        seq = (
            make_pan_sequence(ann, images, args.frames)
            if args.scene == "pan"
            else make_sequence(
                cutouts,
                args.frames,
                render=args.model is not None or args.video is not None,
                height_scale=args.height_scale,
            )
        )
    except (FileNotFoundError, ValueError, DatasetError, ImageReadError, OutputPathError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows: dict[str, dict[str, float]] = {}
    shown: list[list[Any]] = []
    if args.model is None:
        for seed in range(args.seeds):
            dets = noisy_detections(
                seq.truth, noise=args.noise, drop_joint=args.drop_joint, miss=args.miss, seed=seed
            )
            tracker = Tracker()
            tracked = [tracker.update(people) for people in dets]
            rows[f"noisy ground truth, seed {seed}"] = score_tracks(seq.truth, tracked)
            shown = shown or tracked
        what = (
            f"ground-truth poses with noise {args.noise} × height, joints dropped {args.drop_joint}, "
            f"people missed {args.miss}"
        )
    else:
        from keras_ehrnet.inference.predictor import Predictor

        try:
            size = parse_input_size(args.input_size) if args.input_size else None
            predictor = Predictor(str(args.model), input_size=size, flip=args.flip, min_score=args.min_score)
            predictor.warmup(seq.size)
        except (FileNotFoundError, ValueError, TypeError, argparse.ArgumentTypeError) as err:
            print(f"error: {one_line(err) if not isinstance(err, ValueError) else err}", file=sys.stderr)
            return 2
        frames = tqdm(seq.frames, desc="frames", unit="frame", disable=args.quiet)
        shown = list(predictor.track(frames))
        rows[f"{predictor.name} model {args.model.name}"] = score_tracks(seq.truth, shown)
        what = f"model {args.model} ({predictor!r})"
    if args.video is not None:
        write_tracked_video(seq, shown, args.video)
    print(
        f"synthetic {args.scene} sequence: {args.frames} frames of {seq.size[1]}x{seq.size[0]}, people from {ann}; {what}"
    )
    print(format_table(rows))
    if args.json:
        payload = {
            "frames": args.frames,
            "annotations": str(ann),
            "scene": args.scene,
            "people": [c.source for c in cutouts] if args.scene == "crossing" else None,
            "what": what,
            "match_oks": MATCH_OKS,
            "runs": rows,
        }
        atomic_write_json(args.json, payload, indent=1)
        print(f"metrics written to {args.json}")
    return 0


def write_tracked_video(seq: SyntheticSequence, tracked: list[list[Any]], path: Path) -> None:
    """The sequence drawn with the tracked people and their ids."""
    from keras_ehrnet.inference.video import FrameItem, VideoSink

    if seq.frames is None:
        raise ValueError("the sequence was not drawn")
    sink = VideoSink(None, path, 25.0)
    try:
        for f, (image, people) in enumerate(zip(seq.frames, tracked)):
            sink(FrameItem(f, f / 25.0, image, people=people))
    finally:
        sink.close()


if __name__ == "__main__":
    sys.exit(main())
