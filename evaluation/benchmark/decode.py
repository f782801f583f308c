"""Decode time per image (everything after the network), ours side by side with the reference.

    python -m evaluation.benchmark decode --reference ../EfficientHRNet --json decode.json --plot decode.png

Both decoders get the same ideal network outputs (`keras_ehrnet.inference.oracle`) of the
COCO images (default: the shared coco-mini set) at the chosen input size, then
of synthetic crowds of 1 … 30 people to show how the time grows with the
number of people. The reference is the authors' HigherHRNet test code
(lib/core/inference.py aggregation, lib/core/group.py HeatmapParser with
munkres, lib/utils/transforms.py get_final_preds), run from their checkout
with torch when it is importable; otherwise it is skipped with the reason.
COCO AP of both on the same outputs is printed too.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import numpy as np
from tqdm import tqdm

from keras_ehrnet.fileio import atomic_write_json
from keras_ehrnet.inference.decoding import (
    DecodeConfig,
    DecodeResult,
    ScaleOutputs,
    decode_outputs,
)
from keras_ehrnet.inference.oracle import oracle_outputs, synthetic_crowd
from keras_ehrnet.keypoints import COCO_FLIP_INDEX
from keras_ehrnet.metrics.coco import coco_results, coco_summary, load_coco

DEFAULT_ANN = (
    Path(__file__).resolve().parents[3] / "shared/data/coco-mini/annotations/person_keypoints_train2017.json"
)


class ReferenceDecoder:
    """The authors' decoding (HigherHRNet test code) on our `ScaleOutputs`, timed by stage."""

    def __init__(self, checkout: str | Path, *, input_size: int, flip: bool, scales, refine: bool = True):
        lib = Path(checkout) / "lib"
        if not (lib / "core" / "group.py").is_file():
            raise FileNotFoundError(f"{checkout} has no lib/core/group.py (not the authors' checkout)")
        import munkres  # noqa: F401  (the reference's assignment solver)
        import torch

        # core.inference imports FLIP_CONFIG from the dataset package, whose __init__ needs
        # training-only packages; give it the one constant it uses.
        stub = types.ModuleType("dataset.transforms")
        stub.FLIP_CONFIG = {"COCO": list(COCO_FLIP_INDEX), "COCO_WITH_CENTER": [*COCO_FLIP_INDEX, 17]}
        package = types.ModuleType("dataset")
        package.__path__ = []
        package.transforms = stub
        sys.modules.setdefault("dataset", package)
        sys.modules.setdefault("dataset.transforms", stub)
        sys.path.insert(0, str(lib))
        from core.group import HeatmapParser
        from core.inference import aggregate_results, get_multi_stage_outputs
        from utils.transforms import get_final_preds, get_multi_scale_size

        ns = types.SimpleNamespace
        self.cfg = ns(
            DATASET=ns(NUM_JOINTS=17, MAX_NUM_PEOPLE=30, WITH_CENTER=False, DATASET="coco_kpt"),
            MODEL=ns(TAG_PER_JOINT=True),
            LOSS=ns(WITH_HEATMAPS_LOSS=(True, True), WITH_AE_LOSS=(True, False)),
            TEST=ns(
                FLIP_TEST=flip,
                SCALE_FACTOR=list(scales),
                PROJECT2IMAGE=True,
                WITH_HEATMAPS=(True, True),
                WITH_AE=(True, False),
                IGNORE_CENTER=True,
                DETECTION_THRESHOLD=0.1,
                TAG_THRESHOLD=1.0,
                USE_DETECTION_VAL=True,
                IGNORE_TOO_MUCH=False,
                NMS_KERNEL=5,
                NMS_PADDING=2,
                ADJUST=True,
                REFINE=refine,
            ),
        )
        self.torch = torch
        self.parser = HeatmapParser(self.cfg)
        self.stage_outputs = get_multi_stage_outputs
        self.aggregate = aggregate_results
        self.final_preds = get_final_preds
        self.multi_scale_size = get_multi_scale_size
        self.input_size = input_size
        self.flip = flip
        self.scales = sorted(scales, reverse=True)
        self.refine = refine

    def _nchw(self, a: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))[None])

    def __call__(
        self, outputs: list[ScaleOutputs], image_size: tuple[int, int], timings: dict
    ) -> DecodeResult:
        torch = self.torch
        h, w = image_size
        shape_only = np.empty((h, w, 3), np.uint8)
        min_scale = min(self.scales)
        base_size, center, scale = self.multi_scale_size(shape_only, self.input_size, 1.0, min_scale)
        by_scale = {o.scale: o for o in outputs}
        dummy = torch.zeros(1, 3, 1, 1)
        t0 = time.perf_counter()
        with torch.no_grad():
            final_heatmaps, tags_list = None, []
            for s in self.scales:
                out = by_scale[s]
                replay = [[self._nchw(out.quarter), self._nchw(out.half)]]
                if self.flip:
                    replay.append([self._nchw(out.quarter_flip), self._nchw(out.half_flip)])
                _, center, scale = self.multi_scale_size(shape_only, self.input_size, s, min_scale)
                _, heatmaps, tags = self.stage_outputs(
                    self.cfg, lambda _image, r=replay: r.pop(0), dummy, self.flip, True, base_size
                )
                final_heatmaps, tags_list = self.aggregate(
                    self.cfg, s, final_heatmaps, tags_list, heatmaps, tags
                )
            final_heatmaps = final_heatmaps / float(len(self.scales))
            tags = torch.cat(tags_list, dim=4)
            t1 = time.perf_counter()
            grouped, scores = self.parser.parse(final_heatmaps, tags, True, self.refine)
            t2 = time.perf_counter()
            final = self.final_preds(grouped, center, scale, [final_heatmaps.size(3), final_heatmaps.size(2)])
            t3 = time.perf_counter()
        timings.update({"aggregate": t1 - t0, "group": t2 - t1, "map": t3 - t2})
        if final:
            kp = np.stack([f[:, :3] for f in final]).astype(np.float32)
        else:
            kp = np.zeros((0, 17, 3), np.float32)
        return DecodeResult(kp, np.asarray(scores, np.float32), np.zeros((len(kp), 1), np.float32))


