"""Compare overfit runs by training step or images seen: a table and one PNG of their AP curves.

    python -m training.compare runs/overfit runs/longer --out ap_curves.png
    python -m training.compare runs/batch4 runs/batch2 --by images --out ap_by_images.png

Each RUN is a folder written by `python -m training.overfit` (or its metrics.json). Steps or
images, not minutes, are compared, so runs made while the machine was shared still line up;
`--by images` also lines up runs with different batch sizes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.compare", description=__doc__.split("\n")[0])
    p.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN", help="overfit output folders or metrics.json files"
    )
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--labels", nargs="+", default=None, help="one label per run (default: folder names)")
    p.add_argument(
        "--by",
        choices=("step", "images"),
        default="step",
        help="x axis: training step, or images seen (step × batch; for runs with different batch sizes)",
    )
    p.add_argument(
        "--target", type=float, default=None, help="AP to draw as a dashed line (default: the overfit target)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from keras_ehrnet.train.overfit import (
        AP_AXES,
        OVERFIT_AP_TARGET,
        ap_points,
        load_overfit_metrics,
        plot_ap_curves,
    )

    if args.labels is not None and len(args.labels) != len(args.runs):
        print(f"error: {len(args.labels)} labels for {len(args.runs)} runs", file=sys.stderr)
        return 2
    labels = args.labels or [(r.parent if r.suffix == ".json" else r).name for r in args.runs]
    curves = {}
    for label, run in zip(labels, args.runs):
        try:
            metrics = load_overfit_metrics(run)
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        try:
            curves[label] = ap_points(metrics, by=args.by)
        except ValueError as err:
            print(f"error: {run}: {err}", file=sys.stderr)
            return 2
        points = "  ".join(f"{x}: {ap:.3f}" for x, ap in curves[label])
        steal = metrics.get("cpu_steal_frac")
        print(
            f"{label}: {metrics['steps']} steps, {metrics.get('train_minutes', float('nan')):.1f} min, "
            f"LR {metrics.get('lr_steps', '?')}"
            + (f", steal {steal:.2f}" if steal is not None else "")
            + f"\n  AP by {AP_AXES[args.by].removeprefix('training ')}  {points}"
        )
    target = OVERFIT_AP_TARGET if args.target is None else args.target
    print(f"written: {plot_ap_curves(curves, args.out, ap_target=target, xlabel=AP_AXES[args.by])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
