"""Export a model for deployment: SavedModel (TF Serving), TFLite/LiteRT, ONNX, TF-TRT, TensorRT.

    python -m conversion --model M.keras --format {savedmodel,tflite,onnx,tftrt,tensorrt}
        [--precision fp32|fp16|int8|int8-dynamic] [--calibration-images DIR]
        [--input-size R] [--with-decoder] [--verify DIR] --out PATH

`--level H-4` instead of `--model` exports a randomly initialised model (smoke
runs). `--verify DIR` runs the artefact and the Keras model on real images
from DIR and prints how far apart their outputs are. The work is done by
keras_ehrnet.deploy.export. `--out` is checked before any work; the artefact is
written under a temporary name and renamed into place when complete. Calibration
images that cannot be read are skipped and listed (`--strict`: exit 2 if any were).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from keras_ehrnet.inference.transforms import parse_input_size

FORMATS = ("savedmodel", "tflite", "onnx", "tftrt", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m conversion", description=__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a .keras model (saved with model.save)")
    source.add_argument("--level", help="H0, H-1 … H-4 (or φ): a randomly initialised model, for smoke runs")
    p.add_argument("--num-joints", type=int, default=17, help="keypoints of the --level model (default 17)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="int8: full integer, calibrated on --calibration-images; int8-dynamic (TFLite): int8 weights only",
    )
    p.add_argument("--calibration-images", type=Path, help="folder of real images for int8 calibration")
    p.add_argument(
        "--num-calibration-images", type=int, default=100, help="images used for calibration (default 100)"
    )
    p.add_argument(
        "--input-size",
        type=parse_input_size,
        help="fixed input size: R (square) or HxW such as 384x576 for landscape video (multiples of 32); "
        "default: dynamic for savedmodel/onnx, the level's native R otherwise",
    )
    p.add_argument(
        "--float-heads",
        action="store_true",
        help="TFLite int8: keep the two output convolutions in float (float outputs; about half of "
        "int8's AP loss back, BENCHMARKS §9.5)",
    )
    p.add_argument(
        "--with-decoder", action="store_true", help="SavedModel: add signatures that return people"
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17; default 17)")
    p.add_argument("--max-batch", type=int, default=1, help="TensorRT: largest batch of the engine's profile")
    p.add_argument(
        "--verify",
        type=Path,
        metavar="DIR",
        help="compare the artefact with the Keras model on images from DIR",
    )
    p.add_argument("--num-threads", type=int, default=None, help="CPU threads for --verify (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 2 when any calibration image was skipped (the artefact is still written)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output file (.tflite, .onnx, .engine) or directory"
    )
    return p.parse_args(argv)


def _model(args: argparse.Namespace):
    if args.model is not None:
        return args.model
    import keras_ehrnet

    return keras_ehrnet.build_model(args.level, num_joints=args.num_joints)


def _print_verification(report: dict) -> None:
    print(f"parity with the Keras model on {report['images']} image(s) at {report['input_size']}:")
    for name, r in report["outputs"].items():
        print(
            f"  {name:17s} max |diff| {r['max_abs']:.3g} (output max {r['reference_max']:.3g}, "
            f"relative {r['relative']:.2g}), correlation {r['correlation']:.5f}"
            + ("  NaN!" if r["nan"] else "")
        )


def _size_on_disk(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from keras_ehrnet.deploy import (
        DIRECTORY_FORMATS,
        RuntimeUnavailableError,
        check_options,
        collect_skipped,
        export,
    )
    from keras_ehrnet.fileio import check_writable

    try:
        check_options(args.format, args.precision, with_decoder=args.with_decoder)
        if args.float_heads and (args.format, args.precision) != ("tflite", "int8"):
            raise ValueError(
                f"--float-heads applies to --format tflite --precision int8 only, not {args.format} {args.precision}"
            )
        check_writable(args.out, kind="dir" if args.format in DIRECTORY_FORMATS else "file", what="--out")
        if args.format == "tftrt":
            from keras_ehrnet.deploy.tftrt import require_tftrt

            require_tftrt()  # before building or loading the model
        model = _model(args)
        source = args.model or f"a random {args.level}"
        print(f"exporting {source} to {args.format} ({args.precision}) …", flush=True)
        with collect_skipped() as skipped:
            out = export(
                model,
                args.format,
                args.out,
                precision=args.precision,
                input_size=args.input_size,
                calibration_images=args.calibration_images,
                num_calibration_images=args.num_calibration_images,
                float_heads=args.float_heads,
                with_decoder=args.with_decoder,
                opset=args.opset,
                max_batch=args.max_batch,
                progress=not args.no_progress,
            )
    except (ValueError, FileNotFoundError, RuntimeUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({_size_on_disk(out) / 2**20:.1f} MiB)")
    for entry in skipped:
        print(f"skipped calibration image {entry['input']}: {entry['reason']}", file=sys.stderr)
    if args.verify is not None:
        from keras_ehrnet.deploy.parity import verify_artefact

        try:
            report = verify_artefact(model, out, args.verify, num_threads=args.num_threads)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        _print_verification(report)
    if args.strict and skipped:
        print(f"--strict: {len(skipped)} calibration image(s) skipped", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
