"""Evidence that training works: an overfitting run on real images, and its curves.

`overfit` trains on a small COCO-format set and scores COCO AP on the same images before and
after; `plot_losses` draws its loss and AP curves, `plot_ap_curves` compares runs by step.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keras_ehrnet._tf import tf
from keras_ehrnet.fileio import atomic_save_model, atomic_write_json
from keras_ehrnet.metrics.benchmarking import CpuMeter, machine_info
from keras_ehrnet.metrics.coco import evaluate_coco
from keras_ehrnet.metrics.reporting import pyplot, save_figure
from keras_ehrnet.train.config import TrainConfig, apply_overrides, config_from_dict, resolve_num_joints
from keras_ehrnet.train.trainer import CocoTrainData, Trainer, TrainResult


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` values (the first window - 1 values are dropped)."""
    return np.convolve(values, np.ones(window) / window, mode="valid") if window > 1 else values


def lr_change_steps(history: Sequence[dict]) -> list[int]:
    """Steps at which the logged learning rate changed (where a curve is expected to bend)."""
    return [
        int(row["step"])
        for prev, row in zip(history, history[1:])
        if "lr" in row and not np.isclose(row["lr"], prev["lr"], rtol=1e-3)
    ]


AP_AXES = {"step": "training step", "images": "images seen"}


def ap_points(metrics: dict[str, Any], by: str = "step") -> list[tuple[int, float]]:
    """(x, AP) of an overfit run: before training (x = 0), each validation, and the end.

    x is the step (`by="step"`) or the number of training images seen (`by="images"`,
    step × global batch from the run's config), which lines up runs made with different
    batch sizes: how much a run has learnt follows the images it has seen more than its steps.
    """
    if by not in AP_AXES:
        raise ValueError(f"by must be one of {tuple(AP_AXES)}, got {by!r}")
    scale = 1
    if by == "images":
        batch = ((metrics.get("config") or {}).get("data") or {}).get("batch_size")
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"no batch size in the run's config (config.data.batch_size: {batch!r})")
        scale = batch
    points = {0: float(metrics["AP_before"])} if metrics.get("AP_before") is not None else {}
    for row in metrics.get("AP_curve") or []:
        if row.get("step") is not None and row.get("AP") is not None:
            points[int(row["step"]) * scale] = float(row["AP"])
    if metrics.get("AP_after") is not None and metrics.get("steps") is not None:
        points[int(metrics["steps"]) * scale] = float(metrics["AP_after"])
    return sorted(points.items())


