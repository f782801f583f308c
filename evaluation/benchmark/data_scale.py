"""`python -m evaluation.benchmark data-scale`: time to the first batch and peak memory per worker
on a COCO-sized annotation file.

    python -m evaluation.benchmark data-scale [--ann A --images D] [--images-total 118000] \
        [--workers 1 2 4] [--json out.json]

Writes, in a temporary folder that is removed afterwards, an annotation file of COCO train2017's
size by repeating a small file's images and people under new ids (coco-mini's 80 images and 172
people, 1475 times: 118,000 images, 253,700 people; the image files are shared). Then, for each
worker count N and each worker k < N, a fresh process builds worker k's input pipeline
(`make_dataset` with an input context of N pipelines, as `distribute_datasets_from_function`
gives each worker) and takes one batch: the seconds until that batch (wall and CPU: on a busy
machine the CPU seconds are the steadier figure), the process's peak RSS, and its growth over
the RSS once TensorFlow is imported and started. Workers are measured one after the
other, as if each ran on its own machine.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from keras_ehrnet.fileio import atomic_write_json

_COCO_MINI = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco-mini"
ROOT = Path(__file__).resolve().parents[2]


def write_scaled(source: Path, out: Path, images_total: int) -> dict:
    """Repeat `source`'s images (with their annotations, under new ids) up to `images_total`
    images; returns the counts written."""
    data = json.loads(Path(source).read_text())
    images, anns = data["images"], data["annotations"]
    if not images:
        raise ValueError(f"{source}: no images to repeat")
    copies = math.ceil(images_total / len(images))
    image_step = max(i["id"] for i in images) + 1
    ann_step = max((a["id"] for a in anns), default=0) + 1
    by_image: dict = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    new_images, new_anns = [], []
    for c in range(copies):
        for info in images:
            if len(new_images) == images_total:
                break
            new_images.append({**info, "id": info["id"] + c * image_step})
            for a in by_image.get(info["id"], ()):
                new_anns.append(
                    {**a, "id": a["id"] + c * ann_step, "image_id": a["image_id"] + c * image_step}
                )
    out.write_text(json.dumps({**data, "images": new_images, "annotations": new_anns}))
    return {"images": len(new_images), "annotations": len(new_anns), "bytes": out.stat().st_size}


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_worker(ann: str, images: str, index: int, count: int, input_size: int, batch_size: int) -> dict:
    """In this process: worker `index` of `count` builds its pipeline and takes one batch."""
    import tensorflow as tf

    from keras_ehrnet.data import make_dataset

    tf.constant(0)  # the runtime is up: its memory is not the pipeline's
    base = _rss_mib()
    cpu = _cpu_seconds()
    started = time.perf_counter()
    ctx = tf.distribute.InputContext(
        num_input_pipelines=count, input_pipeline_id=index, num_replicas_in_sync=count
    )
    ds = make_dataset(
        ann, images, input_size=input_size, batch_size=batch_size * count, seed=0, input_context=ctx
    )
    built = time.perf_counter() - started
    batch, _ = next(iter(ds))
    first = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "workers": count,
        "worker": index,
        "records_seconds": built,
        "first_batch_seconds": first,
        "first_batch_cpu_seconds": cpu,
        "batch": list(batch.shape),
        "rss_after_import_mib": base,
        "peak_rss_mib": peak,
        "peak_growth_mib": peak - base,
    }


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return fields.get("Model name", "unknown CPU").strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.benchmark data-scale", description=__doc__.split("\n")[0]
    )
    p.add_argument("--ann", type=Path, default=_COCO_MINI / "annotations" / "person_keypoints_train2017.json")
    p.add_argument("--images", type=Path, default=_COCO_MINI / "train2017")
    p.add_argument("--images-total", type=int, default=118_000, help="images in the written file")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts to measure")
    p.add_argument("--input-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4, help="images per worker")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed to one worker")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--one", help=argparse.SUPPRESS)  # "k/N:FILE": measure one worker in this process
    args = p.parse_args(argv)
    if args.one:
        shard, ann = args.one.split(":", 1)
        k, n = (int(v) for v in shard.split("/"))
        out = measure_worker(ann, str(args.images), k, n, args.input_size, args.batch_size)
        print("RESULT " + json.dumps(out), flush=True)
        return 0
    for path, what in ((args.ann, "file"), (args.images, "folder")):
        if not (path.is_file() if what == "file" else path.is_dir()):
            print(f"error: no such {what}: {path}", file=sys.stderr)
            return 2
    if any(n < 1 for n in args.workers) or args.images_total < 1:
        print("error: --workers and --images-total must be positive", file=sys.stderr)
        return 2

    rows = []
    with tempfile.TemporaryDirectory(prefix="ehrnet-data-scale-") as tmp:
        ann = Path(tmp) / "person_keypoints_scaled.json"
        try:
            counts = write_scaled(args.ann, ann, args.images_total)
        except (ValueError, KeyError, TypeError) as err:  # not JSON, or not COCO's layout
            print(f"error: {args.ann}: cannot repeat its images and annotations: {err!r}", file=sys.stderr)
            return 2
        print(
            f"{ann.name}: {counts['images']:,} images, {counts['annotations']:,} people "
            f"({counts['bytes'] / 2**20:.0f} MiB), repeating {args.ann}"
        )
        jobs = [(k, n) for n in args.workers for k in range(n)]
        for k, n in tqdm(jobs, desc="workers", unit="run"):
            cmd = [sys.executable, "-m", "evaluation.benchmark", "data-scale", "--one", f"{k}/{n}:{ann}"]
            cmd += ["--images", str(args.images), "--input-size", str(args.input_size)]
            cmd += ["--batch-size", str(args.batch_size)]
            try:
                proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"error: worker {k} of {n} took over {args.timeout:.0f} s", file=sys.stderr)
                return 1
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"error: worker {k} of {n} failed: {proc.stderr.strip()[-2000:]}", file=sys.stderr)
                return 1
            rows.append(json.loads(lines[-1][len("RESULT ") :]))
    print(f"CPU: {_cpu_name()}")
    print(
        f"{'workers':>7} {'worker':>6} {'records s':>9} {'first batch s':>13} {'CPU s':>6} "
        f"{'peak RSS MiB':>12} {'growth MiB':>10}"
    )
    for r in rows:
        print(
            f"{r['workers']:>7} {r['worker']:>6} {r['records_seconds']:>9.1f} {r['first_batch_seconds']:>13.1f} "
            f"{r['first_batch_cpu_seconds']:>6.1f} {r['peak_rss_mib']:>12.0f} {r['peak_growth_mib']:>10.0f}"
        )
    if args.json:
        atomic_write_json(args.json, {"file": counts, "cpu": _cpu_name(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
