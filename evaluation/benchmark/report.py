"""The paper's Table 3/4/5 layout for our models: sizes, AP, FPS per runtime, FPS/W and Æ, with plots.

    python -m evaluation.benchmark report --ann A --images D [--models H-4=h4.keras …] [--watts 15]
        [--latency-json latency.json | --runtimes keras-folded,tflite-fp32,tflite-int8,onnx]
        [--decode-json decode.json] --out reports/

AP is measured (pycocotools, flip test) only for levels given trained or imported weights with
--models; FPS is 1000 / median batch-1 latency on this machine, read from a `benchmark latency`
JSON or measured now. The power behind efficiency (FPS/W) and Æ = AP × FPS/W is stated, not
measured (default: the paper's 15 W Jetson NX figure). Writes report.md, report.json,
ap_vs_gmacs.png, latency.png and, given a `benchmark decode` JSON, decode_vs_people.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from keras_ehrnet.fileio import atomic_write_json, atomic_write_text
from keras_ehrnet.models.scaling import PRESET_NAMES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.benchmark report", description=__doc__.split("\n")[0]
    )
    p.add_argument("--ann", type=Path, help="COCO keypoint annotations for AP (with --models)")
    p.add_argument("--images", type=Path, help="image folder for AP")
    p.add_argument("--levels", nargs="+", default=list(PRESET_NAMES))
    p.add_argument(
        "--models", nargs="*", default=[], metavar="LEVEL=PATH", help="trained/imported .keras per level"
    )
    p.add_argument(
        "--latency-json", type=Path, help="output of `python -m evaluation.benchmark latency --json`"
    )
    p.add_argument(
        "--runtimes",
        default="keras-folded,tflite-fp32,tflite-int8,onnx",
        help="measured when no --latency-json",
    )
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--decode-json", type=Path, help="output of `python -m evaluation.benchmark decode --json`"
    )
    p.add_argument(
        "--watts", type=float, default=15.0, help="stated power for FPS/W and Æ (default: the paper's 15 W)"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for report.md, report.json and the plots")
    args = p.parse_args(argv)
    try:
        args.models = dict(item.split("=", 1) for item in args.models)
    except ValueError:
        p.error("--models takes LEVEL=PATH pairs, e.g. H-4=runs/H-4/final.keras")
    if args.models and not (args.ann and args.images):
        p.error("--models needs --ann and --images to measure AP")
    if args.watts <= 0:
        p.error(f"--watts must be positive, got {args.watts}")
    return args


def _latency_from_json(path: Path) -> dict:
    data = json.loads(path.read_text())
    out = {}
    for row in data.get("levels", []):
        out[row["level"]] = {
            rt: (entry["latency"]["median_ms"] if "latency" in entry else None)
            for rt, entry in row["runtimes"].items()
        }
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import keras

    import keras_ehrnet as ke
    from keras_ehrnet.metrics.benchmarking import (
        Skipped,
        configure_threads,
        machine_info,
        prepare_runtime,
        time_callable,
        timing_weights,
    )
    from keras_ehrnet.metrics.reporting import plot_ap_vs_gmacs, plot_latency, report_markdown, report_rows

    threads = configure_threads(args.threads)
    info = machine_info()
    machine = f"{info['cpu_model']} ({info['logical_cpus']} logical CPUs, {threads} threads)"
    latency = _latency_from_json(args.latency_json) if args.latency_json else {}
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    levels, workdir = [], tempfile.TemporaryDirectory(prefix="ehrnet-report-")
    try:
        for level in args.levels:
            path = args.models.get(level)
            model = keras.saving.load_model(path, compile=False) if path else ke.build_model(level)
            name, size = model.config.name, model.config.input_size
            item = {
                "level": name,
                "input_size": size,
                "params": int(sum(int(w.numpy().size) for w in model.trainable_weights)),
                "gmacs": round(ke.count_macs(model, size) / 1e9, 3),
                "weights": str(path) if path else "random init (no AP)",
            }
            if path:
                summary = ke.evaluate_coco(model, args.ann, args.images, input_size=size, flip=True)
                item["ap"] = round(100 * summary["AP"], 2)
            if not args.latency_json:
                if not path:
                    timing_weights(model, (size, size))
                latency[name] = {}
                for rt in runtimes:
                    try:
                        fn = prepare_runtime(model, rt, (size, size), Path(workdir.name), threads=threads)
                        latency[name][rt] = round(time_callable(fn, warmup=2, runs=args.runs).median_ms, 2)
                    except Skipped:
                        latency[name][rt] = None
                print(
                    f"{name}: " + ", ".join(f"{rt} {ms} ms" for rt, ms in latency[name].items()), flush=True
                )
            levels.append(item)
    finally:
        workdir.cleanup()
    shown = sorted({rt for per in latency.values() for rt in per}, key=lambda r: (r not in runtimes, r))
    rows = report_rows(levels, latency, args.watts)
    table = report_markdown(rows, shown, args.watts, machine)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "report.md", table + "\n")
    atomic_write_json(
        args.out / "report.json", {"machine": info, "watts": args.watts, "rows": rows}, indent=1
    )
    plot_ap_vs_gmacs(rows, args.out / "ap_vs_gmacs.png")
    plot_latency({lv: per for lv, per in latency.items()}, args.out / "latency.png", machine)
    if args.decode_json:
        from evaluation.benchmark.decode import plot_crowd

        plot_crowd(json.loads(args.decode_json.read_text()), args.out / "decode_vs_people.png")
    print(table)
    print(
        f"\nwrote {args.out}/report.md, report.json, ap_vs_gmacs.png, latency.png"
        + (", decode_vs_people.png" if args.decode_json else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
