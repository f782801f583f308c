"""The reference's training step, timed in a fresh process: its model, its loss code, Adam.

    python -m evaluation.benchmark.train_reference CHECKOUT LEVEL [--batch-size 2] [--steps 5]
        [--warmup 2] [--threads N] [--input-size R]

`python -m evaluation.benchmark train --reference CHECKOUT` runs this beside our own step,
interleaved. The batch is ours (`evaluation.benchmark.train.synthetic_batch`: the same
pixels, heatmaps, masks and joint indices), laid out as the reference's data loader gives it
(NCHW images normalised with the ImageNet mean and std, one heatmap/mask/joints entry per
output). One step is what its `core.trainer.do_train` does: forward, `MultiLossFactory`
(heatmap MSE at both outputs, associative-embedding push/pull at the quarter one), the sum of
the batch means, backward, and its optimiser (`utils.utils.get_optimizer`, Adam at the config's
LR). Denormal numbers are flushed to zero, as TensorFlow does. Every parameter is trained, as ours are; the authors' trainer additionally freezes the
backbone (`model.module.features`), which would time less work than ours.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def reference_batch(batch_size: int, size: int, num_joints: int, seed: int = 0):
    """Our synthetic batch in the reference's layout: (images, [heatmaps], [masks], [joints]) tensors."""
    import torch

    from evaluation.benchmark.train import synthetic_batch

    images, t = synthetic_batch(batch_size, size, num_joints, seed=seed)
    x = torch.from_numpy(((images / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2).copy())
    heatmaps = [
        torch.from_numpy(t[k].transpose(0, 3, 1, 2).copy()) for k in ("heatmaps_quarter", "heatmaps_half")
    ]
    masks = [torch.from_numpy(t[k]) for k in ("mask_quarter", "mask_half")]
    joints = torch.from_numpy(t["joints"].astype(np.int64))
    return x, heatmaps, masks, [joints, joints]


def reference_step_seconds(
    checkout: str | Path,
    level: str,
    *,
    batch_size: int = 2,
    input_size: int | None = None,
    steps: int = 5,
    warmup: int = 2,
    threads: int | None = None,
    num_joints: int = 17,
) -> dict:
    """Seconds per training step of the reference (median over `steps`, after `warmup`)."""
    import torch

    from evaluation.reference import load_reference_config
    from keras_ehrnet.threads import available_cores

    torch.set_num_threads(threads or available_cores())
    # TensorFlow (oneDNN) flushes denormal numbers to zero; PyTorch does not by default, and the
    # released initialisation (std 0.001) leaves activations near 1e-11, where its step ran 27×
    # slower (110 s against 4 s for ours at H-4 on the Xeon). Same arithmetic mode for both.
    torch.set_flush_denormal(True)
    cfg = load_reference_config(checkout, level, num_joints)
    from core.loss import MultiLossFactory
    from models.pose_higher_hrnet import get_pose_net
    from utils.utils import get_optimizer

    size = int(input_size or cfg.DATASET.INPUT_SIZE)
    model = get_pose_net(cfg, is_train=False)
    model.train()
    loss_factory = MultiLossFactory(cfg)
    optimizer = get_optimizer(cfg, model)
    images, heatmaps, masks, joints = reference_batch(batch_size, size, num_joints)

    def step() -> float:
        outputs = model(images)
        heat, push, pull = loss_factory(outputs, heatmaps, masks, joints)
        loss = 0
        for idx in range(cfg.LOSS.NUM_STAGES):
            for term in (heat[idx], push[idx], pull[idx]):
                if term is not None:
                    loss = loss + term.mean(dim=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(steps):
        t0 = time.perf_counter()
        last = step()
        seconds.append(time.perf_counter() - t0)
    median = statistics.median(seconds)
    return {
        "level": level,
        "input_size": size,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "step_seconds_median": median,
        "step_seconds": seconds,
        "images_per_sec": batch_size / median,
        "final_loss": last,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.benchmark.train_reference")
    p.add_argument("checkout", type=Path)
    p.add_argument("level")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--input-size", type=int)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    from evaluation.reference import ReferenceUnavailableError

    try:
        result = reference_step_seconds(
            args.checkout,
            args.level,
            batch_size=args.batch_size,
            input_size=args.input_size,
            steps=args.steps,
            warmup=args.warmup,
            threads=args.threads,
        )
    except ReferenceUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def reference_round(args: argparse.Namespace, level: str, size: int, threads: int) -> dict:
    """One timing of the reference's training step in a fresh process (no TensorFlow pools there)."""
    import subprocess

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


def compare_levels(args: argparse.Namespace, measure_throughput) -> list[dict]:
    """Per level: our step (`measure_throughput`, this process) then the reference's (fresh process), --rounds times."""
    from keras_ehrnet.metrics.benchmarking import configure_threads

    threads = configure_threads(args.threads)
    rows = []
    for level in args.levels:
        ours, ref = [], []
        for _ in range(args.rounds):
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
            ref.append(reference_round(args, level, ours[-1]["input_size"], threads))
            print(
                f"{level:>6} {ours[-1]['input_size']:>6} ours {ours[-1]['step_seconds_median']:.2f} s/step, "
                f"reference {ref[-1]['step_seconds_median']:.2f} s/step (fresh process)",
                flush=True,
            )
        ours_s = statistics.median(r["step_seconds_median"] for r in ours)
        ref_s = statistics.median(r["step_seconds_median"] for r in ref)
        row = dict(ours[-1])
        row.update(
            threads=threads,
            step_seconds_median=ours_s,
            images_per_sec=args.batch_size / ours_s,
            reference_step_seconds_median=ref_s,
            reference_images_per_sec=args.batch_size / ref_s,
            ratio_time_per_image_vs_reference=round(ours_s / ref_s, 3),
            rounds={
                "ours_step_seconds": [r["step_seconds_median"] for r in ours],
                "reference_step_seconds": [r["step_seconds_median"] for r in ref],
            },
            reference=ref[-1],
        )
        print(
            f"{level}: {row['ratio_time_per_image_vs_reference']}× the reference's time per image "
            f"(batch {args.batch_size}, {threads} threads, median of {args.rounds} rounds)",
            flush=True,
        )
        rows.append(row)
    return rows
