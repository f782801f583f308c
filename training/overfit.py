"""Overfit a small real keypoint set and score COCO AP on it before and after (evidence it learns).

    python -m training.overfit --out runs/overfit    # H-4 at 256 on coco-mini, ≤ 30 min, AP every 60 epochs

Writes OUT/metrics.json (AP before/after, epochs, images/s), OUT/loss.png, OUT/history.json and
the training workdir OUT/run (final.keras, checkpoints, TensorBoard).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# the real images beside the repository (../shared/data/coco-mini), as in the project layout
COCO_MINI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco-mini"
AUGMENT = {
    "none": None,  # the library default: keras_ehrnet.train.overfit.NO_AUGMENTATION
    "flip": {"max_rotation": 0.0, "min_scale": 1.0, "max_scale": 1.0, "max_translate": 0.0, "flip_prob": 0.5},
    # the test-time scale, shifted so that people beyond the centred square are seen too
    "shift": {
        "max_rotation": 0.0,
        "min_scale": 1.0,
        "max_scale": 1.0,
        "max_translate": 40.0,
        "flip_prob": 0.5,
    },
    "light": {
        "max_rotation": 10.0,
        "min_scale": 0.8,
        "max_scale": 1.25,
        "max_translate": 20.0,
        "flip_prob": 0.5,
    },
    "paper": {},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.overfit", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--ann", type=Path, default=COCO_MINI / "annotations" / "person_keypoints_train2017.json")
    p.add_argument("--images", type=Path, default=COCO_MINI / "train2017")
    p.add_argument("--level", default="H-4")
    p.add_argument(
        "--input-size",
        type=int,
        default=256,
        help="R, the input size: R×R letterboxed (--view whole) or short side R (--view crop) (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="train this many epochs (default: as many as --minutes allows); the LR steps ×0.1 at "
        "--lr-milestones of the epochs, or of the minutes when no --epochs",
    )
    p.add_argument(
        "--lr-milestones",
        type=float,
        nargs="+",
        default=[0.88, 0.96],
        metavar="FRACTION",
        help="where the LR steps ×0.1 each time, as fractions of the epochs or minutes (default: %(default)s)",
    )
    p.add_argument(
        "--minutes", type=float, default=30.0, help="training time budget (0: none, needs --epochs)"
    )
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--augment", choices=sorted(AUGMENT), default="none", help="augmentation ranges")
    p.add_argument(
        "--val-every", type=int, default=60, help="also score AP every N epochs (0: only at the end)"
    )
    p.add_argument(
        "--view",
        choices=("whole", "crop"),
        default="whole",
        help="whole: each image letterboxed into R×R, scored at that fixed input; crop: the centred "
        "square at short side R, scored at short side R (people outside the square never seen)",
    )
    p.add_argument(
        "--hr-init",
        choices=("released", "he"),
        default="he",
        help="HR part's initialisation: He like the backbone (learns from scratch in about half the steps) "
        "or the released code's N(0, 0.001)",
    )
    p.add_argument(
        "--drop-connect",
        type=float,
        default=0.0,
        metavar="RATE",
        help="the backbone's stochastic depth in training (released recipe: 0.2; default: %(default)s, "
        "no regulariser when the point is to memorise)",
    )
    p.add_argument("--no-flip-test", action="store_true")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any training config value"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from keras_ehrnet.train import ConfigError
    from keras_ehrnet.train.config import parse_override
    from keras_ehrnet.train.overfit import check_lr_milestones, overfit

    if args.epochs is None and not args.minutes:
        print("error: --minutes 0 needs --epochs", file=sys.stderr)
        return 2
    try:
        check_lr_milestones(args.lr_milestones)
    except ValueError:
        print(
            f"error: --lr-milestones must rise strictly, each between 0 and 1, got {args.lr_milestones}",
            file=sys.stderr,
        )
        return 2
    for path in (args.ann, args.images):
        if not path.exists():
            print(f"error: not found: {path}", file=sys.stderr)
            return 2
    try:
        metrics = overfit(
            args.ann,
            args.images,
            args.out,
            level=args.level,
            input_size=args.input_size,
            batch_size=args.batch_size,
            epochs=args.epochs,
            minutes=args.minutes or None,
            learning_rate=args.lr,
            augment=AUGMENT[args.augment],
            overrides=dict(parse_override(s) for s in args.set),
            flip_test=not args.no_flip_test,
            val_every=args.val_every,
            progress=not args.quiet,
            view=args.view,
            hr_init=args.hr_init,
            drop_connect_rate=args.drop_connect,
            lr_milestones=args.lr_milestones,
        )
    except (ConfigError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    shown = {
        k: metrics[k]
        for k in (
            "AP_before",
            "AP_after",
            "epochs_done",
            "steps",
            "train_minutes",
            "images_per_sec_median",
            "cpu_steal_frac",
        )
    }
    shown["cpu"] = f"{metrics['machine']['logical_cpus']} × {metrics['machine']['cpu_model']}"
    print(json.dumps(shown, indent=1))
    if metrics["cpu_warning"]:
        print(f"warning: {metrics['cpu_warning']}; compare step counts, not minutes", file=sys.stderr)
    print(f"written: {args.out / 'metrics.json'}, {args.out / 'loss.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
