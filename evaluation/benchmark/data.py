"""`python -m evaluation.benchmark data`: images per second through the training data pipeline.

    python -m evaluation.benchmark data --ann A --images D --input-size 512 --batch-size 8 \
        --batches 30 [--reference ../EfficientHRNet] [--json out.json]
"""

from __future__ import annotations

import argparse

from evaluation.benchmark.data_timing import Throughput, measure_pipeline, measure_reference
from keras_ehrnet.fileio import atomic_write_json
from keras_ehrnet.threads import available_cores


def _print(t: Throughput) -> None:
    print(
        f"{t.name:<28} {t.images_per_second:7.1f} img/s  {t.cpu_ms_per_image:6.2f} CPU ms/img  "
        f"({t.batches} batches of {t.batch_size} in {t.seconds:.2f} s, {t.workers} worker(s), {t.cores} core(s): "
        f"{t.per_core:.1f} img/s per core, {t.per_busy_core:.1f} img/s per fully available core)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.benchmark data", description=__doc__.split("\n")[0]
    )
    p.add_argument("--ann", required=True, help="COCO-format keypoint annotation JSON")
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--input-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=30, help="timed batches (after 3 warm-up batches)")
    p.add_argument(
        "--reference", help="checkout of the authors' code; timed with a torch DataLoader if given"
    )
    p.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)

    common = dict(input_size=args.input_size, batch_size=args.batch_size, batches=args.batches)
    print(f"R = {args.input_size}, batch {args.batch_size}, {available_cores()} CPU core(s) available")
    results: dict = {"input_size": args.input_size, "cores": available_cores()}
    reference = None
    if args.reference:
        # First: the DataLoader forks, which is safest before TensorFlow starts its threads.
        reference = measure_reference(args.reference, args.ann, args.images, workers=args.workers, **common)
    else:
        reference = "skipped: no --reference given"
    ours = measure_pipeline(args.ann, args.images, **common)
    _print(ours)
    results["ours"] = ours.as_dict()
    if isinstance(reference, Throughput):
        _print(reference)
        ratio = ours.images_per_second / reference.images_per_second
        cpu_ratio = reference.cpu_ms_per_image / ours.cpu_ms_per_image
        print(f"ours / reference: {ratio:.2f}x images per second, {cpu_ratio:.2f}x less CPU per image")
        results["reference"] = reference.as_dict()
        results["ratio"] = ratio
        results["cpu_ratio"] = cpu_ratio
    else:
        print(f"reference: {reference}")
        results["reference"] = reference
    if args.json:
        atomic_write_json(args.json, results, indent=2)
    return 0