def load_overfit_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """An overfit run's metrics.json (given itself or its folder), checked to hold AP figures."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"no overfit metrics at {path}")
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    missing = [
        k for k in ("AP_before", "AP_after", "steps") if not isinstance(metrics, dict) or k not in metrics
    ]
    if missing:
        raise ValueError(f"{path}: not the metrics of `python -m training.overfit` (no {', '.join(missing)})")
    return metrics


def plot_losses(
    history: Sequence[dict],
    path: str | os.PathLike,
    title: str = "training loss",
    ap_curve: Sequence[tuple[int, float]] | None = None,
    ap_target: float | None = None,
) -> Path:
    """PNG of the loss and its terms per step (log scales), and of AP per step when `ap_curve` is given.

    The terms are drawn as moving averages on a log scale (single steps of the push term are
    often exactly 0); dotted lines mark the steps where the learning rate changed.
    """
    plt = pyplot()
    steps = np.array([row["step"] for row in history])
    panels = 3 if ap_curve else 2
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5))
    loss = np.array([row["loss"] for row in history])
    window = max(1, len(loss) // 50)
    axes[0].plot(steps, loss, color="0.75", lw=0.8, label="loss per step")
    if window > 1:
        axes[0].plot(
            steps[window - 1 :],
            _moving_average(loss, window),
            color="C0",
            lw=1.8,
            label=f"moving average ({window})",
        )
    axes[0].set(xlabel="step", ylabel="loss", yscale="log", title=title)
    for i, name in enumerate(("heatmaps_quarter", "heatmaps_half", "push", "pull", "l2")):
        if history and name in history[0]:
            term = _moving_average(np.array([row[name] for row in history], dtype=float), window)
            if np.any(term > 0):
                axes[1].plot(steps[len(steps) - len(term) :], term, lw=1.2, color=f"C{i}", label=name)
    axes[1].set(
        xlabel="step",
        ylabel="weighted term" + (f" (moving average of {window})" if window > 1 else ""),
        yscale="log",
        title="loss terms",
    )
    if ap_curve:
        x, ap = zip(*ap_curve)
        axes[2].plot(x, ap, "o-", color="C3", label="COCO AP")
        for step, value in ap_curve:
            axes[2].annotate(
                f"{value:.3f}",
                (step, value),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
            )
        if ap_target is not None:
            axes[2].axhline(ap_target, color="0.4", ls="--", lw=1, label=f"target {ap_target:g}")
        axes[2].set(
            xlabel="step",
            ylabel="AP",
            ylim=(0, max(max(ap), ap_target or 0) * 1.15 + 0.02),
            title="AP on the training images",
        )
    for step in lr_change_steps(history):
        for ax in axes:
            ax.axvline(step, color="0.5", ls=":", lw=1)
    axes[0].plot([], [], color="0.5", ls=":", lw=1, label="learning rate changed")
    for ax in axes:
        ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=120)


def plot_ap_curves(
    runs: dict[str, Sequence[tuple[int, float]]],
    path: str | os.PathLike,
    ap_target: float | None = None,
    title: str = "AP on the training images",
    xlabel: str = AP_AXES["step"],
) -> Path:
    """PNG of several runs' (x, AP) curves on one axis (x from `ap_points`), to compare recipes."""
    plt = pyplot()
    if not runs:
        raise ValueError("no runs to plot")
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (label, curve) in enumerate(runs.items()):
        if not curve:
            raise ValueError(f"run {label!r} has no AP points")
        x, ap = zip(*curve)
        ax.plot(x, ap, "o-", color=f"C{i}", label=f"{label} (end {ap[-1]:.3f})")
    if ap_target is not None:
        ax.axhline(ap_target, color="0.4", ls="--", lw=1, label=f"target {ap_target:g}")
    ax.set(xlabel=xlabel, ylabel="COCO AP", title=title, ylim=(0, None))
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=120)


def _rendered_once(data: CocoTrainData, seed: int):
    """A `DatasetFn` serving the samples of one pass of `data` from memory, reshuffled per epoch
    (for runs without augmentation, where decoding and rendering again would only cost time)."""
    one = CocoTrainData(data.config, global_batch=1)
    samples = list(one(tf.distribute.InputContext(), 0).unbatch().as_numpy_iterator())
    images = np.stack([image for image, _ in samples])
    targets = {k: np.stack([t[k] for _, t in samples]) for k in samples[0][1]}

    def fn(ctx: tf.distribute.InputContext, epoch: int) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((images, targets))
        ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id).shuffle(
            len(images), seed=seed * 1000 + epoch
        )
        return ds.batch(ctx.get_per_replica_batch_size(data.global_batch), drop_remainder=True)

    return fn


OVERFIT_VIEWS = ("whole", "crop")
OVERFIT_AP_TARGET = 0.5  # the bar for the 30-minute overfitting run, drawn on its plots
# The overfitting benchmark's default: every pass shows the same pixels.
NO_AUGMENTATION = {
    "max_rotation": 0.0,
    "min_scale": 1.0,
    "max_scale": 1.0,
    "max_translate": 0.0,
    "flip_prob": 0.0,
}


def check_lr_milestones(values: Sequence[float]) -> tuple[float, ...]:
    """The overfit benchmark's LR-step fractions, checked: strictly rising, each in (0, 1)."""
    milestones = tuple(float(m) for m in values)
    if any(not 0.0 < m < 1.0 for m in milestones) or list(milestones) != sorted(set(milestones)):
        raise ValueError(f"lr_milestones must rise strictly, each in (0, 1), got {list(values)}")
    return milestones


