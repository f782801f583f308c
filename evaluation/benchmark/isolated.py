"""Time an exported artefact in a fresh process that loads only its runtime.

    python -m evaluation.benchmark.isolated ARTEFACT [--threads N] [--batch 1] [--runs 15] [--warmup 3]
        [--layout nhwc|nchw]

A process that has run TensorFlow keeps TensorFlow's thread pools spinning on the cores, and
ONNX Runtime, LiteRT or OpenVINO timed there lose up to half their speed (the reference's H-4
ONNX file: 66 ms beside TensorFlow, 33 ms alone, on a Zen 4). `evaluation.benchmark latency`
therefore exports in its own process and times every non-TensorFlow runtime here, in a child
that imports numpy, the runtime and `keras_ehrnet.deploy.runtimes` only. The child prints one JSON
line: the latency statistics and which heavy modules it had loaded (TensorFlow must not be).

`--layout nchw` times an NCHW ONNX file with an input named anything (the authors' PyTorch
export) with the same ONNX Runtime options our runner uses, on the same pixels as ours,
normalised as the reference expects (`nchw-pixels`: normalised and transposed in each timed call,
as its users must, where our files do that inside the graph); `--layout torch:LEVEL` times the authors' PyTorch model
eagerly (ARTEFACT is their checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HEAVY_MODULES = ("tensorflow", "keras", "torch")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the reference's input normalisation (keras_ehrnet.backbone's)
IMAGENET_STD = (0.229, 0.224, 0.225)
_ROOT = Path(__file__).resolve().parents[2]


def _nchw_onnx_fn(path: Path, threads: int, batch: int, from_pixels: bool = False):
    """A callable running an NCHW .onnx file on fixed random input, ORT options as OnnxRunner's.

    `from_pixels`: each call also does what a user of that file must do to an image first (our
    files do it inside their graph): normalise the NHWC pixels and transpose them to NCHW, with
    numpy in one fused multiply-add and one copy."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    _, c, h, w = inp.shape
    # the same pixels as _runner_fn's, normalised as the reference's data loader does
    pixels = np.random.default_rng(0).uniform(0, 255, (batch, h, w, c)).astype(np.float32)
    x = ((pixels / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2).astype(np.float32)
    if not from_pixels:
        return lambda: session.run(None, {inp.name: x}), "onnx-nchw"
    scale = (1.0 / (255.0 * np.float32(IMAGENET_STD))).astype(np.float32)
    offset = (-np.float32(IMAGENET_MEAN) / np.float32(IMAGENET_STD)).astype(np.float32)

    def from_image():
        normalised = np.ascontiguousarray((pixels * scale + offset).transpose(0, 3, 1, 2))
        return session.run(None, {inp.name: normalised})

    return from_image, "onnx-nchw-from-pixels"


def _torch_reference_fn(checkout: Path, level: str, threads: int, batch: int):
    """The authors' PyTorch model for `level` (BatchNorms as latency.py gives them), run eagerly."""
    from evaluation.reference import load_reference_model, realistic_batchnorm, torch_infer_fn

    model, size = load_reference_model(checkout, level)
    realistic_batchnorm(model)
    return torch_infer_fn(model, (size, size), threads=threads, batch=batch), "torch-eager"


def _runner_fn(path: Path, threads: int, batch: int, size: int | None):
    """A callable running our artefact through `load_runner` on fixed random pixels."""
    import numpy as np

    from keras_ehrnet.deploy.runtimes import load_runner

    runner = load_runner(path, num_threads=threads)
    if runner.fixed_input_size:
        h, w = runner.fixed_input_size
    elif size:
        h = w = size
    else:
        raise ValueError(f"{path} takes any input size: give --size")
    x = np.random.default_rng(0).uniform(0, 255, (batch, h, w, 3)).astype(np.float32)
    return lambda: runner(x), runner.name


def child_main(argv: list[str] | None = None) -> int:
    """The fresh process: load one artefact, time it, print one JSON line."""
    p = argparse.ArgumentParser(prog="python -m evaluation.benchmark.isolated")
    p.add_argument("artefact", type=Path)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=None, help="input size for artefacts of dynamic size")
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--layout",
        default="nhwc",
        help="nhwc (our artefact), nchw (an NCHW .onnx file), nchw-pixels (the same, normalising and "
        "transposing NHWC pixels in numpy each call) or torch:LEVEL (ARTEFACT is the reference checkout)",
    )
    args = p.parse_args(argv)
    from keras_ehrnet.metrics.benchmarking import time_callable
    from keras_ehrnet.threads import available_cores

    threads = args.threads or available_cores()
    if args.layout in ("nchw", "nchw-pixels"):
        fn, name = _nchw_onnx_fn(args.artefact, threads, args.batch, from_pixels=args.layout == "nchw-pixels")
    elif args.layout.startswith("torch:"):
        fn, name = _torch_reference_fn(args.artefact, args.layout.split(":", 1)[1], threads, args.batch)
    else:
        fn, name = _runner_fn(args.artefact, threads, args.batch, args.size)
    stats = time_callable(fn, warmup=args.warmup, runs=args.runs)
    loaded = [m for m in HEAVY_MODULES if m in sys.modules]
    print(json.dumps({"runtime": name, "latency": stats.as_dict(), "heavy_modules_loaded": loaded}))
    return 0


