"""What full-integer int8 costs in COCO AP: fp32 and int8 TFLite of one trained model, same images, same size.

    python -m evaluation.benchmark int8 --model runs/quickstart/model.keras [--input-size 256]
        [--calibration-images DIR] [--images DIR --annotations FILE] [--workdir DIR] [--json out.json]
    python -m evaluation.benchmark int8 --train-quickstart runs/int8   # trains the quickstart model first

A model that has learnt something is needed: an untrained one scores 0 either way. The
quickstart model (`python -m training.quickstart`, H-4 memorising the ten sample images at
256²) is the default subject; both artefacts are scored with pycocotools through
`keras_ehrnet.metrics.coco.evaluate_coco` on the same annotated images, letterboxed into the same
fixed input, with flip test, exactly as the quickstart scores its fp32 export. The int8 file
is TFLite's full-integer quantisation (per-channel int8 weights, per-tensor int8 activations
calibrated on `--calibration-images`, int8 input and outputs). Then, layer by layer, TFLite's
QuantizationDebugger names the layers whose int8 output differs most from float (error
relative to the layer's quantisation step), and the program scores two mixed files made by
the library's `export_tflite(..., "int8", float_heads=True)`: the two output convolutions kept
in float ("heads float"), and the `--keep-float` worst layers kept in float by the same
debugger, so the table shows where the AP goes. Each row's difference from fp32 comes with its
standard error, leaving one image out at a time (`keras_ehrnet.metrics.coco.paired_difference`):
on ten images a few hundredths of AP are within the noise, and the table says so. Calibrate on
more, varied images of the deployment's kind (`--calibration-images`, up to 100 are read) rather
than only the scored ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from keras_ehrnet.fileio import atomic_write_json

HEAD_LAYERS = ("final_quarter", "final_half")  # the two 1×1 output convolutions (keras_ehrnet.models.model)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.benchmark int8", description=__doc__.split("\n")[0]
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="a trained .keras model (e.g. the quickstart's model.keras)")
    src.add_argument(
        "--train-quickstart", type=Path, metavar="DIR", help="train the quickstart model into DIR first"
    )
    p.add_argument(
        "--input-size", type=int, default=256, help="fixed square input of both files (default 256)"
    )
    p.add_argument("--images", type=Path, help="annotated image folder (default: the embedded sample)")
    p.add_argument("--annotations", type=Path, help="COCO keypoint annotations for --images")
    p.add_argument("--calibration-images", type=Path, help="images for int8 calibration (default: --images)")
    p.add_argument(
        "--keep-float", type=int, default=4, help="worst layers kept in float for the last row (0: skip)"
    )
    p.add_argument("--workdir", type=Path, default=Path("runs/int8"), help="where the .tflite files go")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if (args.images is None) != (args.annotations is None):
        p.error("--images and --annotations go together")
    return args


def layer_errors(debugger) -> list[dict]:
    """Per-layer int8 error from TFLite's QuantizationDebugger (already run), worst first.

    The figure per layer is the RMSE between its int8 output (dequantised) and its float
    output divided by the layer's quantisation scale: about 0.29 (= 1/√12) is the rounding
    floor; much more means the per-tensor range is too wide for the values that matter.
    """
    import csv
    import io

    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    rows = []
    for row in csv.DictReader(buf.getvalue().splitlines()):
        scale = float(row.get("scale") or 0.0)
        rmse = float(row.get("mean_squared_error") or 0.0) ** 0.5
        rows.append(
            {
                "tensor": row["tensor_name"],
                "op": row.get("op_name"),
                "rmse": rmse,
                "scale": scale,
                "rmse_over_scale": rmse / scale if scale else 0.0,
            }
        )
    rows.sort(key=lambda r: -r["rmse_over_scale"])
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import keras

    import keras_ehrnet.models.model  # noqa: F401  (registers EfficientHRNet for load_model)
    from keras_ehrnet.data import sample_dataset
    from keras_ehrnet.deploy.savedmodel import export_savedmodel
    from keras_ehrnet.deploy.tflite import (
        configure_converter,
        export_tflite,
        representative_dataset,
    )
    from keras_ehrnet.fileio import atomic_write_bytes
    from keras_ehrnet.metrics.coco import evaluate_coco, load_coco, paired_difference

    if args.train_quickstart:
        from keras_ehrnet.train.quickstart import quickstart

        args.model = Path(quickstart(args.train_quickstart, input_size=args.input_size)["files"]["model"])
    if not args.model.is_file():
        print(f"error: model not found: {args.model}", file=sys.stderr)
        return 2
    ann, images = (args.annotations, args.images) if args.images else sample_dataset()
    calibration = args.calibration_images or images
    size = (args.input_size, args.input_size)
    model = keras.saving.load_model(args.model, compile=False)
    args.workdir.mkdir(parents=True, exist_ok=True)

    detections: dict[str, list[dict]] = {}  # each file's COCO results, for the paired differences

    def score(path: Path) -> dict:
        out = path.with_name(path.stem + "_results.json")
        summary = evaluate_coco(
            str(path), ann, images, flip=True, progress=False, verbose=False, results_path=out
        )
        detections[path.stem] = json.loads(out.read_text())
        summary = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
        summary["file"] = path.name
        return summary

    rows = {}
    fp32 = export_tflite(model, args.workdir / "model_fp32.tflite", size, "fp32", progress=False)
    rows["fp32"] = score(fp32)
    print(f"fp32 TFLite: AP {rows['fp32']['AP']:.4f}", flush=True)
    int8 = export_tflite(model, args.workdir / "model_int8.tflite", size, "int8", calibration_dir=calibration)
    rows["int8"] = score(int8)
    print(
        f"int8 TFLite: AP {rows['int8']['AP']:.4f} (Δ {rows['int8']['AP'] - rows['fp32']['AP']:+.4f})",
        flush=True,
    )
    label = f"int8, heads float ({', '.join(HEAD_LAYERS)})"
    heads = export_tflite(
        model, args.workdir / "model_int8_float_heads.tflite", size, "int8",
        calibration_dir=calibration, float_heads=True, progress=False,
    )  # fmt: skip
    rows[label] = score(heads)
    print(
        f"{label}: AP {rows[label]['AP']:.4f} (Δ {rows[label]['AP'] - rows['fp32']['AP']:+.4f})", flush=True
    )
    result = {
        "model": str(args.model),
        "input_size": list(size),
        "images": str(images),
        "annotations": str(ann),
        "calibration_images": str(calibration),
        "rows": rows,
    }
    if args.keep_float:
        import tempfile

        import tensorflow as tf

        representative = representative_dataset(calibration, size, progress=False)
        with tempfile.TemporaryDirectory(prefix="ehrnet-int8-") as tmp:
            export_savedmodel(model, tmp, size, float_default=True)

            def converter():
                c = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serving_default"])
                return configure_converter(c, "int8", representative)

            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter(), debug_dataset=representative
            )
            debugger.run()
            worst = layer_errors(debugger)
            result["layer_errors"] = worst[:20]
            for row in worst[:10]:
                print(
                    f"  {row['tensor']} ({row['op']}): {row['rmse_over_scale']:.2f} quantisation steps RMSE"
                )
            label = f"int8, {args.keep_float} worst layers float"
            keep = [r["tensor"] for r in worst[: args.keep_float]]
            options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=keep)
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter(), debug_dataset=representative, debug_options=options
            )
            path = args.workdir / "model_int8_worst_float.tflite"
            mixed = atomic_write_bytes(path, debugger.get_nondebug_quantized_model())
            rows[label] = score(mixed)
            rows[label]["float_layers"] = keep
            delta = rows[label]["AP"] - rows["fp32"]["AP"]
            print(f"{label}: AP {rows[label]['AP']:.4f} (Δ {delta:+.4f})", flush=True)
    # the difference per file, paired image by image, with its leave-one-image-out error
    coco = load_coco(ann)
    image_ids = [int(i) for i in coco.getImgIds()]
    fp32_results = detections[Path(rows["fp32"]["file"]).stem]
    for name, r in rows.items():
        if name != "fp32":
            paired = paired_difference(coco, fp32_results, detections[Path(r["file"]).stem], image_ids)
            r["delta_AP"], r["delta_AP_se"] = paired["delta"], paired["se"]
    result["delta_ap_int8"] = round(rows["int8"]["AP"] - rows["fp32"]["AP"], 4)
    print()
    print(
        f"Δ AP ± its standard error (leave one of the {len(image_ids)} images out, fp32 and the row "
        "scored on the same images)"
    )
    print()
    print("| TFLite | AP | AP50 | AP75 | AR | Δ AP vs fp32 ± SE |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        delta = f"{r['delta_AP']:+.3f} ± {r['delta_AP_se']:.3f}" if "delta_AP" in r else "–"
        print(f"| {name} | {r['AP']:.3f} | {r['AP50']:.3f} | {r['AP75']:.3f} | {r['AR']:.3f} | {delta} |")
    if args.json:
        atomic_write_json(args.json, result, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
