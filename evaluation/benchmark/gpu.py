"""GPU figures: our model under JAX and PyTorch against the authors' PyTorch model, in one run.

`python -m evaluation.benchmark gpu` needs Keras with JAX and/or PyTorch (no TensorFlow, no
pycocotools). Each measurement group runs in a subprocess of its own, because a process has
one Keras backend: "jax" (our model, `jax.jit`), "torch" (our model, eager and `torch.compile`)
and "reference" (the authors' model from `--reference PATH`, eager and `torch.compile`, fp32 and
fp16 autocast). For every level at its native resolution and every batch size it records the
median and p90 latency, FPS and peak device memory; end to end (image → people, decoding
included, the flip test as in the papers' COCO test) for `--e2e-levels`; and training
images/s (synthetic batches through our loss, against the reference's training step with its
own loss code). Results go to JSON (rewritten after every group, so a crash loses nothing
finished) and a Markdown table. `--device cpu` runs the same program on the CPU (small
`--input-size` for a smoke run). See evaluation/benchmark/README.md for the GPU machine.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
LEVELS = ("H0", "H-1", "H-2", "H-3", "H-4")
NATIVE = {"H0": 512, "H-1": 480, "H-2": 448, "H-3": 416, "H-4": 384}
GROUPS = ("jax", "torch", "reference")


def _stats(times_s: list[float], batch: int) -> dict:
    ms = sorted(t * 1000 for t in times_s)
    median = statistics.median(ms)
    return {
        "median_ms": round(median, 3),
        "p90_ms": round(ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))], 3),
        "fps": round(1000 * batch / median, 2),
    }


def _timed(fn, sync, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        sync(fn())
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t)
    return times


def _synthetic_targets(batch: int, size: int, num_joints: int = 17, people: int = 4, seed: int = 0) -> dict:
    """Random pipeline-shaped targets: heatmaps in [0, 1], full masks, `people` visible people."""
    rng = np.random.default_rng(seed)
    q, h = size // 4, size // 2
    joints = np.zeros((batch, 30, num_joints, 2), np.int32)
    joints[:, :people, :, 0] = rng.integers(0, q * q, (batch, people, num_joints))
    joints[:, :people, :, 1] = 1
    return {
        "heatmaps_quarter": rng.random((batch, q, q, num_joints), np.float32),
        "heatmaps_half": rng.random((batch, h, h, num_joints), np.float32),
        "mask_quarter": np.ones((batch, q, q), np.float32),
        "mask_half": np.ones((batch, h, h), np.float32),
        "joints": joints,
    }


def _sample_image() -> np.ndarray:
    import cv2

    path = sorted((ROOT / "keras_ehrnet" / "data" / "sample" / "images").glob("*.jpg"))[0]
    return np.ascontiguousarray(cv2.imread(str(path))[..., ::-1])


def _device_memory(group: str, device: str) -> dict:
    """Peak device memory so far (and a reset for the next measurement) where the backend tells it."""
    if device == "cpu":
        return {"peak_mem_mb": None}
    if group == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return {"peak_mem_mb": None if peak is None else round(peak / 2**20, 1)}
    import torch

    peak = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    return {"peak_mem_mb": round(peak / 2**20, 1)}


# --------------------------------------------------------------------------- our model (worker)


def _build_ours(level: str, precision: str):
    import keras

    import keras_ehrnet as ke

    policy = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[precision]
    keras.config.set_dtype_policy(policy)
    try:
        return ke.build_model(level)
    finally:
        keras.config.set_dtype_policy("float32")


def _ours_forward(model, group: str, mode: str):
    """x → outputs on the device: jax.jit, or torch eager / torch.compile under no_grad."""
    if group == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        fixed = [v.value for v in model.non_trainable_variables]
        run = jax.jit(lambda t, f, x: model.stateless_call(t, f, x, training=False)[0])
        return lambda x: run(trainable, fixed, x)
    import torch

    call = (lambda x: model(x, training=False)) if mode == "eager" else torch.compile(model)

    def forward(x):
        with torch.no_grad():
            return call(x) if mode == "eager" else call(x, training=False)

    return forward


def _sync(group: str, device: str):
    if group == "jax":
        import jax

        return lambda out: jax.block_until_ready(out)
    import torch

    if device == "cuda":
        return lambda out: torch.cuda.synchronize()
    return lambda out: None


def _to_device(group: str, array: np.ndarray, device: str):
    if group == "jax":
        import jax

        return jax.device_put(array, jax.devices()[0])
    import torch

    return torch.from_numpy(array).to(device)


def _measure_ours(args, group: str, emit) -> None:
    import keras

    from keras_ehrnet.train.fit import LossModel, default_loss

    modes = [m for m in (["jit"] if group == "jax" else ["eager", "compile"]) if m in args.modes]
    half = "bf16" if group == "jax" or args.device == "cpu" else "fp16"
    precisions = [p for p in args.precisions if p == "fp32" or p == half]
    sync = _sync(group, args.device)
    for level in args.levels:
        size = args.input_size or NATIVE[level]
        for precision in precisions:
            model = _build_ours(level, precision)
            for mode in modes:
                forward = _ours_forward(model, group, mode)
                for batch in args.batches:
                    row = {
                        "what": "inference",
                        "model": "ours",
                        "backend": group,
                        "mode": mode,
                        "precision": precision,
                        "level": level,
                        "input": size,
                        "batch": batch,
                    }
                    try:
                        x = _to_device(
                            group,
                            np.random.default_rng(0)
                            .uniform(0, 255, (batch, size, size, 3))
                            .astype(np.float32),
                            args.device,
                        )
                        _device_memory(group, args.device)
                        row.update(
                            _stats(_timed(lambda f=forward, x=x: f(x), sync, args.warmup, args.runs), batch)
                        )
                        row.update(_device_memory(group, args.device))
                    except Exception as err:  # e.g. torch.compile failing on this model/version
                        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                    emit(row)
        if level in args.e2e_levels:
            emit(_measure_ours_e2e(args, group, level))
        if args.train_batch:
            row = {
                "what": "train",
                "model": "ours",
                "backend": group,
                "mode": "jit" if group == "jax" else "eager",
                "precision": "fp32",
                "level": level,
                "input": size,
                "batch": args.train_batch,
            }
            try:
                model = _build_ours(level, "fp32")
                wrapper = LossModel(model, default_loss(model))
                wrapper.compile(optimizer=keras.optimizers.Adam(1e-3))
                x = (
                    np.random.default_rng(0)
                    .uniform(0, 255, (args.train_batch, size, size, 3))
                    .astype(np.float32)
                )
                y = _synthetic_targets(args.train_batch, size)
                step = wrapper.train_on_batch
                times = _timed(
                    lambda s=step, x=x, y=y: s(x, y), lambda out: None, args.warmup, args.train_steps
                )
                stats = _stats(times, args.train_batch)
                row.update({"step_ms": stats["median_ms"], "images_per_s": stats["fps"]})
                row.update(_device_memory(group, args.device))
            except Exception as err:
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            emit(row)


def _measure_ours_e2e(args, group: str, level: str) -> dict:
    """Image → people with our Predictor (letterbox, flip test, the backend's compiled model, decode)."""
    import keras_ehrnet as ke

    size = args.input_size or NATIVE[level]
    row = {
        "what": "end-to-end",
        "model": "ours",
        "backend": group,
        "mode": "jit" if group == "jax" else "eager",
        "precision": "fp32",
        "level": level,
        "input": size,
        "batch": 1,
    }
    try:
        predictor = ke.Predictor(_build_ours(level, "fp32"), input_size=size)
        image = _sample_image()
        row.update(
            _stats(_timed(lambda: predictor.predict(image), lambda out: None, args.warmup, args.runs), 1)
        )
    except Exception as err:
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return row


# --------------------------------------------------------------------------- the reference (worker)


class _ReferenceRunner:
    """The reference network as a Predictor runner: NHWC pixels in, NHWC (quarter, half) out."""

    name = "reference"
    fixed_input_size = None
    num_joints = 17

    def __init__(self, model, device: str, precision: str):
        import torch

        self.torch, self.model, self.device, self.precision = torch, model, device, precision
        self.mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255

    def __call__(self, images: np.ndarray):
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(self.device).permute(0, 3, 1, 2)
        with torch.no_grad(), _autocast(torch, self.device, self.precision):
            quarter, half = self.model((x - self.mean) / self.std)
        return tuple(o.float().permute(0, 2, 3, 1).cpu().numpy() for o in (quarter, half))


def _autocast(torch, device: str, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device, dtype=dtype)


def _reference_loss(torch, cfg, device: str):
    """The reference's MultiLossFactory from its own lib/core/loss.py."""
    from core.loss import MultiLossFactory

    return MultiLossFactory(cfg).to(device)


def _measure_reference(args, emit) -> None:
    import torch

    from evaluation.reference import load_reference_model

    half = "fp16" if args.device == "cuda" else "bf16"
    precisions = [p for p in ("fp32", half) if p in args.precisions]
    sync = _sync("torch", args.device)
    for level in args.levels:
        model, native = load_reference_model(args.reference, level)
        model = model.to(args.device).eval()
        size = args.input_size or native
        compiled = None
        for mode in [m for m in ("eager", "compile") if m in args.modes]:
            if mode == "compile":
                try:
                    compiled = torch.compile(model)
                except Exception as err:
                    emit(
                        {
                            "what": "inference",
                            "model": "reference",
                            "backend": "torch",
                            "mode": mode,
                            "level": level,
                            "error": f"{type(err).__name__}: {err}",
                        }
                    )
                    continue
            net = model if mode == "eager" else compiled
            for precision in precisions:
                for batch in args.batches:
                    row = {
                        "what": "inference",
                        "model": "reference",
                        "backend": "torch",
                        "mode": mode,
                        "precision": precision,
                        "level": level,
                        "input": size,
                        "batch": batch,
                    }
                    try:
                        x = torch.from_numpy(
                            np.random.default_rng(0)
                            .standard_normal((batch, 3, size, size))
                            .astype(np.float32)
                        ).to(args.device)

                        def run(net=net, x=x, precision=precision):
                            with torch.no_grad(), _autocast(torch, args.device, precision):
                                return net(x)

                        _device_memory("torch", args.device)
                        row.update(_stats(_timed(run, sync, args.warmup, args.runs), batch))
                        row.update(_device_memory("torch", args.device))
                    except Exception as err:
                        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                    emit(row)
        if level in args.e2e_levels:
            emit(_measure_reference_e2e(args, model, level, size))
        if args.train_batch:
            emit(_measure_reference_train(args, level, size))


def _measure_reference_e2e(args, model, level: str, size: int) -> dict:
    """Image → people the reference's way: its network, then its own decoding (HigherHRNet test code)."""
    row = {
        "what": "end-to-end",
        "model": "reference",
        "backend": "torch",
        "mode": "eager",
        "precision": "fp32",
        "level": level,
        "input": size,
        "batch": 1,
    }
    try:
        import keras_ehrnet as ke
        from evaluation.benchmark.decode import ReferenceDecoder

        decoder = ReferenceDecoder(args.reference, input_size=size, flip=True, scales=(1.0,))
        # Our Predictor only supplies letterbox + flip batching; decoding is the reference's.
        predictor = ke.Predictor(_ReferenceRunner(model, args.device, "fp32"), input_size=size)
        image = _sample_image()

        def run():
            plan = predictor.plan(image.shape[:2])
            return decoder(predictor.network_outputs(image, plan), image.shape[:2], {})

        row.update(_stats(_timed(run, lambda out: None, args.warmup, args.runs), 1))
    except Exception as err:
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return row


def _measure_reference_train(args, level: str, size: int) -> dict:
    """The reference's training step: its model in train mode, its MultiLossFactory, Adam."""
    import torch

    from evaluation.reference import load_reference_config, load_reference_model

    row = {
        "what": "train",
        "model": "reference",
        "backend": "torch",
        "mode": "eager",
        "precision": "fp32",
        "level": level,
        "input": size,
        "batch": args.train_batch,
    }
    try:
        model, _ = load_reference_model(args.reference, level)
        model = model.to(args.device).train()
        cfg = load_reference_config(args.reference, level)
        loss_factory = _reference_loss(torch, cfg, args.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        b = args.train_batch
        t = _synthetic_targets(b, size)
        dev = args.device

        def nchw(a):
            return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1))).to(dev)

        x = torch.from_numpy(
            np.random.default_rng(0).standard_normal((b, 3, size, size)).astype(np.float32)
        ).to(dev)
        heatmaps = [nchw(t["heatmaps_quarter"]), nchw(t["heatmaps_half"])]
        masks = [torch.from_numpy(t["mask_quarter"]).to(dev), torch.from_numpy(t["mask_half"]).to(dev)]
        # The reference's joints index its NCHW tag maps: joint j's flat index is j·H·W + y·W + x.
        q = size // 4
        joints = t["joints"].astype(np.int64)
        joints[..., 0] += np.arange(17)[None, None, :] * q * q
        joints = [torch.from_numpy(joints).to(dev), torch.from_numpy(joints).to(dev)]

        def step():
            outputs = model(x)
            heat, push, pull = loss_factory(outputs, heatmaps, masks, joints)
            loss = sum(v.mean() for v in [*heat, *push, *pull] if v is not None)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss

        sync = _sync("torch", args.device)
        stats = _stats(_timed(step, sync, args.warmup, args.train_steps), b)
        row.update({"step_ms": stats["median_ms"], "images_per_s": stats["fps"]})
        row.update(_device_memory("torch", args.device))
    except Exception as err:
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return row