def _time_ours(outputs, plan, config) -> tuple[DecodeResult, dict]:
    """Our decode, timed: "aggregate" (resize, flip and scale averaging), "group" (NMS, top-k,
    grouping, adjustment, refinement: what the reference's HeatmapParser.parse does), "map"."""
    stages: dict = {}
    t = time.perf_counter()
    result = decode_outputs(outputs, plan, config, stages)
    total = time.perf_counter() - t
    group = sum(stages.pop(k, 0.0) for k in ("nms", "group", "refine"))
    return result, {"aggregate": stages["aggregate"], "group": group, "map": stages["map"], "total": total}


def _best_of(repeat: int, fn):
    """Run fn() `repeat` times; the result of the last run and, per stage, the fastest time."""
    best: dict = {}
    for _ in range(repeat):
        result, stages = fn()
        for k, v in stages.items():
            best[k] = min(best.get(k, np.inf), v)
    return result, best


def _time_reference(reference, outputs, size) -> tuple[DecodeResult, dict]:
    stages: dict = {}
    t = time.perf_counter()
    result = reference(outputs, size, stages)
    stages["total"] = time.perf_counter() - t
    return result, stages


def _summary_ms(values: list[float]) -> dict:
    ms = np.asarray(values) * 1000
    return (
        {"median": float(np.median(ms)), "max": float(ms.max()), "mean": float(ms.mean())} if ms.size else {}
    )


