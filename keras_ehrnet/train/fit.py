"""Training on any Keras backend (TensorFlow, JAX, PyTorch): `model.fit` with the project's loss.

The tf.distribute trainer (`keras_ehrnet.train.train`) is the TensorFlow path: multi-GPU
mirrored training, the paper's schedule, COCO evaluation during training. This module is the
backend-neutral path for everything else: the same model, the same `EHRNetLoss` and the same
targets, trained by Keras' own `fit` on whichever backend `KERAS_BACKEND` selects.

Data is either in-memory arrays `(images, targets)` (images [N, R, R, 3] in [0, 255], targets the
pipeline's dict: heatmaps_quarter/half, mask_quarter/half, joints) or anything `model.fit`
accepts that yields `(images, targets)` batches: the project's tf.data pipeline
(`keras_ehrnet.data.make_dataset`, converted to NumPy by Keras on JAX/PyTorch; needs TensorFlow
installed, not as the backend), a `keras.utils.PyDataset` or a torch DataLoader.
`arrays_from_dataset` turns a few pipeline batches into arrays, e.g. to train where TensorFlow is
not installed.

Checkpoints: with `out_dir`, Keras' BackupAndRestore keeps the weights, the optimizer state and
the epoch after every epoch (two copies, so a kill while writing loses nothing); calling `fit`
again with the same `out_dir` resumes after the last finished epoch. The trained model is
written to `out_dir/final.keras` (atomically), loadable on any backend.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_ehrnet.fileio import atomic_save_model, check_writable
from keras_ehrnet.train.losses import EHRNetLoss

TARGET_KEYS = ("heatmaps_quarter", "heatmaps_half", "mask_quarter", "mask_half", "joints")
FINAL_MODEL = "final.keras"
BACKUP_DIR = "backup"


class LossModel(keras.Model):
    """The pose network with `EHRNetLoss` as its training loss (batch mean of the weighted terms).

    `model.fit(images, targets)` on this wrapper trains the wrapped network in place; the
    wrapper itself is never saved (save the network).
    """

    def __init__(self, network: keras.Model, loss: EHRNetLoss, **kwargs: Any):
        super().__init__(**kwargs)
        self.network = network
        self.ehrnet_loss = loss

    def call(self, inputs, training: bool = False):
        return self.network(inputs, training=training)

    def loss_terms(self, targets: dict, outputs) -> dict:
        """Batch means of the weighted loss terms (heatmaps_quarter, heatmaps_half, push, pull)."""
        return {k: ops.mean(v) for k, v in self.ehrnet_loss(outputs, targets).items()}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training: bool = True):
        total = sum(self.loss_terms(y, y_pred).values())
        if self.losses:  # weight regularisers, if the network has any
            total = total + ops.sum(ops.stack(self.losses))
        return total


def default_loss(model: keras.Model) -> EHRNetLoss:
    """The released loss weights for `model`'s number of joints (the tf.distribute trainer's defaults)."""
    num_joints = int(getattr(model, "num_joints", None) or model.outputs[1].shape[-1])
    return EHRNetLoss(num_joints)


def _check_targets(targets: dict, num_images: int) -> None:
    missing = [k for k in TARGET_KEYS if k not in targets]
    if missing:
        raise ValueError(f"targets lack {missing}; expected the pipeline's keys {list(TARGET_KEYS)}")
    for key in TARGET_KEYS:
        if len(targets[key]) != num_images:
            raise ValueError(f"targets[{key!r}] has {len(targets[key])} rows for {num_images} images")


def fit(
    model: keras.Model,
    data: tuple[np.ndarray, dict] | Iterable,
    *,
    epochs: int = 1,
    batch_size: int | None = None,
    steps_per_epoch: int | None = None,
    learning_rate: float = 1.5e-3,
    optimizer: keras.optimizers.Optimizer | None = None,
    loss: EHRNetLoss | None = None,
    out_dir: str | os.PathLike | None = None,
    shuffle: bool = True,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: str | int = "auto",
) -> keras.callbacks.History:
    """Train `model` in place with `model.fit` and the project's loss; returns Keras' History.

    `data`: `(images, targets)` arrays (then `batch_size` applies, default 8) or an iterable of
    `(images, targets)` batches (tf.data pipeline, PyDataset, DataLoader). `optimizer` defaults
    to Adam at `learning_rate` (the released recipe's optimizer and base rate). `out_dir`
    enables resumable checkpoints and writes `final.keras` at the end (see the module text).
    `callbacks` run after the checkpoint callback (so an epoch is saved before they see it).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    wrapper = LossModel(model, loss or default_loss(model))
    wrapper.compile(optimizer=optimizer or keras.optimizers.Adam(learning_rate))
    user_callbacks, callbacks = list(callbacks), []
    out = None
    if out_dir is not None:
        out = Path(out_dir)
        check_writable(out / FINAL_MODEL)
        callbacks.append(keras.callbacks.BackupAndRestore(str(out / BACKUP_DIR), double_checkpoint=True))
    callbacks += user_callbacks
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], dict):
        images, targets = data
        _check_targets(targets, len(images))
        # BackupAndRestore needs built variables; one symbolic build is enough.
        if not wrapper.built:
            wrapper.build(np.shape(images))
        history = wrapper.fit(
            np.asarray(images, np.float32),
            {k: np.asarray(targets[k]) for k in TARGET_KEYS},
            epochs=epochs,
            batch_size=batch_size or 8,
            steps_per_epoch=steps_per_epoch,
            shuffle=shuffle,
            callbacks=callbacks,
            verbose=verbose,
        )
    else:
        if not wrapper.built:
            shape = getattr(model, "input_shape", None)
            wrapper.build(shape)
        history = wrapper.fit(
            data, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=verbose
        )
    if out is not None:
        atomic_save_model(model, out / FINAL_MODEL)
    return history


def train_step_losses(
    model: keras.Model, images: np.ndarray, targets: dict, *, steps: int = 1, learning_rate: float = 1e-3
) -> list[float]:
    """The training loss of `steps` plain SGD steps on one batch (each measured before its update).

    Step 1 checks the training-mode forward pass and the loss; step 2 on also the gradients and
    the update: the cross-backend parity check of training (tests/test_backends.py).
    """
    wrapper = LossModel(model, default_loss(model))
    wrapper.compile(optimizer=keras.optimizers.SGD(learning_rate))
    x = np.asarray(images, np.float32)
    y = {k: np.asarray(targets[k]) for k in TARGET_KEYS}
    return [float(wrapper.train_on_batch(x, y)) for _ in range(steps)]


def arrays_from_dataset(dataset: Iterable, num_batches: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The first `num_batches` `(images, targets)` batches of a pipeline as NumPy arrays.

    For training from memory where TensorFlow is absent (write them with `np.savez` where it is
    present) and for feeding the same batch to every backend.
    """
    images, targets = [], {k: [] for k in TARGET_KEYS}
    for i, (x, y) in enumerate(dataset):
        if i >= num_batches:
            break
        images.append(np.asarray(x, np.float32))
        for k in TARGET_KEYS:
            targets[k].append(np.asarray(y[k]))
    if not images:
        raise ValueError("the dataset yielded no batch")
    return np.concatenate(images), {k: np.concatenate(v) for k, v in targets.items()}