def time_isolated(
    artefact: str | os.PathLike,
    *,
    threads: int | None = None,
    batch: int = 1,
    size: int | None = None,
    runs: int = 15,
    warmup: int = 3,
    layout: str = "nhwc",
    timeout: float = 900,
) -> dict:
    """Time `artefact` in a fresh Python process; returns the child's JSON (raises on failure)."""
    cmd = [sys.executable, "-m", "evaluation.benchmark.isolated", str(artefact)]
    cmd += ["--batch", str(batch), "--runs", str(runs), "--warmup", str(warmup), "--layout", layout]
    if threads:
        cmd += ["--threads", str(threads)]
    if size:
        cmd += ["--size", str(size)]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=_ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"timing {artefact} in a fresh process failed (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1])


def alternate(
    artefacts: dict[str, tuple[str | os.PathLike, str]],
    *,
    rounds: int = 3,
    progress=print,
    **kwargs,
) -> dict[str, dict]:
    """Time each named (path, layout) artefact `rounds` times, interleaved, each in a fresh process.

    Interleaving puts every artefact through the same spells of load on a shared machine; the
    figure per artefact is the median of its per-round medians, with every round kept.
    """
    per: dict[str, list[dict]] = {name: [] for name in artefacts}
    last: dict[str, dict] = {}
    for r in range(rounds):
        for name, (path, layout) in artefacts.items():
            result = time_isolated(path, layout=layout, **kwargs)
            per[name].append(result["latency"])
            last[name] = result
            if progress:
                progress(f"    round {r + 1}/{rounds} {name:<24} {result['latency']['median_ms']:8.1f} ms")
    out = {}
    for name, stats in per.items():
        median = statistics.median(s["median_ms"] for s in stats)
        foreign = [s["foreign_cpu_frac"] for s in stats if s.get("foreign_cpu_frac") is not None]
        out[name] = {
            "latency": {
                "median_ms": round(median, 3),
                "p90_ms": round(statistics.median(s["p90_ms"] for s in stats), 3),
                "min_ms": round(min(s["min_ms"] for s in stats), 3),
                "cpu_median_ms": round(statistics.median(s["cpu_median_ms"] for s in stats), 3),
                "fps": round(1000.0 / median, 2),
                "round_medians_ms": [round(s["median_ms"], 3) for s in stats],
                "runs_per_round": stats[0]["runs"],
                "foreign_cpu_frac_max": max(foreign) if foreign else None,
            },
            "process": "fresh",
            "heavy_modules_loaded": last[name]["heavy_modules_loaded"],
            "runtime": last[name]["runtime"],
        }
    return out


if __name__ == "__main__":
    sys.exit(child_main())
