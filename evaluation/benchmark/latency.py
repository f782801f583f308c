"""Latency per level and runtime at batch 1, throughput at a larger batch, beside the reference.

    python -m evaluation.benchmark latency [--levels H0 H-4] [--runtimes keras,savedmodel,tflite-fp32,…]
        [--threads N] [--batch 1] [--throughput-batch 4] [--runs 15] [--json out.json] [--markdown out.md]
        [--reference PATH/TO/EfficientHRNet] [--workdir DIR]

Keras runs as a compiled tf.function, without ("keras") and with XLA ("keras-xla"), and with
BatchNorm folded into the convs ("keras-folded"); every other runtime runs the exported artefact
through keras_ehrnet.deploy.runtimes.load_runner. Randomly initialised levels first get realistic weight
magnitudes (keras_ehrnet.metrics.benchmarking.timing_weights), as a trained model has; the released init
would leave activations in the denormal range, which CPUs compute slowly. Runtimes that cannot
run here (TF-TRT and TensorRT without TensorRT) are listed as skipped with the reason. With
--reference, the authors' PyTorch model is timed in the same run, eagerly and exported to ONNX on
ONNX Runtime, and every figure gets its ratio to that ONNX Runtime latency.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from keras_ehrnet.fileio import atomic_write_json, atomic_write_text
from keras_ehrnet.metrics.benchmarking import DEFAULT_RUNTIMES, RUNTIMES
from keras_ehrnet.models.scaling import PRESET_NAMES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.benchmark latency", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--levels", nargs="+", default=["H-4", "H0"], help=f"levels (default H-4 H0; any of {PRESET_NAMES})"
    )
    p.add_argument(
        "--runtimes", default=",".join(DEFAULT_RUNTIMES), help=f"comma-separated, from {', '.join(RUNTIMES)}"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for every runtime (default: all cores)"
    )
    p.add_argument("--batch", type=int, default=1, help="batch for the latency figures (default 1)")
    p.add_argument("--throughput-batch", type=int, default=4, help="larger batch for images/s (0 to skip)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--input-size", type=int, default=None, help="override every level's native resolution")
    p.add_argument(
        "--model", type=Path, help="a .keras model to benchmark instead of randomly initialised levels"
    )
    p.add_argument(
        "--calibration-images", type=Path, help="real images for int8 (default: the embedded sample)"
    )
    p.add_argument("--workdir", type=Path, help="where artefacts are exported (default: a temporary folder)")
    p.add_argument(
        "--reference", type=Path, help="checkout of TeCSAR-UNCC/EfficientHRNet (needs torch, yacs)"
    )
    p.add_argument(
        "--peak-gflops",
        type=float,
        default=None,
        help="compute ceiling for the floor (default: measured matmul)",
    )
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    args.runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    unknown = [r for r in args.runtimes if r not in RUNTIMES]
    if unknown:
        p.error(f"unknown runtime(s) {', '.join(unknown)}; choose from {', '.join(RUNTIMES)}")
    if args.runs < 5:
        p.error(f"--runs must be at least 5, got {args.runs}")
    return args


def bench_level(model, args, threads: int, workdir: Path, floor_gflops: float) -> dict:
    import keras_ehrnet as ke
    from keras_ehrnet.metrics.benchmarking import Skipped, floor_ms, prepare_runtime, time_callable

    size = args.input_size or model.config.input_size
    macs = ke.count_macs(model, size)
    row = {"level": model.config.name, "input_size": size, "gmacs": round(macs / 1e9, 3), "runtimes": {}}
    row["floor_ms"] = round(floor_ms(macs, floor_gflops), 2)
    ref_ort = None
    if args.reference:
        row["reference"] = bench_reference(model.config.name, size, args, threads, workdir)
        ref_ort = row["reference"].get("onnxruntime", {}).get("median_ms")
    for runtime in args.runtimes:
        try:
            fn = prepare_runtime(
                model,
                runtime,
                (size, size),
                workdir,
                threads=threads,
                calibration_images=args.calibration_images,
                batch=args.batch,
            )
            stats = time_callable(fn, warmup=args.warmup, runs=args.runs)
            entry = {"latency": stats.as_dict(), "x_floor": round(stats.median_ms / row["floor_ms"], 2)}
            if args.throughput_batch and args.throughput_batch > args.batch:
                fn_b = prepare_runtime(
                    model,
                    runtime,
                    (size, size),
                    workdir,
                    threads=threads,
                    calibration_images=args.calibration_images,
                    batch=args.throughput_batch,
                )
                tb = time_callable(fn_b, warmup=1, runs=max(3, args.runs // 3))
                entry["throughput_img_s"] = round(args.throughput_batch * 1000.0 / tb.median_ms, 2)
                entry["throughput_batch"] = args.throughput_batch
            if ref_ort:
                entry["ratio_vs_ref_ort"] = round(stats.median_ms / ref_ort, 3)
            print(
                f"  {row['level']} {runtime:<20} {stats.median_ms:8.1f} ms median  p90 {stats.p90_ms:7.1f}  "
                f"({entry['x_floor']}× floor{', ' + str(entry['ratio_vs_ref_ort']) + '× ref ORT' if ref_ort else ''}; "
                f"foreign CPU {stats.foreign_cpu_frac}, steal {stats.cpu_steal_frac})",
                flush=True,
            )
        except Skipped as exc:
            entry = {"skipped": str(exc)}
            print(f"  {row['level']} {runtime:<20} skipped: {exc}", flush=True)
        row["runtimes"][runtime] = entry
    return row


def bench_reference(level: str, size: int, args, threads: int, workdir: Path) -> dict:
    from evaluation.reference import (
        ReferenceUnavailableError,
        export_reference_onnx,
        load_reference_model,
        ort_infer_fn,
        torch_infer_fn,
    )
    from keras_ehrnet.metrics.benchmarking import time_callable

    try:
        model, _ = load_reference_model(args.reference, level)
    except ReferenceUnavailableError as exc:
        print(f"  {level} reference skipped: {exc}")
        return {"skipped": str(exc)}
    out = {}
    eager = time_callable(
        torch_infer_fn(model, (size, size), threads=threads), warmup=args.warmup, runs=args.runs
    )
    out["torch_eager"] = eager.as_dict()
    onnx_path = export_reference_onnx(model, (size, size), workdir / f"reference_{level}_{size}.onnx")
    ort = time_callable(
        ort_infer_fn(onnx_path, (size, size), threads=threads), warmup=args.warmup, runs=args.runs
    )
    out["onnxruntime"] = ort.as_dict()
    print(
        f"  {level} reference: PyTorch eager {eager.median_ms:.1f} ms, ONNX Runtime {ort.median_ms:.1f} ms",
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import keras

    import keras_ehrnet as ke
    from keras_ehrnet.metrics.benchmarking import (
        configure_threads,
        latency_markdown,
        machine_info,
        peak_matmul_gflops,
        timing_weights,
    )

    threads = configure_threads(args.threads)
    if args.calibration_images is None:
        from keras_ehrnet.data import sample_dataset

        args.calibration_images = sample_dataset()[1]
    info = machine_info()
    gflops = args.peak_gflops or peak_matmul_gflops(threads)
    print(
        f"{info['cpu_model']}, {info['logical_cpus']} logical CPUs, {threads} threads, batch {args.batch}; "
        f"{args.warmup} warm-up + {args.runs} timed runs; floor = 2·MACs / {gflops:.0f} GFLOP/s "
        f"({'given' if args.peak_gflops else 'measured float32 matmul'})"
    )
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ehrnet-latency-")
        args.workdir = Path(tmp.name)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        if args.model:
            models = [keras.saving.load_model(args.model, compile=False)]
        else:
            models = None
        for level in [None] if models else args.levels:
            model = models[0] if models else ke.build_model(level)
            if not models:
                size = args.input_size or model.config.input_size
                timing_weights(model, (size, size))
            print(f"{model.config.name} at {args.input_size or model.config.input_size}:", flush=True)
            rows.append(bench_level(model, args, threads, args.workdir, gflops))
    finally:
        if tmp is not None:
            tmp.cleanup()
    table = latency_markdown(rows, args.runtimes)
    print()
    print(table)
    result = {
        "machine": info,
        "threads": threads,
        "batch": args.batch,
        "peak_gflops": round(gflops, 1),
        "levels": rows,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, result, indent=1)
        print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.markdown, table + "\n")
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
