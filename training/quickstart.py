"""The whole product on the embedded sample in one command (≤ 10 minutes on a 2-core CPU).

    python -m training.quickstart [--out runs/quickstart] [--minutes 6]

Trains H-4 at 192 on the ten sample images shipped with the package, scores COCO AP on them,
exports a TFLite model, predicts with it on the sample images and draws the skeletons. Writes
OUT/model.keras, OUT/model.tflite, OUT/metrics.json, OUT/loss.png and OUT/predictions/*.jpg.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.quickstart", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="output folder")
    p.add_argument("--level", default="H-4", help="model level (default H-4, the smallest)")
    p.add_argument("--input-size", type=int, default=192, help="training and test input size")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument(
        "--epochs", type=int, default=150, help="at most this many epochs (LR ×0.1 at 80 %% and 93 %%)"
    )
    p.add_argument("--minutes", type=float, default=6.0, help="training time cap (0: none)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.input_size % 32 or args.input_size <= 0:
        print(
            f"error: --input-size must be a positive multiple of 32, got {args.input_size}", file=sys.stderr
        )
        return 2
    from keras_ehrnet.train.quickstart import quickstart

    metrics = quickstart(
        args.out,
        level=args.level,
        input_size=args.input_size,
        batch_size=args.batch_size,
        epochs=args.epochs,
        minutes=args.minutes or None,
        learning_rate=args.lr,
        progress=not args.quiet,
    )
    files = metrics["files"]
    print()
    print(
        f"COCO AP on the sample: {metrics['AP']:.3f} (Keras), {metrics['AP_tflite']:.3f} (TFLite); "
        f"before training {metrics['AP_before']:.3f}; {metrics['epochs_done']} epochs in "
        f"{metrics['train_minutes']:.1f} min, {metrics['total_minutes']:.1f} min in all"
    )
    print(f"model       {files['model']}")
    print(f"TFLite      {files['tflite']}")
    print(f"metrics     {files['metrics']}")
    print(f"loss curve  {files['loss_plot']}")
    print(
        f"skeletons   {Path(files['annotated_images'][0]).parent}/ ({len(files['annotated_images'])} images)"
        if files["annotated_images"]
        else "skeletons   (no images drawn)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
