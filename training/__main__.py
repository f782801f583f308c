"""Train EfficientHRNet: `python -m training --config training/configs/H-4.yaml --train-ann A --train-images D`.

Flags override the config file; `--set section.key=value` reaches every other setting.
Exit status: 0 finished; 2 bad configuration, missing or unusable files (also an unwritable
--workdir, a --resume without a checkpoint, and data that fails mid-run); 1 any other error
mid-run (a full disk …); 3 non-finite loss; 128 + signal number when stopped by SIGTERM /
Ctrl-C. Errors mid-run write a checkpoint of the last finished step first: `--resume` continues.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# flag → config key
FLAGS: dict[str, str] = {
    "train_ann": "data.train_ann",
    "train_images": "data.train_images",
    "val_ann": "data.val_ann",
    "val_images": "data.val_images",
    "input_size": "data.input_size",
    "batch_size": "data.batch_size",
    "level": "model.level",
    "num_joints": "model.num_joints",
    "epochs": "train.epochs",
    "steps_per_epoch": "train.steps_per_epoch",
    "workdir": "train.workdir",
    "init": "train.init",
    "backbone_weights": "model.backbone_weights",
    "seed": "train.seed",
    "mixed_precision": "train.mixed_precision",
    "strategy": "train.strategy",
    "lr": "optimizer.learning_rate",
    "weight_decay": "optimizer.weight_decay",
    "warmup_epochs": "optimizer.warmup_epochs",
    "clip_norm": "optimizer.clip_norm",
    "ema_momentum": "optimizer.ema_momentum",
    "val_every": "validation.every_epochs",
    "checkpoint_every": "checkpoint.every_steps",
}
SWITCHES: dict[str, str] = {
    "resume": "train.resume",
    "freeze_backbone": "train.freeze_backbone",
    "sync_batchnorm": "train.sync_batchnorm",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train EfficientHRNet on COCO or custom COCO-format keypoints (paper §4.2.2 recipe).",
    )
    parser.add_argument("--config", type=Path, help="YAML config (training/configs/H0.yaml … H-4.yaml)")
    parser.add_argument("--train-ann", help="training annotations (COCO keypoints JSON)")
    parser.add_argument("--train-images", help="training image folder")
    parser.add_argument("--val-ann", help="validation annotations, for periodic COCO AP")
    parser.add_argument("--val-images", help="validation image folder")
    parser.add_argument("--input-size", type=int, help="training resolution R (multiple of 32)")
    parser.add_argument("--batch-size", type=int, help="images per replica (global batch = this × replicas)")
    parser.add_argument("--level", help='model level, "H0" … "H-4" or a coefficient φ')
    parser.add_argument(
        "--num-joints", type=int, help="keypoints per person (default: from the training annotations)"
    )
    parser.add_argument("--epochs", type=int, help="total epochs (the LR steps stay at optimizer.lr_steps)")
    parser.add_argument("--steps-per-epoch", type=int, help="default: one pass over the training images")
    parser.add_argument("--workdir", help="checkpoints, logs and models go here")
    parser.add_argument("--init", help="start from a .keras / .weights.h5 file or a training workdir")
    parser.add_argument(
        "--backbone-weights",
        help='start the backbone from ImageNet: "imagenet" (H0) or a weights file (.h5/.keras/.pth); '
        "--init is loaded over it",
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--mixed-precision", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--strategy", choices=["auto", "default", "one_device", "mirrored", "multi_worker"])
    parser.add_argument("--lr", type=float, help="base learning rate")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--warmup-epochs", type=float)
    parser.add_argument("--clip-norm", type=float, help="clip the global gradient norm")
    parser.add_argument(
        "--ema-momentum",
        type=float,
        help="keep a moving average of the weights (e.g. 0.99) for validation and saving",
    )
    parser.add_argument("--val-every", type=int, help="validate every N epochs")
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        help="checkpoint every N steps (and at the end of every checkpoint.every_epochs epochs)",
    )
    parser.add_argument(
        "--resume", action="store_true", default=None, help="continue from the workdir's last checkpoint"
    )
    parser.add_argument(
        "--freeze-backbone", action="store_true", default=None, help="train only the HR part and heads"
    )
    parser.add_argument(
        "--sync-batchnorm", action="store_true", default=None, help="BatchNorm statistics over all replicas"
    )
    parser.add_argument(
        "--flip-pairs",
        type=_flip_pairs_arg,
        help='left/right keypoints swapped by flips, "l_eye:r_eye,l_paw:r_paw" (names or 0-based '
        "indices; default: inferred from left_*/right_* names)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log files)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config value, e.g. data.sigma=2 (repeatable)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def _flip_pairs_arg(text: str) -> list[list[int | str]]:
    from keras_ehrnet.keypoints import parse_flip_pairs

    try:
        return parse_flip_pairs(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The config overrides the command line asks for ({"section.key": value})."""
    from keras_ehrnet.train.config import parse_override

    out = {}
    for flag, key in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            out[key] = value
    for flag, key in SWITCHES.items():
        if getattr(args, flag):
            out[key] = True
    if args.flip_pairs is not None:
        out["data.flip_pairs"] = args.flip_pairs
    if args.no_progress:
        out["logging.progress"] = False
    for text in args.set:
        key, value = parse_override(text)
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from keras_ehrnet.data import DatasetError
    from keras_ehrnet.fileio import OutputPathError
    from keras_ehrnet.train import (
        ConfigError,
        NonFiniteLossError,
        TrainConfig,
        TrainingFailedError,
        apply_overrides,
        load_config,
        train,
    )
    from keras_ehrnet.train.config import resolve_num_joints
    from keras_ehrnet.weights.pretrained import BackboneWeightsError

    try:
        config = load_config(args.config) if args.config else TrainConfig()
        config = apply_overrides(config, overrides_from_args(args), source="command line")
        if args.print_config:
            print(config.to_yaml())
            return 0
        result = train(resolve_num_joints(config))
    except (
        ConfigError,
        DatasetError,
        BackboneWeightsError,
        FileNotFoundError,
        FileExistsError,
        OutputPathError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except TrainingFailedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if err.input_error else 1
    except KeyboardInterrupt:
        print("error: interrupted by a second Ctrl-C; the last checkpoint is kept", file=sys.stderr)
        return 128 + 2
    if result.interrupted:
        print(
            f"interrupted; resume with --resume --workdir {result.workdir} (checkpoint {result.checkpoint})"
        )
        return 128 + int(result.signal or 15)
    print(f"done: {result.epoch} epochs, {result.step} steps; final model {result.final_model}")
    if result.best_ap is not None:
        print(f"best validation AP {result.best_ap:.4f}: {result.best_model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
