"""Convert a released PyTorch checkpoint into a `.keras` model.

    python -m conversion.from_torch CHECKPOINT.pth [--level H-2] [--num-joints 17]
        [--allow-missing-head] [--backbone-only] --out model.keras

Works without torch: the checkpoint is read by keras_ehrnet.weights.torch_import.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from keras_ehrnet.fileio import atomic_save_model


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m conversion.from_torch", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path, help="PyTorch state_dict (.pth/.pt/.pth.tar)")
    p.add_argument("--level", help="H0, H-1 … H-4 (B0 … B-4 for classifiers); guessed from shapes if omitted")
    p.add_argument("--kind", choices=["pose", "classifier"], help="guessed from the keys if omitted")
    p.add_argument(
        "--num-joints", type=int, default=None, help="keypoints of the Keras model (default: checkpoint's)"
    )
    p.add_argument("--num-classes", type=int, default=None, help="classifier classes (default: checkpoint's)")
    p.add_argument("--no-tag-per-joint", action="store_true", help="one tag channel instead of one per joint")
    p.add_argument(
        "--allow-missing-head",
        action="store_true",
        help="keep initial head weights where the checkpoint's head is absent or for another number of keypoints",
    )
    p.add_argument(
        "--backbone-only",
        action="store_true",
        help="load only the backbone (e.g. an ImageNet classifier checkpoint into a pose model)",
    )
    p.add_argument("--out", type=Path, required=True, help="output .keras file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out.suffix != ".keras":
        print(f"error: --out must end in .keras, got {args.out}", file=sys.stderr)
        return 2
    import keras_ehrnet as ke
    from keras_ehrnet.weights.torch_import import guess_level, load_torch_weights, read_torch_checkpoint

    try:
        state = read_torch_checkpoint(args.checkpoint)
        level, kind = (args.level, args.kind)
        if level is None or kind is None:
            guessed_level, guessed_kind = guess_level(state)
            level, kind = level or guessed_level, kind or guessed_kind
            print(f"checkpoint looks like {kind} {guessed_level}")
        if kind == "pose":
            tag_key = "final_layers.1.weight"
            joints = args.num_joints or (state[tag_key].shape[0] if tag_key in state else 17)
            model = ke.build_model(level, num_joints=joints, tag_per_joint=not args.no_tag_per_joint)
        else:
            head = state.get("classifier.1.weight")
            classes = args.num_classes or (head.shape[0] if head is not None else 1000)
            model = ke.build_backbone_classifier(level, num_classes=classes)
        report = load_torch_weights(
            model, state, allow_missing_head=args.allow_missing_head, backbone_only=args.backbone_only
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    atomic_save_model(model, args.out)
    print(f"wrote {args.out} ({model.name}, {model.count_params():,} weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
