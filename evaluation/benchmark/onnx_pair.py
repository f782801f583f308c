"""Two ONNX files on one runtime, run by turns in one process: which graph costs more, and where.

    python -m evaluation.benchmark onnx-pair OURS.onnx REFERENCE.onnx [--threads 1] [--pairs 15]
        [--warmup 2] [--profile 4] [--runtime onnxruntime|openvino] [--json out.json]

Written to tell our exported graph from the reference's (`latency --reference --workdir DIR`
leaves both in DIR: `H-4_384x384.onnx` and `reference_H-4_384.onnx`). On a shared 2-core machine
fresh-process rounds a minute apart differ by ±20 %; here the two sessions take turns call by
call in one process that loads ONNX Runtime and numpy only, so a spell of load hits both, and
the per-pair ratio is reported (median and quartiles). The default single thread keeps
ONNX Runtime's thread-pool hand-offs, which a busy neighbour stretches, out of the figure. Each
file gets the input it expects: an NHWC file (ours) pixels in 0..255, an NCHW file (the
reference's) the same pixels normalised with ImageNet's mean and deviation, as its loader does.
`--profile N` then runs each file N more times under ONNX Runtime's profiler and prints the
kernel time per operator type, side by side. `--runtime openvino` compiles both files with
OpenVINO instead (f32, `--threads` inference threads): does OpenVINO run one graph faster?
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from evaluation.benchmark.isolated import IMAGENET_MEAN, IMAGENET_STD
from keras_ehrnet.deploy.artefact import RuntimeUnavailableError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.benchmark onnx-pair", description=__doc__.split("\n")[0]
    )
    p.add_argument("ours", type=Path, help="first .onnx file (ours: NHWC pixels in)")
    p.add_argument("reference", type=Path, help="second .onnx file (the reference's: NCHW, normalised)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for both (default 1)")
    p.add_argument("--pairs", type=int, default=15, help="timed calls of each, by turns (default 15)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each first (default 2)")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="profiled calls per file (0: none)")
    p.add_argument(
        "--runtime",
        choices=("onnxruntime", "openvino"),
        default="onnxruntime",
        help="which runtime runs both files (default onnxruntime; --profile needs it)",
    )
    p.add_argument("--json", type=Path, help="write the figures here")
    return p.parse_args(argv)


class _Graph:
    """One file compiled by one runtime: its input's name and shape, and a call on a feed."""

    def __init__(self, path: Path, runtime: str, threads: int, profile_dir: str | None = None):
        self.path = path
        if runtime == "openvino":
            from keras_ehrnet.deploy.openvino import import_openvino

            ov = import_openvino()
            try:
                model = ov.Core().read_model(str(path))
            except Exception as err:  # OpenVINO raises its own RuntimeError subclasses
                raise ValueError(
                    f"{path} is not a model OpenVINO reads: {' '.join(str(err).split())}"
                ) from None
            shape = model.inputs[0].get_partial_shape()
            if not shape.is_static:  # batch 1 with every axis fixed, as OpenVINORunner compiles it
                dims = [1] + [d.get_length() if d.is_static else None for d in list(shape)[1:]]
                if None in dims:
                    raise ValueError(f"{path}: the files must have a fixed input size, got {shape}")
                model.reshape({model.inputs[0].get_any_name(): dims})
            config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
            compiled = ov.Core().compile_model(model, "CPU", config)
            request = compiled.create_infer_request()
            self.input_name = compiled.inputs[0].get_any_name()
            self.input_shape = [
                d.get_length() if d.is_static else None for d in compiled.inputs[0].get_partial_shape()
            ]
            self.run = lambda feed: request.infer({0: next(iter(feed.values()))})
            self.session = None
            return
        self.session = _session(path, threads, profile_dir)
        inp = self.session.get_inputs()[0]
        self.input_name, self.input_shape = inp.name, list(inp.shape)
        self.run = lambda feed: self.session.run(None, feed)


def _session(path: Path, threads: int, profile_dir: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(profile_dir) / path.stem)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own Fail/InvalidProtobuf types
        raise ValueError(f"{path} is not a valid ONNX model: {' '.join(str(err).split())}") from None


def feed_for(graph: _Graph, pixels):
    """The input `graph` expects for NHWC `pixels` (0..255): as they are, or normalised NCHW."""
    import numpy as np

    if graph.input_shape[-1] == 3:
        return {graph.input_name: pixels}
    x = (pixels / 255.0 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    return {graph.input_name: np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)}


