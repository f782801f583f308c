"""Per-level profile: input size, parameters, GMACs and Keras CPU latency, beside the reference.

    python -m evaluation.profile [--levels H0 H-4] [--threads 2] [--runs 15] [--json out.json]
        [--reference PATH/TO/EfficientHRNet]   # also time the authors' PyTorch model in this run

Parameters and GMACs are shown three ways: ours, the released PyTorch code's (measured facts in
keras_ehrnet/reference_facts) and the paper's Table 3. The code is what the released weights fit;
the paper's figures are higher (e.g. H0: 19.7 M parameters in the code, 23.3 M in the paper).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from keras_ehrnet.fileio import atomic_write_json
from keras_ehrnet.models.scaling import PAPER_FACTS, PRESET_NAMES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m evaluation.profile", description=__doc__.split("\n")[0])
    p.add_argument("--levels", nargs="+", default=list(PRESET_NAMES), help="levels (H0 … H-4 or φ)")
    p.add_argument(
        "--threads", type=int, default=None, help="TensorFlow intra-op threads (default: all cores)"
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=15, help="timed runs per level (at least 10)")
    p.add_argument("--input-size", type=int, default=None, help="override every level's native resolution")
    p.add_argument("--no-latency", action="store_true", help="sizes only")
    p.add_argument("--json", type=Path, help="write the table as JSON")
    p.add_argument(
        "--reference",
        type=Path,
        help="checkout of TeCSAR-UNCC/EfficientHRNet: time its PyTorch model in the same run (needs torch, yacs)",
    )
    args = p.parse_args(argv)
    if args.runs < 10 and not args.no_latency:
        p.error(f"--runs must be at least 10 for a stable median, got {args.runs}")
    return args


def profile_level(level: str, args, threads: int) -> dict:
    import keras_ehrnet as ke
    from keras_ehrnet.metrics.benchmarking import keras_infer_fn, time_callable
    from keras_ehrnet.reference_facts import load_model_table

    model = ke.build_model(level)
    cfg = model.config
    size = args.input_size or cfg.input_size
    row = {
        "level": cfg.name,
        "phi": cfg.phi,
        "input_size": size,
        "params": int(sum(int(w.numpy().size) for w in model.trainable_weights)),
        "gmacs": round(ke.count_macs(model, size) / 1e9, 3),
    }
    ref = load_model_table()["models"].get(cfg.name)
    if ref is not None and size == ref["input_size"]:
        row["ref_params"] = ref["params"]
        row["ref_gmacs"] = round(ref["conv_macs"]["total"] / 1e9, 3)
        row["ref_torch_eager_ms"] = ref["torch_eager"]["median_ms"]
        row["ref_onnxruntime_ms"] = ref["onnx"]["ort_opset17"]["latency"]["median_ms"]
    paper = PAPER_FACTS.get(cfg.name)
    if paper:
        row["paper_params_m"] = paper["params_m"]
        row["paper_gmacs"] = paper["gflops"]
    if not args.no_latency:
        from keras_ehrnet.metrics.benchmarking import timing_weights
        from keras_ehrnet.models.folding import fold_batchnorm

        # a fresh init computes in denormals (slow on CPUs); a trained model does not
        timing_weights(model, (size, size))
        stats = time_callable(keras_infer_fn(model, (size, size)), warmup=args.warmup, runs=args.runs)
        row["keras_ms"] = stats.as_dict()
        folded = time_callable(
            keras_infer_fn(fold_batchnorm(model), (size, size)), warmup=args.warmup, runs=args.runs
        )
        row["keras_folded_ms"] = folded.as_dict()
        row["threads"] = threads
        row["compared"] = "keras-folded" if folded.median_ms < stats.median_ms else "keras"
        stats = min(stats, folded, key=lambda s: s.median_ms)  # the faster Keras graph is compared
        if "ref_torch_eager_ms" in row:
            row["ratio_vs_ref_torch_eager"] = round(stats.median_ms / row["ref_torch_eager_ms"], 3)
        if args.reference:
            row.update(measure_reference(cfg.name, size, args, threads, stats.median_ms))
    return row


def measure_reference(level: str, size: int, args, threads: int, ours_ms: float) -> dict:
    """PyTorch eager latency of the released model in this run, or why it was skipped."""
    from evaluation.reference import ReferenceUnavailableError, load_reference_model, torch_infer_fn
    from keras_ehrnet.metrics.benchmarking import time_callable

    try:
        model, _ = load_reference_model(args.reference, level)
    except ReferenceUnavailableError as exc:
        return {"ref_here_skipped": str(exc)}
    stats = time_callable(
        torch_infer_fn(model, (size, size), threads=threads), warmup=args.warmup, runs=args.runs
    )
    return {
        "ref_here_torch_eager_ms": stats.as_dict(),
        "ratio_vs_ref_here": round(ours_ms / stats.median_ms, 3),
    }


def format_table(rows: list[dict]) -> str:
    head = (
        "| level | input | params (ours / code / paper) | GMACs (ours / code / paper) "
        "| Keras ms (median, p90) | Keras BN-folded ms | ref PyTorch eager ms (facts) | ratio "
        "| ref PyTorch eager ms (this run) | ratio |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        params = f"{r['params'] / 1e6:.3f} M / " + (
            f"{r['ref_params'] / 1e6:.3f} M" if "ref_params" in r else "–"
        )
        params += f" / {r['paper_params_m']} M" if "paper_params_m" in r else " / –"
        gmacs = f"{r['gmacs']:.3f} / {r.get('ref_gmacs', '–')} / {r.get('paper_gmacs', '–')}"
        k = r.get("keras_ms")
        lat = f"{k['median_ms']:.1f}, {k['p90_ms']:.1f}" if k else "–"
        f = r.get("keras_folded_ms")
        lat += f" | {f['median_ms']:.1f}, {f['p90_ms']:.1f}" if f else " | –"
        lines.append(
            f"| {r['level']} | {r['input_size']} | {params} | {gmacs} | {lat} | "
            f"{r.get('ref_torch_eager_ms', '–')} | {r.get('ratio_vs_ref_torch_eager', '–')} | "
            f"{r['ref_here_torch_eager_ms']['median_ms'] if 'ref_here_torch_eager_ms' in r else '–'} | "
            f"{r.get('ratio_vs_ref_here', '–')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from keras_ehrnet.metrics.benchmarking import configure_threads, machine_info
    from keras_ehrnet.models.scaling import parse_level

    try:
        levels = [parse_level(level)[0] if isinstance(level, str) else level for level in args.levels]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    threads = configure_threads(args.threads)
    info = machine_info()
    print(
        f"{info['cpu_model']}, {info['logical_cpus']} logical CPUs, TensorFlow {info.get('tensorflow')}, "
        f"{threads} intra-op threads; batch 1, {args.warmup} warm-up + {args.runs} timed runs"
    )
    rows = []
    for level in levels:
        row = profile_level(level, args, threads)
        rows.append(row)
        k = row.get("keras_ms")
        extra = (
            f", Keras {k['median_ms']:.1f} ms median (foreign CPU {k['foreign_cpu_frac']}, steal {k['cpu_steal_frac']})"
            if k
            else ""
        )
        if "ref_here_torch_eager_ms" in row:
            extra += f", reference PyTorch eager {row['ref_here_torch_eager_ms']['median_ms']:.1f} ms"
        elif "ref_here_skipped" in row:
            extra += f" (reference skipped: {row['ref_here_skipped']})"
        print(f"{row['level']}: {row['params']:,} params, {row['gmacs']} GMACs{extra}", flush=True)
    print()
    print(format_table(rows))
    print(
        "\ncode = the authors' released PyTorch code (measured facts; its latency was measured on a "
        "2-core AMD EPYC with torch 2.13, 2 threads); paper = Table 3 (its 'FLOPs' are multiply-adds)."
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, {"machine": info, "threads": threads, "levels": rows}, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
