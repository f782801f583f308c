"""The whole product on the embedded sample in one command (≤ 10 minutes on a 2-core CPU).

    python -m training.quickstart [--out runs/quickstart]

Trains H-4 from random initialisation until it has memorised the ten sample images shipped with
the package (each letterboxed whole into 256×256), scores COCO AP on them, exports a TFLite model
at that size and scores it too, predicts with it and draws the people. Writes OUT/model.keras,
OUT/model.tflite, OUT/metrics.json, OUT/loss.png, OUT/compare.png and OUT/predictions/*.jpg.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from keras_ehrnet.train.quickstart import DRAW_MIN_SCORE, QUICKSTART_EPOCHS, QUICKSTART_SIZE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.quickstart", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="output folder")
    p.add_argument("--level", default="H-4", help="model level (default H-4, the smallest)")
    p.add_argument(
        "--input-size",
        type=int,
        default=QUICKSTART_SIZE,
        help="R: every image is letterboxed whole into R×R for training, scoring and export (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument(
        "--epochs",
        type=int,
        default=QUICKSTART_EPOCHS,
        help="epochs over the ten images (LR ×0.1 at 88 %% and 96 %%) (default: %(default)s)",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=8.75,
        help="cap on training time, so the whole run stays within 10 minutes on a slow 2-core CPU (0: none)",
    )
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument(
        "--draw-min-score",
        type=float,
        default=DRAW_MIN_SCORE,
        help="draw only people the model scores at least this (default: %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.input_size % 32 or args.input_size <= 0:
        print(
            f"error: --input-size must be a positive multiple of 32, got {args.input_size}", file=sys.stderr
        )
        return 2
    if args.epochs < 1 or args.batch_size < 1:
        print(
            f"error: --epochs and --batch-size must be ≥ 1, got {args.epochs} and {args.batch_size}",
            file=sys.stderr,
        )
        return 2
    from keras_ehrnet.fileio import OutputPathError
    from keras_ehrnet.train.quickstart import quickstart

    try:
        metrics = quickstart(
            args.out,
            level=args.level,
            input_size=args.input_size,
            batch_size=args.batch_size,
            epochs=args.epochs,
            minutes=args.minutes or None,
            learning_rate=args.lr,
            draw_min_score=args.draw_min_score,
            progress=not args.quiet,
        )
    except OutputPathError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    files = metrics["files"]
    size = f"{args.input_size}×{args.input_size}"
    print()
    print(f"COCO AP on the ten sample images, each letterboxed into {size}:")
    print(f"  Keras model   before training {metrics['AP_before']:.3f}   after {metrics['AP']:.3f}")
    print(
        f"  TFLite export after {metrics['AP_tflite']:.3f}   (difference {metrics['AP_tflite'] - metrics['AP']:+.3f})"
    )
    print(
        f"  {metrics['epochs_done']} epochs in {metrics['train_minutes']:.1f} min, "
        f"{metrics['total_minutes']:.1f} min in all"
    )
    print(
        "This model has memorised these ten images; it has not learnt to find people in general. "
        "Real accuracy needs COCO and pretrained weights: see docs/fine-tuning.md."
    )
    print(f"model       {files['model']}")
    print(f"TFLite      {files['tflite']}")
    print(f"metrics     {files['metrics']}")
    print(f"loss curve  {files['loss_plot']}")
    print(
        f"compare     {files['compare']}  (ground truth beside the export's people scoring ≥ {args.draw_min_score:g})"
    )
    print(
        f"skeletons   {Path(files['annotated_images'][0]).parent}/ ({len(files['annotated_images'])} images)"
        if files["annotated_images"]
        else "skeletons   (no images drawn)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