def run(args: argparse.Namespace) -> dict:
    """The benchmark: COCO images, then synthetic crowds; returns the report dict."""
    config = DecodeConfig(refine=not args.no_refine)
    reference = None
    skipped_reason = None
    if args.reference:
        try:
            reference = ReferenceDecoder(
                args.reference,
                input_size=args.input_size,
                flip=args.flip,
                scales=args.scales,
                refine=not args.no_refine,
            )
        except (ImportError, FileNotFoundError) as err:
            skipped_reason = f"{type(err).__name__}: {err}"
            print(f"reference decoding skipped: {skipped_reason}")
    else:
        skipped_reason = "no --reference checkout given"
    report: dict = {
        "settings": {
            "input_size": args.input_size,
            "flip": args.flip,
            "scales": list(args.scales),
            "refine": not args.no_refine,
            "decode_config": {k: v for k, v in config.__dict__.items()},
            "reference": str(args.reference) if args.reference else None,
            "reference_skipped": skipped_reason if reference is None else None,
        }
    }
    if reference is not None:
        reference.torch.set_num_threads(args.threads)

    coco = load_coco(args.ann)
    ids = coco.getImgIds()[: args.max_images] if args.max_images else coco.getImgIds()
    ours_t: dict[str, list[float]] = {}
    ref_t: dict[str, list[float]] = {}
    ours_res, ref_res = [], []
    for image_id in tqdm(ids, desc="COCO images", unit="img", disable=args.quiet):
        info = coco.imgs[image_id]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None))
        size = (int(info["height"]), int(info["width"]))
        outputs, plan = oracle_outputs(anns, size, args.input_size, scales=args.scales, flip=args.flip)
        result, stages = _best_of(args.repeat, lambda o=outputs, p=plan: _time_ours(o, p, config))
        for k, v in stages.items():
            ours_t.setdefault(k, []).append(v)
        ours_res += coco_results(image_id, result)
        if reference is not None:
            ref_result, stages = _best_of(
                args.repeat, lambda o=outputs, s=size: _time_reference(reference, o, s)
            )
            for k, v in stages.items():
                ref_t.setdefault(k, []).append(v)
            ref_res += coco_results(image_id, ref_result)
    coco_report: dict = {"images": len(ids), "ours": {k: _summary_ms(v) for k, v in ours_t.items()}}
    coco_report["ours"]["AP"] = coco_summary(coco, ours_res, ids, verbose=False)["AP"]
    if reference is not None:
        coco_report["reference"] = {k: _summary_ms(v) for k, v in ref_t.items()}
        coco_report["reference"]["AP"] = coco_summary(coco, ref_res, ids, verbose=False)["AP"]
        for key in ("total", "group"):
            o, r = coco_report["ours"][key], coco_report["reference"][key]
            coco_report[f"speedup_{key}_median"] = r["median"] / o["median"]
            coco_report[f"speedup_{key}_max"] = r["max"] / o["max"]
    report["coco"] = coco_report

    crowd = []
    for n in tqdm(args.crowd, desc="synthetic crowds", unit="size", disable=args.quiet):
        row: dict = {"people": n, "ours_ms": [], "reference_ms": []}
        for trial in range(args.crowd_trials):
            anns = synthetic_crowd(n, tuple(args.crowd_image), seed=trial)
            outputs, plan = oracle_outputs(
                anns, tuple(args.crowd_image), args.input_size, scales=args.scales, flip=args.flip
            )
            result, stages = _best_of(args.repeat, lambda o=outputs, p=plan: _time_ours(o, p, config))
            row["ours_ms"].append(stages["total"] * 1000)
            row.setdefault("ours_found", []).append(len(result))
            if reference is not None:
                size = tuple(args.crowd_image)
                ref_result, stages = _best_of(1, lambda o=outputs, s=size: _time_reference(reference, o, s))
                row["reference_ms"].append(stages["total"] * 1000)
                row.setdefault("reference_found", []).append(len(ref_result))
        row["ours_ms_median"] = float(np.median(row["ours_ms"]))
        if row["reference_ms"]:
            row["reference_ms_median"] = float(np.median(row["reference_ms"]))
        crowd.append(row)
    report["crowd"] = crowd
    return report


