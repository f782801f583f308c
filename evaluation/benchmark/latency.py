"""Latency per level and runtime at batch 1, throughput at a larger batch, beside the reference.

    python -m evaluation.benchmark latency [--levels H0 H-4] [--runtimes keras,savedmodel,tflite-fp32,…]
        [--threads N] [--batch 1] [--throughput-batch 4] [--runs 15] [--json out.json] [--markdown out.md]
        [--reference PATH/TO/EfficientHRNet] [--workdir DIR]

Keras runs as a compiled tf.function, without ("keras") and with XLA ("keras-xla"), and with
BatchNorm folded into the convs ("keras-folded"); every other runtime runs the exported artefact
through keras_ehrnet.deploy.runtimes.load_runner. Runtimes that need no TensorFlow (TFLite/LiteRT, ONNX
Runtime, OpenVINO) are exported here and timed each in a fresh process that loads only that
runtime (evaluation.benchmark.isolated), --rounds times, interleaved with the reference's ONNX
file when --reference is given: a process that has run TensorFlow keeps its thread pools on the
cores and halves their speed. Randomly initialised levels first get realistic weight
magnitudes (keras_ehrnet.metrics.benchmarking.timing_weights), as a trained model has; the released init
would leave activations in the denormal range, which CPUs compute slowly. Runtimes that cannot
run here (TF-TRT and TensorRT without TensorRT) are listed as skipped with the reason. With
--reference, the authors' PyTorch model is timed in the same run, eagerly and exported to ONNX on
ONNX Runtime, and every figure gets its ratio to that ONNX Runtime latency. Our model then
carries the reference's weights (its BatchNorms given trained-looking statistics,
evaluation.reference.realistic_batchnorm), so both ONNX files compute the same numbers and
differ only in their graphs.
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
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="fresh-process timings per non-TensorFlow runtime, interleaved with the reference (default 3)",
    )
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
        "--reference-eager",
        action="store_true",
        help="also time the reference eagerly in PyTorch (fresh processes, interleaved; slow on a CPU)",
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
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.runs < 5:
        p.error(f"--runs must be at least 5, got {args.runs}")
    return args


def bench_level(model, args, threads: int, workdir: Path, floor_gflops: float, reference=None) -> dict:
    import keras_ehrnet as ke
    from keras_ehrnet.metrics.benchmarking import (
        ISOLATED_FORMATS,
        RUNTIMES,
        Skipped,
        export_artefact,
        floor_ms,
        prepare_runtime,
        time_callable,
    )

    size = args.input_size or model.config.input_size
    macs = ke.count_macs(model, size)
    row = {"level": model.config.name, "input_size": size, "gmacs": round(macs / 1e9, 3), "runtimes": {}}
    row["floor_ms"] = round(floor_ms(macs, floor_gflops), 2)
    ref_onnx = None
    if args.reference:
        row["reference"], ref_onnx = bench_reference(reference, model.config.name, size, workdir)
    isolated = [r for r in args.runtimes if RUNTIMES[r] and RUNTIMES[r][0] in ISOLATED_FORMATS]
    entries: dict[str, dict] = {}
    for runtime in [r for r in args.runtimes if r not in isolated]:
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
            entries[runtime] = {"latency": stats.as_dict(), "process": "this (TensorFlow's)"}
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
                entries[runtime]["throughput_img_s"] = round(args.throughput_batch * 1000.0 / tb.median_ms, 2)
        except Skipped as exc:
            entries[runtime] = {"skipped": str(exc)}
    artefacts = {}
    for runtime in isolated:
        try:
            path = export_artefact(
                model, runtime, (size, size), workdir, calibration_images=args.calibration_images
            )
            artefacts[runtime] = (path, "nhwc")
        except Skipped as exc:
            entries[runtime] = {"skipped": str(exc)}
    if ref_onnx is not None:
        first = {"reference-onnx": (ref_onnx, "nchw"), "reference-onnx-pixels": (ref_onnx, "nchw-pixels")}
        if args.reference_eager:
            first["reference-torch"] = (args.reference, f"torch:{model.config.name}")
        artefacts = {**first, **artefacts}
    if artefacts:
        from evaluation.benchmark.isolated import alternate, time_isolated

        print(
            f"  {row['level']}: {', '.join(artefacts)} in fresh processes, {args.rounds} rounds", flush=True
        )
        timed = alternate(
            artefacts,
            rounds=args.rounds,
            threads=threads,
            batch=args.batch,
            runs=args.runs,
            warmup=args.warmup,
        )
        if ref_onnx is not None:
            row["reference"]["onnxruntime"] = timed.pop("reference-onnx")
            row["reference"]["onnxruntime_from_pixels"] = timed.pop("reference-onnx-pixels")
            if args.reference_eager:
                row["reference"]["torch_eager"] = timed.pop("reference-torch")
        for runtime, entry in timed.items():
            entries[runtime] = entry
            if args.throughput_batch and args.throughput_batch > args.batch:
                tb = time_isolated(
                    artefacts[runtime][0],
                    threads=threads,
                    batch=args.throughput_batch,
                    runs=max(3, args.runs // 3),
                    warmup=1,
                )
                entry["throughput_img_s"] = round(
                    args.throughput_batch * 1000.0 / tb["latency"]["median_ms"], 2
                )
    ref_ort = (row.get("reference") or {}).get("onnxruntime", {}).get("latency", {}).get("median_ms")
    ref_rounds = (
        (row.get("reference") or {}).get("onnxruntime", {}).get("latency", {}).get("round_medians_ms")
    )
    ref_pixels = (row.get("reference") or {}).get("onnxruntime_from_pixels", {}).get("latency", {})
    for entry in (row.get("reference") or {}).values():
        if ref_ort and isinstance(entry, dict) and "latency" in entry:
            entry["ratio_vs_ref_ort"] = round(entry["latency"]["median_ms"] / ref_ort, 3)
    for runtime in args.runtimes:
        entry = entries[runtime]
        row["runtimes"][runtime] = entry
        if "skipped" in entry:
            print(f"  {row['level']} {runtime:<20} skipped: {entry['skipped']}", flush=True)
            continue
        lat = entry["latency"]
        entry["x_floor"] = round(lat["median_ms"] / row["floor_ms"], 2)
        if args.throughput_batch and args.throughput_batch > args.batch:
            entry["throughput_batch"] = args.throughput_batch
        if ref_ort:
            entry["ratio_vs_ref_ort"] = round(lat["median_ms"] / ref_ort, 3)
            entry.update(paired_ratios(lat, ref_rounds, ref_pixels))
        print(
            f"  {row['level']} {runtime:<20} {lat['median_ms']:8.1f} ms median  p90 {lat['p90_ms']:7.1f}  "
            f"({entry['x_floor']}× floor{_ratio_text(entry) if ref_ort else ''}; "
            f"{entry['process']} process)",
            flush=True,
        )
    return row


def _ratio_text(entry: dict) -> str:
    text = f", {entry['ratio_vs_ref_ort']}× ref ORT"
    if "ratio_vs_ref_ort_paired" in entry:
        text += f" (per round {entry['ratio_vs_ref_ort_paired']}× median)"
    if "ratio_vs_ref_ort_from_pixels" in entry:
        text += f", {entry['ratio_vs_ref_ort_from_pixels']}× ref ORT from pixels"
    return text


def paired_ratios(ours: dict, ref_rounds: list | None, ref_pixels: dict) -> dict:
    """Ours / the reference's ONNX Runtime round by round (the two ran back to back in each round,
    so a spell of load slows both): the median and range of the per-round ratios, and the ratio
    of medians against the reference timed from pixels (normalising and transposing as its users
    must; our files do that inside the graph)."""
    import statistics

    out = {}
    rounds = ours.get("round_medians_ms")
    if rounds and ref_rounds and len(rounds) == len(ref_rounds):
        ratios = [a / b for a, b in zip(rounds, ref_rounds)]
        out["ratio_vs_ref_ort_paired"] = round(statistics.median(ratios), 3)
        out["ratio_vs_ref_ort_rounds"] = [round(r, 3) for r in ratios]
    if ref_pixels.get("median_ms"):
        out["ratio_vs_ref_ort_from_pixels"] = round(ours["median_ms"] / ref_pixels["median_ms"], 3)
    return out


def load_reference(level: str, args):
    """The reference's model for `level` with trained-looking BatchNorms, or None (printed why)."""
    from evaluation.reference import ReferenceUnavailableError, load_reference_model, realistic_batchnorm

    try:
        model, _ = load_reference_model(args.reference, level)
    except ReferenceUnavailableError as exc:
        print(f"  {level} reference skipped: {exc}")
        return None
    realistic_batchnorm(model)
    return model


def bench_reference(model, level: str, size: int, workdir: Path) -> tuple[dict, Path | None]:
    """The reference's ONNX export, to be timed in a fresh process beside ours (its eager run too)."""
    from evaluation.reference import export_reference_onnx

    if model is None:
        return {"skipped": "the reference could not be loaded (see above)"}, None
    onnx_path = export_reference_onnx(model, (size, size), workdir / f"reference_{level}_{size}.onnx")
    return {}, onnx_path


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
            reference = load_reference(model.config.name, args) if args.reference else None
            if reference is not None and not models:
                from evaluation.reference import reference_state_dict

                # the same weights as the reference: both ONNX files compute the same numbers
                ke.load_torch_weights(model, reference_state_dict(reference))
            elif not models:
                size = args.input_size or model.config.input_size
                timing_weights(model, (size, size))
            print(f"{model.config.name} at {args.input_size or model.config.input_size}:", flush=True)
            rows.append(bench_level(model, args, threads, args.workdir, gflops, reference))
            if args.json:  # finished levels survive an interrupted run
                args.json.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(args.json, {"machine": info, "threads": threads, "levels": rows}, indent=1)
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
        "rounds": args.rounds,
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
