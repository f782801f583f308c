"""COCO keypoint AP of a model, a randomly initialised level, or the ground-truth oracle.

    python -m evaluation.coco --model model.onnx --ann person_keypoints_val2017.json --images val2017
    python -m evaluation.coco --oracle --ann … --images … --input-size 512 --no-flip --json oracle.json

Prints pycocotools' table; `--out` writes the COCO results, `--json` the summary
(AP, AP50, AP75, APM, APL, AR …, images, skipped, problems, decode_ms_median, decode_ms_max).
The annotations and image headers are checked first, as for training: bad images are skipped
and listed and the rest scored; `--strict` then exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from keras_ehrnet.inference.decoding import REFINE_MODES
from keras_ehrnet.inference.transforms import parse_input_size


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluation.coco", description=__doc__.split("\n")[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", type=Path, help=".keras file, SavedModel directory, .tflite or .onnx file")
    what.add_argument("--level", help="a randomly initialised model of this level (H0 … H-4), for smoke runs")
    what.add_argument(
        "--oracle", action="store_true", help="ideal outputs from the ground truth instead of a network"
    )
    what.add_argument(
        "--results", type=Path, help="score an existing COCO keypoint results file (no network)"
    )
    p.add_argument("--ann", type=Path, required=True, help="COCO keypoint annotation file")
    p.add_argument(
        "--images", type=Path, help="folder holding the annotated images (not needed with --results)"
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
    p.add_argument(
        "--refine", action=argparse.BooleanOptionalAction, default=True, help="refine missing joints"
    )
    p.add_argument("--refine-mode", choices=REFINE_MODES, default="exclusive")
    p.add_argument("--detection-threshold", type=float, default=0.1)
    p.add_argument("--tag-threshold", type=float, default=1.0)
    p.add_argument("--max-images", type=int, help="only the first N images")
    p.add_argument(
        "--oks-sigmas",
        type=float,
        nargs="+",
        help="per-keypoint OKS constants (default: COCO's for 17 keypoints, 0.0669 each otherwise)",
    )
    p.add_argument("--out", type=Path, help="write the COCO keypoint results (JSON) here")
    p.add_argument("--json", type=Path, help="write the summary (JSON) here")
    p.add_argument(
        "--validate-images",
        choices=["header", "full", "off"],
        default="header",
        help="check the image files before scoring: their headers (size as the JSON says, not cut "
        "short; default), a full decode, or not at all. The annotations are always checked",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 2 after scoring if any image or record was skipped",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _strict_failure(args: argparse.Namespace, summary: dict) -> int:
    """2 (with a line on stderr) when --strict and anything was left out, else 0."""
    problems = summary.get("problems") or []
    if args.strict and problems:
        print(
            f"error: --strict: {summary.get('skipped', 0)} image(s) skipped, {len(problems)} problem(s); "
            f"first: {problems[0]}",
            file=sys.stderr,
        )
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from keras_ehrnet.fileio import OutputPathError, atomic_write_json, check_writable
    from keras_ehrnet.metrics.coco import evaluate_coco, evaluate_results_file

    try:  # before the work: an output that cannot be written would lose it
        for path, flag in ((args.json, "--json"), (args.out, "--out")):
            if path is not None:
                check_writable(path, what=flag)
    except OutputPathError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.results:
        try:
            summary = evaluate_results_file(args.ann, args.results, oks_sigmas=args.oks_sigmas)
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"\nAP {summary['AP']:.4f}  AR {summary['AR']:.4f}  ({summary['people']} detections)")
        if args.json:
            atomic_write_json(args.json, summary, indent=1)
        return _strict_failure(args, summary)
    if args.images is None:
        parser.error("--images is required unless --results is given")

    if args.oracle:
        from keras_ehrnet.inference.oracle import Oracle

        model = Oracle()
        input_size = args.input_size or 512
    elif args.level:
        import keras_ehrnet

        model = keras_ehrnet.build_model(args.level)
        input_size = args.input_size
    else:
        model = args.model
        input_size = args.input_size
    try:
        summary = evaluate_coco(
            model,
            args.ann,
            args.images,
            input_size=input_size,
            flip=args.flip,
            scales=tuple(args.scales),
            results_path=args.out,
            progress=not args.quiet,
            max_images=args.max_images,
            refine=args.refine,
            refine_mode=args.refine_mode,
            detection_threshold=args.detection_threshold,
            tag_threshold=args.tag_threshold,
            oks_sigmas=args.oks_sigmas,
            validate_images=args.validate_images,
        )
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary["settings"] = {
        "model": str(args.model) if args.model else (args.level or "oracle"),
        "input_size": input_size,
        "flip": args.flip,
        "scales": args.scales,
        "refine": args.refine,
        "refine_mode": args.refine_mode,
    }
    print(
        f"\nAP {summary['AP']:.4f}  AP50 {summary['AP50']:.4f}  AP75 {summary['AP75']:.4f}  "
        f"APM {summary['APM']:.4f}  APL {summary['APL']:.4f}  AR {summary['AR']:.4f}  "
        f"({summary['images']} images, decode {summary['decode_ms_median']:.1f} ms median, "
        f"{summary['decode_ms_max']:.1f} ms max)"
    )
    if args.out:
        print(f"results written to {args.out}")
    if args.json:
        atomic_write_json(args.json, summary, indent=1)
        print(f"summary written to {args.json}")
    return _strict_failure(args, summary)


if __name__ == "__main__":
    sys.exit(main())
