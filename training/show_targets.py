"""`python -m training.show_targets`: PNGs of augmented samples with their training targets.

python -m training.show_targets --ann A --images D --input-size 512 --out DIR [--n 8]
"""

from __future__ import annotations

import argparse
import sys

from keras_ehrnet.data.visualize import write_target_pngs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.show_targets", description=__doc__.split("\n")[0])
    p.add_argument("--ann", required=True, help="COCO-format keypoint annotation JSON")
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--input-size", type=int, default=512)
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--n", type=int, default=8, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", action="store_true", help="eval mode: no augmentation")
    args = p.parse_args(argv)
    paths = write_target_pngs(
        args.ann,
        args.images,
        args.out,
        input_size=args.input_size,
        n=args.n,
        seed=args.seed,
        training=not args.eval,
    )
    print(f"wrote {len(paths)} PNGs to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