def print_report(report: dict) -> None:
    """The figures as a readable table."""
    s = report["settings"]
    c = report["coco"]
    print(
        f"\nDecode time per image, {c['images']} COCO images, input {s['input_size']}, "
        f"flip {'on' if s['flip'] else 'off'}, scales {s['scales']}, refine {'on' if s['refine'] else 'off'}"
    )
    print(f"{'':12s} {'total med':>10s} {'total max':>10s} {'group med':>10s} {'group max':>10s} {'AP':>7s}")
    for who in ("ours", "reference"):
        if who in c:
            r = c[who]
            print(
                f"{who:12s} {r['total']['median']:10.1f} {r['total']['max']:10.1f} "
                f"{r['group']['median']:10.1f} {r['group']['max']:10.1f} {r['AP']:7.4f}"
            )
    if "speedup_total_median" in c:
        print(
            f"speed-up: total {c['speedup_total_median']:.1f}x median, {c['speedup_total_max']:.1f}x max; "
            f"grouping {c['speedup_group_median']:.1f}x median, {c['speedup_group_max']:.1f}x max"
        )
    elif s["reference_skipped"]:
        print(f"reference skipped: {s['reference_skipped']}")
    print("\nSynthetic crowd (median ms per image):")
    print(f"{'people':>6s} {'ours':>9s} {'reference':>10s}")
    for row in report["crowd"]:
        ref = f"{row['reference_ms_median']:10.1f}" if "reference_ms_median" in row else f"{'-':>10s}"
        print(f"{row['people']:6d} {row['ours_ms_median']:9.1f} {ref}")


def plot_crowd(report: dict, path: str | Path) -> None:
    """PNG: decode ms per image against the number of people, ours and the reference."""
    from keras_ehrnet.metrics.reporting import pyplot, save_figure

    plt = pyplot()
    rows = report["crowd"]
    people = [r["people"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(people, [r["ours_ms_median"] for r in rows], "o-", label="keras_ehrnet.inference.decoding")
    if all("reference_ms_median" in r for r in rows):
        ax.plot(
            people, [r["reference_ms_median"] for r in rows], "s--", label="reference (HigherHRNet group.py)"
        )
    s = report["settings"]
    ax.set_xlabel("people in the image")
    ax.set_ylabel("decode time per image (ms)")
    ax.set_yscale("log")
    ax.set_title(f"Decoding vs crowd size (input {s['input_size']}, flip {'on' if s['flip'] else 'off'})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.benchmark decode", description=__doc__.split("\n")[0]
    )
    p.add_argument("--ann", type=Path, default=DEFAULT_ANN, help="COCO keypoint annotation file")
    p.add_argument("--input-size", type=int, default=512)
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="flip test")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0])
    p.add_argument("--no-refine", action="store_true", help="both decoders without refinement")
    p.add_argument("--reference", type=Path, help="the authors' checkout (e.g. ../EfficientHRNet)")
    p.add_argument("--max-images", type=int, help="only the first N images")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="decode each image this many times and keep the fastest (less noise)",
    )
    p.add_argument("--crowd", type=int, nargs="*", default=[1, 5, 10, 20, 30], help="synthetic crowd sizes")
    p.add_argument("--crowd-trials", type=int, default=3, help="random layouts per crowd size")
    p.add_argument("--crowd-image", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    p.add_argument("--threads", type=int, default=2, help="torch threads for the reference")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--plot", type=Path, help="write the crowd-size plot (PNG) here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if not args.ann.is_file():
        p.error(f"annotation file not found: {args.ann}")
    if args.repeat < 1 or args.crowd_trials < 1:
        p.error("--repeat and --crowd-trials must be at least 1")
    report = run(args)
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, report, indent=1)
        print(f"report written to {args.json}")
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_crowd(report, args.plot)
        print(f"plot written to {args.plot}")
    return 0
