"""What a training run shows and records: a progress bar, TensorBoard, a JSON-lines history."""

from __future__ import annotations

import importlib
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from keras_ehrnet._tf import tf
from keras_ehrnet.fileio import atomic_write_text

summary_pb2 = importlib.import_module("tensorflow.core.framework.summary_pb2")

SHORT_NAMES = {
    "loss": "loss",
    "heatmaps_quarter": "hm4",
    "heatmaps_half": "hm2",
    "push": "push",
    "pull": "pull",
    "l2": "l2",
}


def _metadata(plugin: str, data_class: int, description: str = "") -> summary_pb2.SummaryMetadata:
    return summary_pb2.SummaryMetadata(
        summary_description=description,
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin, content=b""),
        data_class=data_class,
    )


def write_scalar(name: str, value: float, step: int) -> None:
    """A TensorBoard scalar into the default writer, without needing the tensorboard package
    (TF ≥ 2.20 no longer installs it; `tf.summary.scalar` would refuse to run)."""
    tf.summary.write(
        name,
        tf.constant(value, tf.float32),
        step=step,
        metadata=_metadata("scalars", summary_pb2.DATA_CLASS_SCALAR),
    )


def write_images(name: str, images: np.ndarray, step: int, description: str = "") -> None:
    """uint8 [N, H, W, 3] as a TensorBoard image summary (the images plugin's PNG layout)."""
    height, width = images.shape[1:3]
    encoded = [tf.io.encode_png(image) for image in images]
    tensor = tf.stack([tf.constant(str(width)), tf.constant(str(height)), *encoded])
    metadata = _metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE, description)
    tf.summary.write(name, tensor, step=step, metadata=metadata)


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return tf.image.resize(image, size, method="nearest").numpy()


