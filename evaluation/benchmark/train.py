"""Training images per second per level, at each level's native resolution.

    python -m evaluation.benchmark train                       # H0 … H-4, batch 2, float32
    python -m evaluation.benchmark train --levels H-4 --batch-size 8 --mixed-precision mixed_bfloat16 --json out.json
    python -m evaluation.benchmark train --levels H-4 H0 --reference PATH/TO/EfficientHRNet --rounds 2

Times the full training step (forward, losses, backward, Adam update) on an in-memory batch,
so the figure is the network's. Run it on a quiet machine; the CPU count is printed with it.
With --reference, the authors' training step (their model, their loss code, Adam, the same
batch and threads; evaluation.benchmark.train_reference) is timed in a fresh process after
each of ours, --rounds times, and each level gets the ratio of our time per image to theirs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from keras_ehrnet.fileio import atomic_write_json

LEVELS = ("H0", "H-1", "H-2", "H-3", "H-4")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.benchmark train", description=__doc__.split("\n")[0]
    )
    p.add_argument("--levels", nargs="+", default=list(LEVELS))
    p.add_argument("--input-size", type=int, help="default: each level's native resolution")
    p.add_argument("--batch-size", type=int, default=2, help="images per step")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (tracing)")
    p.add_argument(
        "--mixed-precision", choices=["float32", "mixed_float16", "mixed_bfloat16"], default="float32"
    )
    p.add_argument(
        "--reference", type=Path, help="checkout of TeCSAR-UNCC/EfficientHRNet (needs torch, yacs)"
    )
    p.add_argument("--rounds", type=int, default=2, help="ours/reference alternations with --reference")
    p.add_argument("--threads", type=int, help="CPU threads for both (default: all cores)")
    p.add_argument("--json", type=Path, help="write the results here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import tensorflow as tf

    from keras_ehrnet.benchmarking import configure_threads, machine_info
    from keras_ehrnet.train.benchmark import measure_throughput

    gpus = tf.config.list_physical_devices("GPU")
    info = machine_info()
    device = (
        f"{len(gpus)} GPU(s)" if gpus else f"CPU, {info['logical_cpus']} logical CPUs ({info['cpu_model']})"
    )
    threads = configure_threads(args.threads)
    print(
        f"training throughput on {device}, batch {args.batch_size}, {args.mixed_precision}, {threads} threads"
    )
    print(f"{'level':>6} {'input':>6} {'img/s':>8} {'s/step':>8} {'1st step s':>11}")
    rows = []
    for level in args.levels:
        ours, ref = [], []
        for _ in range(args.rounds if args.reference else 1):
            ours.append(
                measure_throughput(
                    level,
                    input_size=args.input_size,
                    batch_size=args.batch_size,
                    steps=args.steps,
                    warmup=args.warmup,
                    mixed_precision=args.mixed_precision,
                )
            )
            row = ours[-1]
            print(
                f"{level:>6} {row['input_size']:>6} {row['images_per_sec']:>8.2f} {row['step_seconds_median']:>8.2f} "
                f"{row['first_step_seconds']:>11.1f}",
                flush=True,
            )
            if row["cpu_warning"]:
                print(f"warning: {level}: {row['cpu_warning']}", file=sys.stderr, flush=True)
            if args.reference:
                ref.append(reference_round(args, level, row["input_size"], threads))
                print(
                    f"{'ref':>6} {ref[-1]['input_size']:>6} {ref[-1]['images_per_sec']:>8.2f} "
                    f"{ref[-1]['step_seconds_median']:>8.2f}   (reference, fresh process)",
                    flush=True,
                )
        row = dict(ours[-1])
        if args.reference:
            ours_s = statistics.median(r["step_seconds_median"] for r in ours)
            ref_s = statistics.median(r["step_seconds_median"] for r in ref)
            row["rounds"] = {
                "ours_step_seconds": [r["step_seconds_median"] for r in ours],
                "reference_step_seconds": [r["step_seconds_median"] for r in ref],
            }
            row["reference"] = ref[-1]
            row["step_seconds_median"] = ours_s
            row["images_per_sec"] = args.batch_size / ours_s
            row["reference_step_seconds_median"] = ref_s
            row["ratio_time_per_image_vs_reference"] = round(ours_s / ref_s, 3)
            print(
                f"{level}: ours {ours_s:.2f} s/step, reference {ref_s:.2f} s/step (batch {args.batch_size}, "
                f"{threads} threads): {row['ratio_time_per_image_vs_reference']}× the reference's time per image",
                flush=True,
            )
        rows.append(row)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, {"device": device, "machine": info, "results": rows}, indent=1)
        print(f"written: {args.json}")
    return 0


def reference_round(args: argparse.Namespace, level: str, size: int, threads: int) -> dict:
    """One timing of the reference's training step in a fresh process (no TensorFlow pools there)."""
    cmd = [sys.executable, "-m", "evaluation.benchmark.train_reference", str(args.reference), level]
    cmd += ["--batch-size", str(args.batch_size), "--input-size", str(size), "--threads", str(threads)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: the reference's training step failed (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1])


if __name__ == "__main__":
    sys.exit(main())