# --------------------------------------------------------------------------- driver


def _worker(args) -> int:
    """Run one group in this process; each row is appended to --rows as one JSON line."""
    rows = Path(args.rows)

    def emit(row: dict) -> None:
        print(json.dumps(row), flush=True)
        with rows.open("a") as f:
            f.write(json.dumps(row) + "\n")

    if args.worker == "reference":
        _measure_reference(args, emit)
    else:
        _measure_ours(args, args.worker, emit)
    # What this group needed: the program promises neither TensorFlow nor pycocotools.
    loaded = {m.split(".")[0] for m in sys.modules}
    emit(
        {
            "what": "imports",
            "group": args.worker,
            "tensorflow": "tensorflow" in loaded,
            "pycocotools": "pycocotools" in loaded,
        }
    )
    return 0


def _environment(device: str) -> dict:
    info: dict[str, Any] = {"python": platform.python_version(), "device": device, "machine": platform.node()}
    try:
        import torch

        info["torch"] = torch.__version__
        if device == "cuda" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    for module in ("jax", "keras"):
        with contextlib.suppress(ImportError):
            info[module] = __import__(module).__version__
    if device == "cpu":
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
            info["cpu"] = next(
                (ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln), ""
            )
            info["cpu_count"] = os.cpu_count()
        except OSError:
            pass
    return info


