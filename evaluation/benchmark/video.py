"""End-to-end video FPS: the threaded pipeline against the same stages run one after another.

    python -m evaluation.benchmark video [--model model.keras | --level H-4] [--runtime onnx]
        [--frames 120] [--repeats 5] [--size 640x480] [--input-size 384] [--json out.json]

The video is the tracking evaluation's synthetic sequence (real people from the shipped sample,
moving; `evaluation.track`), written at `--size` as an MJPG AVI. Each run reads it, runs the
network (exported to `--runtime`, at the fixed input the frame is letterboxed into), decodes,
tracks, draws (ids, FPS counter) and writes the JSON Lines and the MP4, from the first frame
read to the last frame written (the one-time warm-up excluded). Pipelined and sequential runs
alternate, `--repeats` times each, so a machine shared with others slows both alike; medians
are reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from keras_ehrnet.inference.transforms import parse_input_size


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.benchmark video", description=__doc__.split("\n")[0]
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--model", type=Path, help="a .keras model (exported to --runtime) or an .onnx/.xml/.tflite file"
    )
    what.add_argument("--level", default="H-4", help="a randomly initialised level (default H-4)")
    p.add_argument(
        "--runtime",
        default="onnx",
        choices=("onnx", "openvino", "tflite-fp32", "keras"),
        help="default onnx (openvino: our ONNX file converted to OpenVINO IR)",
    )
    p.add_argument("--frames", type=int, default=120, help="frames per run (default 120)")
    p.add_argument("--repeats", type=int, default=5, help="runs of each mode (default 5)")
    p.add_argument("--size", default="640x480", help="video WxH (default 640x480)")
    p.add_argument(
        "--scene",
        choices=("crossing", "pan"),
        default="crossing",
        help="crossing: cut-out people walking (default); pan: the sample's most crowded image (11 "
        "people) under a slow zoom and pan, fitted in with black bars",
    )
    p.add_argument(
        "--input-size",
        type=parse_input_size,
        default=384,
        help="the network input: a short side R (default 384) or a fixed HxW the frame is letterboxed into",
    )
    p.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, default=False, help="flip test (default off)"
    )
    p.add_argument("--no-track", action="store_true", help="leave tracking out")
    p.add_argument(
        "--min-score", type=float, default=0.1, help="people below are dropped (as evaluation.predict)"
    )
    p.add_argument("--queue-size", type=int, default=2)
    p.add_argument(
        "--network-workers",
        type=int,
        help="pipelined runs: frames through the network side by side in this many threads, the "
        "runtime's threads divided between them (default: keras_ehrnet's choice, one per core up to 4)",
    )
    p.add_argument(
        "--workdir", type=Path, help="where the video and artefact go (default: a temporary folder)"
    )
    p.add_argument("--json", type=Path, help="write the figures (JSON) here")
    return p.parse_args(argv)


def _frame_size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    if w < 64 or h < 64:
        raise ValueError(f"--size must be WxH of at least 64x64, got {text}")
    return w, h


def write_benchmark_video(path: Path, frames: int, size: tuple[int, int], scene: str = "crossing") -> Path:
    """A synthetic tracking sequence of real people (`evaluation.track`) as an MJPG AVI of `size`
    (W, H): "crossing" (cut-out people walking) or "pan" (the sample image with the most people
    under a slow zoom and pan, fitted into `size` with black bars)."""
    import cv2

    from evaluation.track import load_cutouts, make_pan_sequence, make_sequence
    from keras_ehrnet.data import sample_dataset

    if scene == "pan":
        seq = make_pan_sequence(*sample_dataset(), frames)
    else:
        seq = make_sequence(load_cutouts(*sample_dataset()), frames, (size[1], size[0]))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, size)
    for image in seq.frames:
        writer.write(cv2.cvtColor(_fit(image, size), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _fit(image, size: tuple[int, int]):
    """`image` scaled to fit inside (W, H) = `size`, centred on black."""
    import cv2
    import numpy as np

    h, w = image.shape[:2]
    if (w, h) == size:
        return image
    s = min(size[0] / w, size[1] / h)
    nw, nh = round(w * s), round(h * s)
    out = np.zeros((size[1], size[0], 3), np.uint8)
    x, y = (size[0] - nw) // 2, (size[1] - nh) // 2
    out[y : y + nh, x : x + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return out


def _artefact(args: argparse.Namespace, work: Path, input_hw: tuple[int, int]) -> Path | object:
    """The model to time: an artefact file for ONNX / TFLite, a keras.Model for keras."""
    model_path = args.model
    if model_path is not None and model_path.suffix.lower() in (".onnx", ".xml", ".tflite"):
        if args.runtime == "openvino" and model_path.suffix.lower() == ".onnx":
            from keras_ehrnet.deploy.openvino import export_openvino

            return export_openvino(model_path, work / "model.xml")
        return model_path
    import keras

    import keras_ehrnet
    from keras_ehrnet.metrics.benchmarking import timing_weights

    if model_path is not None:
        model = keras.saving.load_model(model_path, compile=False)
    else:
        model = keras_ehrnet.build_model(args.level)
        timing_weights(model, input_hw)
    if args.runtime == "keras":
        return model
    if args.runtime in ("onnx", "openvino"):
        from keras_ehrnet.deploy.onnx import export_onnx

        onnx_path = export_onnx(model, work / "model.onnx", input_hw)
        if args.runtime == "onnx":
            return onnx_path
        from keras_ehrnet.deploy.openvino import export_openvino

        return export_openvino(onnx_path, work / "model.xml")
    from keras_ehrnet.deploy.tflite import export_tflite

    return export_tflite(model, work / "model.tflite", input_hw)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        size = _frame_size(args.size)
        if args.frames < 10 or args.repeats < 1:
            raise ValueError(f"--frames must be ≥ 10 and --repeats ≥ 1; got {args.frames}, {args.repeats}")
        if args.network_workers is not None and args.network_workers < 1:
            raise ValueError(f"--network-workers must be ≥ 1, got {args.network_workers}")
        if args.model is not None and not args.model.exists():
            raise FileNotFoundError(f"model not found: {args.model}")
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from keras_ehrnet.fileio import atomic_write_json
    from keras_ehrnet.inference.predictor import Predictor
    from keras_ehrnet.inference.transforms import make_test_plan
    from keras_ehrnet.inference.video import predict_video
    from keras_ehrnet.threads import available_cores

    with tempfile.TemporaryDirectory(prefix="ehrnet-video-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        video = write_benchmark_video(work / "bench.avi", args.frames, size, args.scene)
        # the fixed network input a frame is letterboxed into: the plan's size at this short side
        input_hw = (
            args.input_size
            if isinstance(args.input_size, tuple)
            else make_test_plan((size[1], size[0]), args.input_size, (1.0,)).scales[0].size
        )
        model = _artefact(args, work, input_hw)
        predictor = Predictor(model, input_size=input_hw, flip=args.flip, min_score=args.min_score)
        print(
            f"{predictor!r}: {args.frames} frames of {size[0]}x{size[1]}, input {input_hw[0]}x{input_hw[1]}"
        )
        runs: dict[str, list[float]] = {"pipelined": [], "sequential": []}
        workers: dict[str, int] = {}
        for r in range(args.repeats):
            for mode in ("pipelined", "sequential"):
                entry = predict_video(
                    predictor,
                    video,
                    work / mode,
                    track=not args.no_track,
                    threaded=mode == "pipelined",
                    queue_size=args.queue_size,
                    network_workers=args.network_workers,
                    progress=False,
                )
                if entry["frames"] != args.frames:
                    raise RuntimeError(f"{mode} run processed {entry['frames']} of {args.frames} frames")
                runs[mode].append(entry["fps"])
                workers[mode] = entry["network_workers"]
                print(
                    f"run {r + 1}/{args.repeats} {mode:<10} {entry['fps']:.2f} FPS "
                    f"({entry['network_workers']} network worker(s), {entry['people']} people found)",
                    flush=True,
                )
    med = {mode: statistics.median(v) for mode, v in runs.items()}
    ratio = med["pipelined"] / med["sequential"]
    print(
        f"median FPS: pipelined {med['pipelined']:.2f}, sequential {med['sequential']:.2f}: {ratio:.2f}× "
        f"({predictor.name}, {'flip on' if args.flip else 'flip off'}, "
        f"{'no tracking' if args.no_track else 'tracking'}, drawing and writing included)"
    )
    if args.json:
        atomic_write_json(
            args.json,
            {
                "runtime": predictor.name,
                "model": str(args.model or args.level),
                "video": f"{size[0]}x{size[1]}",
                "scene": args.scene,
                "input": list(input_hw),
                "frames": args.frames,
                "flip": args.flip,
                "track": not args.no_track,
                "network_workers": workers,
                "cores": available_cores(),
                "fps": runs,
                "median_fps": med,
                "speedup": ratio,
            },
            indent=1,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