def heatmap_panel(
    images: np.ndarray,
    targets: Mapping[str, np.ndarray],
    outputs,
    num_joints: int,
    max_images: int = 2,
    min_height: int = 192,
) -> np.ndarray:
    """uint8 [N, H, 5·W, 3] strips: image | target R/4 | predicted R/4 | target R/2 | predicted R/2.

    Tiles are R/2 in size, enlarged by a whole factor to at least `min_height` rows so that
    small training inputs stay readable. Heatmaps are the maximum over joints, drawn in red
    over a darkened copy of the image.
    """
    quarter, half = (np.asarray(o, np.float32) for o in outputs)
    n = min(max_images, len(images))
    h, w = half.shape[1:3]
    factor = max(1, -(-min_height // h))
    h, w = h * factor, w * factor
    strips = []
    for i in range(n):
        base = _resize(np.asarray(images[i], np.float32), (h, w)) / 255.0
        tiles = [base]
        for heat in (
            np.asarray(targets["heatmaps_quarter"][i]),
            quarter[i, ..., :num_joints],
            np.asarray(targets["heatmaps_half"][i]),
            half[i, ..., :num_joints],
        ):
            peak = np.clip(_resize(heat.max(axis=-1, keepdims=True), (h, w)), 0.0, 1.0)
            tile = base * 0.35
            tile[..., 0:1] = np.maximum(tile[..., 0:1], peak)
            tiles.append(tile)
        strips.append(np.concatenate(tiles, axis=1))
    return (np.stack(strips) * 255).round().astype(np.uint8)


class TrainMonitor:
    """Progress bar (loss terms, learning rate, images/s, rate and ETA), TensorBoard scalars and
    heatmap images, and `history.jsonl` (one line per step, appended, so resumed runs continue it;
    each line goes out whole, so a killed run leaves no half row).

    With `workdir=None` (non-chief workers) nothing is shown or written.
    """

    def __init__(
        self,
        workdir: str | Path | None,
        *,
        progress: bool = True,
        every_steps: int = 20,
        images_every_steps: int = 500,
    ):
        self.active = workdir is not None
        self.progress = progress and self.active
        self.every_steps = every_steps
        self.images_every_steps = images_every_steps
        self.history: list[dict] = []
        self._bar = None
        self._writer = None
        self._history_file = None
        self._rate: float | None = None
        if self.active:
            workdir = Path(workdir)
            self._writer = tf.summary.create_file_writer(str(workdir / "tensorboard"))
            self._history_path = workdir / "history.jsonl"
            self._history_file = self._open_history()

    def _open_history(self):
        # line-buffered: every row is one write(), whole or absent after a kill
        return open(self._history_path, "a", buffering=1)  # noqa: SIM115  (closed in close())

    def keep_until(self, step: int) -> int:
        """Drop `history.jsonl` rows after optimizer step `step` (a resumed run trains them again)
        and lines that are not JSON; returns how many lines were dropped."""
        if not self.active:
            return 0
        self._history_file.close()
        kept, dropped = [], 0
        for line in self._history_path.read_text().splitlines():
            try:
                row_step = int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                dropped += 1
                continue
            if row_step <= step:
                kept.append(line + "\n")
            else:
                dropped += 1
        if dropped:
            atomic_write_text(self._history_path, "".join(kept))
        self._history_file = self._open_history()
        return dropped

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int = 0) -> None:
        if self.progress:
            self._bar = tqdm(
                total=steps, initial=done, desc=f"epoch {epoch + 1}/{epochs}", unit="step", dynamic_ncols=True
            )

    def step(
        self, step: int, epoch: int, logs: Mapping[str, float], lr: float, images: int, seconds: float
    ) -> dict:
        """Record one training step (`step` counts from 1); returns the history row."""
        rate = images / seconds if seconds > 0 else float("nan")
        self._rate = (
            rate if self._rate is None or not math.isfinite(self._rate) else 0.9 * self._rate + 0.1 * rate
        )
        row = {"step": step, "epoch": epoch, **{k: float(v) for k, v in logs.items()}, "lr": float(lr)}
        row["images_per_sec"] = rate
        row["time"] = time.time()
        self.history.append(row)
        if not self.active:
            return row
        self._history_file.write(json.dumps(row) + "\n")
        if self._bar is not None:
            shown = {SHORT_NAMES.get(k, k): f"{v:.3g}" for k, v in logs.items()}
            shown["lr"] = f"{lr:.2g}"
            shown["img/s"] = f"{self._rate:.1f}"
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(1)
        if step % self.every_steps == 0:
            if self._bar is None:
                terms = " ".join(f"{SHORT_NAMES.get(k, k)} {v:.4g}" for k, v in logs.items())
                print(
                    f"epoch {epoch + 1} step {step}: {terms} lr {lr:.3g} img/s {self._rate:.1f}", flush=True
                )
            self._history_file.flush()
            with self._writer.as_default():
                for name, value in logs.items():
                    write_scalar(f"train/{name}", value, step)
                write_scalar("train/learning_rate", lr, step)
                write_scalar("train/images_per_sec", rate, step)
        return row

    def want_images(self, step: int) -> bool:
        return self.active and self.images_every_steps > 0 and step % self.images_every_steps == 0

    def images(self, step: int, panel: np.ndarray) -> None:
        if self.active:
            with self._writer.as_default():
                write_images(
                    "train/heatmaps",
                    panel,
                    step,
                    "image | target R/4 | predicted R/4 | target R/2 | predicted R/2",
                )

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "val") -> None:
        if self.active:
            with self._writer.as_default():
                for name, value in values.items():
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        write_scalar(f"{prefix}/{name}", value, step)
            self._writer.flush()

    def message(self, text: str) -> None:
        """A line of text that does not break the progress bar."""
        if not self.active:
            return
        if self._bar is not None:
            tqdm.write(text)
        else:
            print(text, flush=True)

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.active:
            self._history_file.flush()
            self._writer.flush()

    def close(self) -> None:
        self.end_epoch()
        if self.active:
            self._history_file.close()
            self._writer.close()
            self.active = False
