"""Poses in images, folders, videos, cameras and streams: JSON per input and drawn skeletons.

    python -m evaluation.predict --model model.keras photo.jpg holiday/ clip.mp4 --out predictions/
    python -m evaluation.predict --model model.onnx rtsp://cam/stream 0 --track --out live/

For each image `<name>.json` (people: keypoints [x, y, score] in image pixels,
score, box) and `<name>.jpg` with the skeletons; for each video, camera index (0, 1 …),
stream URL (rtsp://, http://) and, with `--track`, folder of frames: `<name>.jsonl` (a line
per frame: index, time, people, each with a `track_id` with `--track`; flushed per frame)
and `<name>.mp4` (drawn, ids and an FPS counter), and `summary.json` for the run. Videos
run as a threaded pipeline; live sources drop frames when the model is slower than the
source (the count is reported), files never do. Unreadable files and
inputs the model cannot take are skipped and listed; the others are still predicted. Exit
status: 0 done (2 with `--strict` when anything was skipped), 1 nothing could be predicted,
2 bad options or model, or an --out that cannot be written (checked before the model loads).
Frames per second (images: prediction only; videos: end to end; never the one-time warm-up)
are reported at the end.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from keras_ehrnet.inference.transforms import parse_input_size


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluation.predict", description=__doc__.split("\n")[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", type=Path, help=".keras file, SavedModel directory, .tflite or .onnx file")
    what.add_argument("--level", help="a randomly initialised model of this level, for smoke runs")
    p.add_argument(
        "inputs",
        nargs="+",
        help="image files, folders of images, video files, camera indices (0), stream URLs (rtsp://…)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("predictions"), help="output folder (default: predictions)"
    )
    p.add_argument(
        "--input-size",
        type=parse_input_size,
        help="short side R of the network input (default: the model's), or HxW: a fixed input every "
        "image is letterboxed into, as a model exported at that size runs",
    )
    p.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, default=True, help="flip test (default on)"
    )
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="test scales, e.g. 0.5 1 1.5")
    p.add_argument("--min-score", type=float, default=0.1, help="drop people scoring below this")
    p.add_argument(
        "--keypoints",
        type=Path,
        metavar="ANN",
        help="COCO-format file whose keypoint category (names, skeleton, left/right pairs) the model "
        "was trained on; needed for flip test and limbs with keypoints other than COCO's 17",
    )
    p.add_argument(
        "--flip-pairs", help='left/right pairs, "l_paw:r_paw,3:4" (names need --keypoints; digits: indices)'
    )
    video = p.add_argument_group("videos, cameras and streams")
    video.add_argument(
        "--track",
        action="store_true",
        help="give each person a track_id kept over frames (OKS association); folders are read as "
        "the frames of one video",
    )
    video.add_argument("--max-frames", type=_positive_int, help="stop each video after this many frames")
    video.add_argument(
        "--every", type=_positive_int, default=1, metavar="N", help="process every N-th frame (default 1)"
    )
    video.add_argument(
        "--queue-size",
        type=_positive_int,
        default=2,
        help="frames waiting between pipeline stages; a live source drops the oldest beyond it (default 2)",
    )
    video.add_argument(
        "--network-workers",
        type=_positive_int,
        metavar="N",
        help="run N frames through the network side by side, each with its own copy of an ONNX or "
        "TFLite runtime and a share of the threads (default: one per core, up to 4; 1 for other runtimes)",
    )
    video.add_argument(
        "--sequential", action="store_true", help="run the video stages one after another (no threads)"
    )
    p.add_argument("--no-draw", action="store_true", help="JSON only, no drawn images or videos")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--strict", action="store_true", help="exit with status 2 when any input was skipped (after the rest)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from keras_ehrnet.data.coco import keypoint_set
    from keras_ehrnet.errors import DatasetError
    from keras_ehrnet.fileio import OutputPathError, atomic_write_json, check_writable
    from keras_ehrnet.inference.drawing import draw_people
    from keras_ehrnet.inference.predictor import Predictor, _unique_stem, as_runner, predict_files
    from keras_ehrnet.inference.video import SourceError, is_stream, predict_video
    from keras_ehrnet.inference.video import source_name as open_source_name
    from keras_ehrnet.keypoints import flip_index_from_pairs, parse_flip_pairs

    names = skeleton = flip_index = None
    try:
        check_writable(args.out, kind="dir", what="--out")
        pairs = parse_flip_pairs(args.flip_pairs) if args.flip_pairs else None
        if args.keypoints:
            spec = keypoint_set(args.keypoints, pairs)
            names, skeleton, flip_index = spec.names, spec.skeleton, spec.flip_index
        elif pairs is not None and any(isinstance(side, str) for pair in pairs for side in pair):
            raise ValueError("--flip-pairs with names needs --keypoints ANN (or give 0-based indices)")
    except (FileNotFoundError, ValueError, DatasetError, OutputPathError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if args.level:
        import keras_ehrnet

        model = keras_ehrnet.build_model(args.level)
    else:
        model = args.model
    try:
        model = as_runner(model)
        model_joints = getattr(model, "num_joints", None)
        if model_joints and names and model_joints != len(names):
            raise ValueError(
                f"the model predicts {model_joints} keypoints but {args.keypoints} names {len(names)}"
            )
        if pairs is not None and flip_index is None:
            joints = model_joints or max(max(pair) for pair in pairs) + 1
            flip_index = flip_index_from_pairs(pairs, [str(i) for i in range(joints)])
        predictor = Predictor(
            model,
            input_size=args.input_size,
            flip=args.flip,
            scales=tuple(args.scales),
            min_score=args.min_score,
            flip_index=flip_index,
            keypoint_names=names,
        )
    except (FileNotFoundError, ValueError, TypeError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    draw_fn = (lambda image, people: draw_people(image, people, skeleton)) if skeleton else None
    video_options = {
        "track": args.track,
        "max_frames": args.max_frames,
        "every": args.every,
        "queue_size": args.queue_size,
        "threaded": not args.sequential,
        "network_workers": args.network_workers,
    }
    sequences = [i for i in args.inputs if is_stream(i) or (args.track and Path(i).is_dir())]
    summary = predict_files(
        predictor,
        [i for i in args.inputs if i not in sequences],
        args.out,
        draw=not args.no_draw,
        progress=not args.quiet,
        draw_fn=draw_fn,
        **video_options,
    )
    used: set = set()
    for spec in sequences:
        try:
            entry = predict_video(
                predictor,
                spec,
                args.out,
                draw=not args.no_draw,
                progress=not args.quiet,
                draw_fn=draw_fn,
                stem=_unique_stem(args.out, open_source_name(spec), used),
                **video_options,
            )
        except SourceError as err:
            summary["skipped"].append({"input": spec, "reason": str(err)})
            continue
        for key in ("frames", "seconds", "warmup_seconds"):
            summary[key] += entry[key]
        summary["inputs"].append(entry)
    summary["fps"] = summary["frames"] / summary["seconds"] if summary["seconds"] > 0 else 0.0
    for entry in summary["inputs"]:
        extra = ""
        if entry["kind"] in ("video", "stream"):
            extra = f", {entry['frames']} frames at {entry['fps']:.1f} fps end to end"
            if entry["dropped"]:
                extra += f", {entry['dropped']} dropped (model slower than the source)"
            if entry["tracks"] is not None:
                extra += f", {entry['tracks']} track(s)"
            for note in [*entry["corrupt"], entry.get("note")]:
                if note:
                    print(f"warning: {note}", file=sys.stderr)
        print(f"{entry['input']}: {entry['people']} people{extra} -> {entry.get('json', '-')}")
    for entry in summary["skipped"]:
        print(f"skipped {entry['input']}: {entry['reason']}", file=sys.stderr)
    print(
        f"{summary['frames']} frame(s) in {summary['seconds']:.2f} s: {summary['fps']:.2f} frames per second "
        f"({predictor.name}, input {predictor.input_size}, flip {'on' if predictor.flip else 'off'}; "
        f"{summary['warmup_seconds']:.1f} s one-time warm-up not counted)"
    )
    atomic_write_json(args.out / "summary.json", summary, indent=1)
    if not summary["inputs"] and summary["skipped"]:
        return 1
    if args.strict and summary["skipped"]:
        print(f"--strict: {len(summary['skipped'])} input(s) skipped", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