def markdown(report: dict) -> str:
    """The rows as Markdown tables (inference, end to end, training) with ours/reference ratios."""
    rows = report["rows"]
    env = report["environment"]
    where = env.get("gpu") or env.get("cpu") or env.get("device")
    out = [
        f"Device: {where} ({env.get('device')}); torch {env.get('torch', '–')}, jax {env.get('jax', '–')}, "
        f"keras {env.get('keras', '–')}.",
        "",
    ]
    out += [
        "| level | input | batch | model | backend | mode | precision | median ms | p90 ms | FPS | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("what") != "inference":
            continue
        if "error" in r:
            out.append(
                f"| {r.get('level')} | {r.get('input', '')} | {r.get('batch', '')} | {r['model']} | "
                f"{r['backend']} | {r['mode']} | {r.get('precision', '')} | failed: {r['error'][:60]} |||||"
            )
            continue
        out.append(
            f"| {r['level']} | {r['input']} | {r['batch']} | {r['model']} | {r['backend']} | {r['mode']} | "
            f"{r['precision']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['fps']:.1f} | "
            f"{r.get('peak_mem_mb') if r.get('peak_mem_mb') is not None else '–'} |"
        )
    ratios = _fastest_ratios(rows, "inference", "fps")
    if ratios:
        out += ["", "Fastest per level and batch (FPS), ours / reference:", ""]
        out += [f"- {k}: ours {a:.1f} vs reference {b:.1f} → {a / b:.2f}×" for k, (a, b) in ratios.items()]
    e2e = [r for r in rows if r.get("what") == "end-to-end"]
    if e2e:
        out += [
            "",
            "| level | input | model | backend | end-to-end median ms | p90 ms | images/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in e2e:
            cells = (
                ("failed: " + r["error"][:60] + " | |")
                if "error" in r
                else (f"{r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['fps']:.2f}")
            )
            out.append(f"| {r['level']} | {r.get('input', '')} | {r['model']} | {r['backend']} | {cells} |")
    train = [r for r in rows if r.get("what") == "train"]
    if train:
        out += [
            "",
            "| level | input | batch | model | backend | step ms | training images/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in train:
            cells = (
                ("failed: " + r["error"][:60] + " |")
                if "error" in r
                else f"{r['step_ms']:.1f} | {r['images_per_s']:.2f}"
            )
            out.append(
                f"| {r['level']} | {r.get('input', '')} | {r['batch']} | {r['model']} | {r['backend']} | {cells} |"
            )
    return "\n".join(out) + "\n"


def _fastest_ratios(rows: list[dict], what: str, key: str) -> dict:
    best: dict = {}
    for r in rows:
        if r.get("what") != what or "error" in r:
            continue
        k = (f"{r['level']} batch {r['batch']}", r["model"])
        best[k] = max(best.get(k, 0.0), r[key])
    out = {}
    for (label, model), value in best.items():
        if model == "ours" and (label, "reference") in best:
            out[label] = (value, best[(label, "reference")])
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.benchmark gpu", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--levels", nargs="+", default=list(LEVELS), choices=LEVELS)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument(
        "--groups", default="jax,torch,reference", help=f"comma-separated, from {', '.join(GROUPS)}"
    )
    p.add_argument("--precisions", default="fp32,bf16,fp16", help="fp32 and the half type each group uses")
    p.add_argument("--modes", default="jit,eager,compile", help="jit (JAX), eager and compile (PyTorch)")
    p.add_argument(
        "--reference", help="checkout of TeCSAR-UNCC/EfficientHRNet (the reference group needs it)"
    )
    p.add_argument("--e2e-levels", nargs="*", default=["H-4", "H0"], help="levels timed image → people")
    p.add_argument("--input-size", type=int, help="override every level's native resolution (smoke runs)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--train-batch", type=int, default=16, help="training batch (0: no training figures)")
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--json", default="gpu.json")
    p.add_argument("--markdown", default="gpu.md")
    p.add_argument("--worker", choices=GROUPS, help=argparse.SUPPRESS)
    p.add_argument("--rows", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.precisions = [s.strip() for s in args.precisions.split(",") if s.strip()]
    bad = [s for s in args.precisions if s not in ("fp32", "bf16", "fp16")]
    if bad:
        p.error(f"unknown precision {bad[0]!r} (fp32, bf16, fp16)")
    args.modes = [s.strip() for s in args.modes.split(",") if s.strip()]
    bad = [s for s in args.modes if s not in ("jit", "eager", "compile")]
    if bad:
        p.error(f"unknown mode {bad[0]!r} (jit, eager, compile)")
    args.groups = [s.strip() for s in args.groups.split(",") if s.strip()]
    bad = [s for s in args.groups if s not in GROUPS]
    if bad:
        p.error(f"unknown group {bad[0]!r} ({', '.join(GROUPS)})")
    if args.input_size is not None and (args.input_size <= 0 or args.input_size % 32):
        p.error(f"--input-size must be a positive multiple of 32, got {args.input_size}")
    if any(b <= 0 for b in args.batches):
        p.error(f"--batches must be positive, got {args.batches}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return _worker(args)
    groups = list(args.groups)
    if "reference" in groups and not args.reference:
        print("note: no --reference PATH, the reference group is skipped", file=sys.stderr)
        groups.remove("reference")
    if args.reference and not (Path(args.reference) / "lib" / "models" / "pose_higher_hrnet.py").is_file():
        print(f"error: {args.reference} is not a checkout of TeCSAR-UNCC/EfficientHRNet", file=sys.stderr)
        return 2
    # This process only writes files, but importing keras_ehrnet imports Keras, whose default
    # backend is TensorFlow: pick one that is installed (the workers set their own).
    os.environ.setdefault("KERAS_BACKEND", "jax" if importlib.util.find_spec("jax") else "torch")
    json_path, md_path = Path(args.json), Path(args.markdown)
    for path in (json_path, md_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "environment": _environment(args.device),
        "args": {k: v for k, v in vars(args).items() if k not in ("worker", "rows")},
        "rows": [],
        "skipped": {},
    }
    from keras_ehrnet.fileio import atomic_write_json, atomic_write_text

    rows_file = json_path.with_name(f".{json_path.name}.rows")
    rows_file.unlink(missing_ok=True)
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a]
    for group in groups:
        backend = "torch" if group == "reference" else group
        env = {**os.environ, "KERAS_BACKEND": backend}
        if args.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
            env["JAX_PLATFORMS"] = "cpu"
        print(f"[{group}] measuring …", file=sys.stderr, flush=True)
        cmd = [
            sys.executable,
            "-m",
            "evaluation.benchmark",
            "gpu",
            *passthrough,
            "--worker",
            group,
            "--rows",
            str(rows_file),
        ]
        proc = subprocess.run(
            cmd, env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            report["skipped"][group] = last[:300]
            print(f"[{group}] stopped: {last[:300]}", file=sys.stderr)
        report["rows"] = (
            [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
        )
        atomic_write_json(json_path, report)
        atomic_write_text(md_path, markdown(report))
    rows_file.unlink(missing_ok=True)
    print(markdown(report))
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0 if report["rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