def overfit(
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    level: str = "H-4",
    input_size: int = 256,
    batch_size: int = 8,
    epochs: int | None = None,
    minutes: float | None = 30.0,
    learning_rate: float = 2e-3,
    augment: dict[str, float] | None = None,
    overrides: dict[str, Any] | None = None,
    flip_test: bool = True,
    val_every: int = 0,
    progress: bool = True,
    view: str = "whole",
    hr_init: str = "he",
    drop_connect_rate: float = 0.0,
    lr_milestones: Sequence[float] = (0.88, 0.96),
    model_fn: Callable | None = None,
) -> dict[str, Any]:
    """Train `level` on a small keypoint set and report COCO AP on those images before and after.

    `view` says what the network sees of each image, in training and scoring alike:
    "whole" letterboxes the whole image into the R×R input (training scale type "long")
    and scores at that fixed R×R input, so every annotated person is trained on (and the
    loss covers the black borders, which the scoring shows the network);
    "crop" trains on the centred square at short side R (the paper's crop when no
    augmentation is drawn) and scores at short side R, where people outside that
    square are scored but were never seen (17 % of coco-mini's visible keypoints).
    `hr_init` initialises the HR part ("released" or "he", see `keras_ehrnet.models.blocks.BlockOptions`).
    `drop_connect_rate` is the backbone's stochastic depth: off by default, since like
    augmentation it is a regulariser, and it works against memorising the set.
    `augment` sets data.* augmentation ranges; by default there is none (`NO_AUGMENTATION`),
    as in `python -m training.overfit`. `model_fn` replaces the level's model (tests).

    The learning rate steps ×0.1 at each of `lr_milestones` (fractions, by default 88 % and
    96 %) of `epochs` when given, else of the time budget `minutes` (training then runs until
    the budget ends, whatever the machine's speed, and still gets its low-rate finish).

    Writes into `out_dir`: the training workdir (`run/`, with final.keras), `metrics.json`,
    `loss.png` and `history.json`. `minutes` caps the training time (the run then stops as on
    SIGTERM, with a checkpoint, and is evaluated as it stands). `val_every` > 0 also scores
    AP on the same images every that many epochs (the AP curve goes into metrics.json).
    """
    if view not in OVERFIT_VIEWS:
        raise ValueError(f"view must be one of {OVERFIT_VIEWS}, got {view!r}")
    if epochs is None and minutes is None:
        raise ValueError("give epochs, minutes or both: with neither the run would never end")
    milestones = check_lr_milestones(lr_milestones)  # of the epochs or of the time budget
    lr_by_time = epochs is None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    values = {
        "model": {"level": level, "hr_init": hr_init, "drop_connect_rate": drop_connect_rate},
        "data": {
            "train_ann": str(ann_file),
            "train_images": str(image_dir),
            "input_size": input_size,
            "batch_size": batch_size,
            "cache": True,
            "scale_type": "long" if view == "whole" else "short",
            # scored letterboxed: the borders must be learnt as empty, not left to chance
            "ignore_padding": view != "whole",
            **(NO_AUGMENTATION if augment is None else augment),
        },
        "optimizer": {
            "learning_rate": learning_rate,
            "lr_steps": [] if lr_by_time else [max(1, int(epochs * m)) for m in milestones],
        },
        "train": {"epochs": epochs or 10**6, "workdir": str(out / "run"), "strategy": "default"},
        # a checkpoint costs seconds: at every epoch of a few dozen images it would take a third of the time
        "checkpoint": {"every_steps": 500, "every_epochs": 50, "keep": 2},
        "logging": {"progress": progress, "every_steps": 10, "images_every_steps": 200},
    }
    config: TrainConfig = config_from_dict(values, "overfit")
    if overrides:
        config = apply_overrides(config, overrides)
    config = resolve_num_joints(config, announce=None)
    data = CocoTrainData(config, global_batch=config.data.batch_size)
    image_ids = list(data.dataset.image_ids)

    def score(model, tag: str | None = None) -> dict:
        summary = evaluate_coco(
            model,
            ann_file,
            image_dir,
            input_size=(input_size, input_size) if view == "whole" else input_size,
            flip=flip_test,
            image_ids=image_ids,
            results_path=out / f"results_{tag}.json" if tag else None,
            progress=progress and tag is not None,
            verbose=False,
        )
        return {k: v for k, v in summary.items() if isinstance(v, (int, float))}

    if val_every > 0:
        config = apply_overrides(config, {"validation.every_epochs": val_every})
    dataset_fn = data
    d = config.data
    if d.max_rotation == 0 and d.min_scale == d.max_scale == 1 and d.max_translate == 0 and d.flip_prob == 0:
        dataset_fn = _rendered_once(data, config.train.seed)  # no augmentation: every pass is the same
    trainer = Trainer(
        config, model_fn=model_fn, dataset_fn=dataset_fn, evaluate_fn=score if val_every > 0 else None
    )

    before = score(trainer.model, "before")
    timers = []
    if minutes is not None:
        timers.append(threading.Timer(minutes * 60.0, trainer.request_stop))
        if lr_by_time:
            for k, m in enumerate(milestones, start=1):
                timers.append(threading.Timer(m * minutes * 60.0, trainer.scale_learning_rate, (0.1**k,)))
    for timer in timers:
        timer.daemon = True
        timer.start()
    started = time.perf_counter()
    try:
        with CpuMeter() as meter:  # a time-budgeted result depends on what else ran
            result: TrainResult = trainer.fit()
    finally:
        for timer in timers:
            timer.cancel()
    train_seconds = time.perf_counter() - started
    with trainer.averaged_weights():  # the weights final.keras holds
        after = score(trainer.model, "after")
    history = result.history
    rates = [row["images_per_sec"] for row in history[1:]]
    metrics = {
        "level": level,
        "input_size": input_size,
        "view": view,
        "images": len(image_ids),
        "image_ids": image_ids,
        "lr_steps": f"x0.1 at {', '.join(f'{m:.0%}' for m in milestones)} of "
        + (f"{minutes:g} minutes" if lr_by_time else f"{epochs} epochs"),
        "epochs_done": result.epoch,
        "steps": result.step,
        "stopped_by_time_limit": result.interrupted,
        "train_minutes": train_seconds / 60.0,
        # a time-budgeted result is the CPU's as much as the recipe's
        "machine": machine_info(),
        "images_per_sec_median": float(np.median(rates)) if rates else None,
        **meter.result(),
        "cpu_warning": meter.warning(),
        "loss_first": history[0]["loss"] if history else None,
        "loss_last_epoch_mean": float(np.mean([r["loss"] for r in history[-trainer.steps_per_epoch :]]))
        if history
        else None,
        "AP_curve": [{k: row.get(k) for k in ("epoch", "step", "AP", "AP50")} for row in result.validation],
        "AP_before": before.get("AP"),
        "AP_after": after.get("AP"),
        "before": before,
        "after": after,
        "config": config.to_dict(),
        "final_model": str(result.final_model) if result.final_model else None,
    }
    atomic_write_json(out / "history.json", history)
    atomic_write_json(out / "metrics.json", metrics, indent=1)
    plot_losses(
        history,
        out / "loss.png",
        f"{level} at {input_size} overfitting {len(image_ids)} images",
        ap_curve=ap_points(metrics),
        ap_target=OVERFIT_AP_TARGET,
    )
    if result.final_model is None:  # stopped by the time limit: keep the model anyway
        atomic_save_model(trainer.model, out / "run" / "final.keras")
        metrics["final_model"] = str(out / "run" / "final.keras")
        atomic_write_json(out / "metrics.json", metrics, indent=1)
    return metrics