def _input_hw(graph: _Graph) -> tuple[int, int]:
    shape = graph.input_shape
    h, w = (shape[1], shape[2]) if shape[-1] == 3 else (shape[2], shape[3])
    if not (isinstance(h, int) and isinstance(w, int)):
        raise ValueError(f"{graph.path}: the files must have a fixed input size, got {shape}")
    return h, w


def kernel_ms_by_op(profile_file: str, calls: int) -> dict[str, float]:
    """Milliseconds of kernel time per operator type per call, from an ONNX Runtime profile."""
    totals: collections.Counter = collections.Counter()
    with open(profile_file) as f:
        for event in json.load(f):
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                totals[event["args"]["op_name"]] += event["dur"] / 1000.0 / calls
    return dict(totals)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        for path in (args.ours, args.reference):
            if not path.is_file():
                raise FileNotFoundError(f"ONNX file not found: {path}")
        if args.pairs < 1 or args.threads < 1 or args.warmup < 0 or args.profile < 0:
            raise ValueError("--pairs and --threads must be ≥ 1, --warmup and --profile ≥ 0")
        if args.profile and args.runtime != "onnxruntime":
            raise ValueError("--profile reads ONNX Runtime's profiler: leave it out with --runtime openvino")
        sessions = [_Graph(p, args.runtime, args.threads) for p in (args.ours, args.reference)]
        sizes = {_input_hw(s) for s in sessions}
        if len(sizes) != 1:
            raise ValueError(f"the two files take different input sizes: {sorted(sizes)}")
    except (FileNotFoundError, ValueError, RuntimeUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import numpy as np

    (h, w) = sizes.pop()
    pixels = np.random.default_rng(0).uniform(0, 255, (1, h, w, 3)).astype(np.float32)
    feeds = [feed_for(s, pixels) for s in sessions]
    for s, feed in zip(sessions, feeds):
        for _ in range(args.warmup):
            s.run(feed)
    times: list[list[float]] = [[], []]
    for _ in range(args.pairs):
        for k, (s, feed) in enumerate(zip(sessions, feeds)):
            start = time.perf_counter()
            s.run(feed)
            times[k].append((time.perf_counter() - start) * 1000.0)
    ratios = sorted(a / b for a, b in zip(*times))
    q1, med, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    result = {
        "ours": str(args.ours),
        "reference": str(args.reference),
        "input": [h, w],
        "runtime": args.runtime,
        "threads": args.threads,
        "pairs": args.pairs,
        "ours_median_ms": round(statistics.median(times[0]), 3),
        "reference_median_ms": round(statistics.median(times[1]), 3),
        "ours_min_ms": round(min(times[0]), 3),
        "reference_min_ms": round(min(times[1]), 3),
        "ratio_median": round(med, 4),
        "ratio_quartiles": [round(q1, 4), round(q3, 4)],
    }
    print(
        f"{args.ours.name} vs {args.reference.name} on {args.runtime} at {h}x{w}, {args.threads} thread(s), "
        f"{args.pairs} pairs: "
        f"{result['ours_median_ms']:.1f} vs {result['reference_median_ms']:.1f} ms (medians), "
        f"ours/reference per pair {med:.3f} (quartiles {q1:.3f}–{q3:.3f})"
    )
    if args.profile:
        with tempfile.TemporaryDirectory(prefix="ehrnet-onnx-pair-") as tmp:
            by_op = []
            for path, feed in zip((args.ours, args.reference), feeds):
                s = _session(path, args.threads, tmp)
                for _ in range(args.profile):
                    s.run(None, feed)
                by_op.append(kernel_ms_by_op(s.end_profiling(), args.profile))
        ops = sorted(set(by_op[0]) | set(by_op[1]), key=lambda o: -(by_op[0].get(o, 0) + by_op[1].get(o, 0)))
        print("| operator | ours ms | reference ms |\n|---|---|---|")
        for op in ops:
            print(f"| {op} | {by_op[0].get(op, 0.0):.2f} | {by_op[1].get(op, 0.0):.2f} |")
        totals = [sum(b.values()) for b in by_op]
        print(f"| all kernels | {totals[0]:.2f} | {totals[1]:.2f} |")
        result["kernel_ms_by_op"] = {"ours": by_op[0], "reference": by_op[1]}
    if args.json:
        from keras_ehrnet.fileio import atomic_write_json

        atomic_write_json(args.json, result, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
