"""Training images per second per level, at each level's native resolution.

    python -m evaluation.benchmark train                       # H0 … H-4, batch 2, float32
    python -m evaluation.benchmark train --levels H-4 --batch-size 8 --mixed-precision mixed_bfloat16 --json out.json
    python -m evaluation.benchmark train --levels H-4 H0 --reference PATH/TO/EfficientHRNet --rounds 2

Times the full training step (forward, losses, backward, Adam update) on an in-memory batch,
so the figure is the network's. Run it on a quiet machine; the CPU count is printed with it.
With --reference, the authors' training step (their model, their loss code, Adam, the same
batch and threads) is timed in a fresh process after each of ours, --rounds times, and each
level gets the ratio of our time per image to theirs (evaluation.benchmark.train_reference).
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--threads", type=int, help="CPU threads for both with --reference (default: all cores)")
    p.add_argument("--json", type=Path, help="write the results here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import tensorflow as tf

    from keras_ehrnet.benchmarking import machine_info
    from keras_ehrnet.train.benchmark import measure_throughput

    gpus = tf.config.list_physical_devices("GPU")
    info = machine_info()
    device = (
        f"{len(gpus)} GPU(s)" if gpus else f"CPU, {info['logical_cpus']} logical CPUs ({info['cpu_model']})"
    )
    print(f"training throughput on {device}, batch {args.batch_size}, {args.mixed_precision}")
    print(f"{'level':>6} {'input':>6} {'img/s':>8} {'s/step':>8} {'1st step s':>11}")
    rows = []
    if args.reference:  # ours and the reference's step, interleaved, with their ratio
        from evaluation.benchmark.train_reference import compare_levels

        rows = compare_levels(args, measure_throughput)
    for level in args.levels if not args.reference else []:
        row = measure_throughput(
            level,
            input_size=args.input_size,
            batch_size=args.batch_size,
            steps=args.steps,
            warmup=args.warmup,
            mixed_precision=args.mixed_precision,
        )
        rows.append(row)
        print(
            f"{level:>6} {row['input_size']:>6} {row['images_per_sec']:>8.2f} {row['step_seconds_median']:>8.2f} "
            f"{row['first_step_seconds']:>11.1f}",
            flush=True,
        )
        if row["cpu_warning"]:
            print(f"warning: {level}: {row['cpu_warning']}", file=sys.stderr, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, {"device": device, "machine": info, "results": rows}, indent=1)
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
