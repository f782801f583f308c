"""Training images per second per level, at each level's native resolution.

    python -m evaluation.benchmark train                       # H0 … H-4, batch 2, float32
    python -m evaluation.benchmark train --levels H-4 --batch-size 8 --mixed-precision mixed_bfloat16 --json out.json

Times the full training step (forward, losses, backward, Adam update) on an in-memory batch,
so the figure is the network's. Run it on a quiet machine; the CPU count is printed with it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from keras_ehrnet.fileio import atomic_write_json
from keras_ehrnet.metrics.benchmarking import CpuMeter, machine_info
from keras_ehrnet.models.scaling import get_config
from keras_ehrnet.train.config import config_from_dict
from keras_ehrnet.train.trainer import Trainer

LEVELS = ("H0", "H-1", "H-2", "H-3", "H-4")


def synthetic_batch(batch: int, size: int, num_joints: int, seed: int = 0):
    """One (images, targets) batch with the data pipeline's structure, for timing."""
    rng = np.random.default_rng(seed)
    q, h = size // 4, size // 2
    heat_q = np.zeros((batch, q, q, num_joints), np.float32)
    heat_h = np.zeros((batch, h, h, num_joints), np.float32)
    joints = np.zeros((batch, 30, num_joints, 2), np.int32)
    for b in range(batch):
        for p in range(3):
            ys, xs = rng.integers(0, q, (2, num_joints))
            heat_q[b, ys, xs, np.arange(num_joints)] = 1.0
            heat_h[b, 2 * ys, 2 * xs, np.arange(num_joints)] = 1.0
            joints[b, p, :, 0] = ys * q + xs
            joints[b, p, :, 1] = 1
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    targets = {
        "heatmaps_quarter": heat_q,
        "heatmaps_half": heat_h,
        "mask_quarter": np.ones((batch, q, q), np.float32),
        "mask_half": np.ones((batch, h, h), np.float32),
        "joints": joints,
    }
    return images, targets


def measure_throughput(
    level: str | float = "H-4",
    *,
    input_size: int | None = None,
    batch_size: int = 2,
    steps: int = 5,
    warmup: int = 2,
    mixed_precision: str = "float32",
    strategy: tf.distribute.Strategy | None = None,
    model_fn: Callable | None = None,
    num_joints: int = 17,
) -> dict[str, Any]:
    """Training images per second of one level (at its native resolution by default).

    Runs `warmup + steps` real training steps (the first includes tracing) on one repeated
    in-memory batch per replica and reports the median over the timed steps.
    """
    size = int(input_size or get_config(level).input_size)
    with tempfile.TemporaryDirectory() as workdir:
        config = config_from_dict(
            {
                "model": {"level": level, "num_joints": num_joints},
                "data": {"input_size": size, "batch_size": batch_size},
                "train": {
                    "epochs": 1,
                    "steps_per_epoch": warmup + steps,
                    "workdir": workdir,
                    "mixed_precision": mixed_precision,
                    "strategy": "default",
                },
                "checkpoint": {"every_steps": 10**9},
                "logging": {"progress": False, "every_steps": 10**9, "images_every_steps": 0},
            }
        )
        strategy = strategy or tf.distribute.get_strategy()
        global_batch = batch_size * strategy.num_replicas_in_sync
        images, targets = synthetic_batch(batch_size, size, num_joints)

        def dataset_fn(ctx, epoch):
            return tf.data.Dataset.from_tensors((images, targets)).repeat(warmup + steps)

        started = time.perf_counter()
        trainer = Trainer(config, strategy=strategy, model_fn=model_fn, dataset_fn=dataset_fn)
        trainer.save_models = False
        with CpuMeter() as meter:
            result = trainer.fit()
        total = time.perf_counter() - started
    rates = [row["images_per_sec"] for row in result.history[warmup:]]
    seconds = [global_batch / r for r in rates]
    return {
        "level": str(level),
        "input_size": size,
        "batch_size": global_batch,
        "replicas": strategy.num_replicas_in_sync,
        "mixed_precision": mixed_precision,
        "steps_timed": len(rates),
        "images_per_sec": float(np.median(rates)),
        "step_seconds_median": float(np.median(seconds)),
        "first_step_seconds": float(global_batch / result.history[0]["images_per_sec"]),
        "total_seconds": total,
        "final_loss": float(result.history[-1]["loss"]),
        "machine": machine_info(),
        **meter.result(),
        "cpu_warning": meter.warning(),
    }


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
    p.add_argument("--json", type=Path, help="write the results here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    gpus = tf.config.list_physical_devices("GPU")
    info = machine_info()
    device = (
        f"{len(gpus)} GPU(s)" if gpus else f"CPU, {info['logical_cpus']} logical CPUs ({info['cpu_model']})"
    )
    print(f"training throughput on {device}, batch {args.batch_size}, {args.mixed_precision}")
    print(f"{'level':>6} {'input':>6} {'img/s':>8} {'s/step':>8} {'1st step s':>11}")
    rows = []
    for level in args.levels:
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
