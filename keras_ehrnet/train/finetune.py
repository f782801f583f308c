"""Fine-tuning: start from saved weights (any number of keypoints) and freeze the backbone.

`load_initial_weights` copies every layer whose name and weight shapes match the source and
leaves the others as freshly initialised; with a different number of keypoints that is the
prediction heads ("final_quarter", "final_half" and "deconv_conv", whose input includes the
R/4 heatmaps and tags). It returns an `InitReport` saying what was and was not loaded.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import yaml

from keras_ehrnet.fileio import one_line
from keras_ehrnet.models.model import build_model, load_keras_model
from keras_ehrnet.models.scaling import DROP_CONNECT_RATE
from keras_ehrnet.train.config import ConfigError

BACKBONE_PATTERN = re.compile(r"^(stem_|block\d+_)")
HEAD_LAYERS = ("final_quarter", "final_half", "deconv_conv")


@dataclass
class InitReport:
    """What `load_initial_weights` did, layer by layer."""

    source: str
    loaded: list[str] = field(default_factory=list)
    not_loaded: dict[str, str] = field(default_factory=dict)  # layer → reason
    unused: list[str] = field(default_factory=list)  # source layers the model has no place for
    source_num_joints: int | None = None
    num_joints: int | None = None

    @property
    def num_loaded(self) -> int:
        return len(self.loaded)

    def summary(self) -> str:
        """A readable report (printed by the trainer)."""
        total = len(self.loaded) + len(self.not_loaded)
        lines = [f"init from {self.source}: loaded {len(self.loaded)}/{total} layers with weights"]
        if self.source_num_joints is not None and self.source_num_joints != self.num_joints:
            lines.append(f"  keypoints {self.source_num_joints} → {self.num_joints}: heads re-initialised")
        for name, reason in self.not_loaded.items():
            lines.append(f"  not loaded (kept fresh init): {name}: {reason}")
        if self.unused:
            shown = ", ".join(self.unused[:10]) + (" …" if len(self.unused) > 10 else "")
            lines.append(f"  unused in source ({len(self.unused)}): {shown}")
        return "\n".join(lines)


def _layers_with_weights(model: keras.Model) -> dict[str, keras.layers.Layer]:
    return {layer.name: layer for layer in model.layers if layer.weights}


def _num_joints(model) -> int | None:
    value = getattr(model, "num_joints", None)
    return int(value) if value is not None else None


def _copy_by_name(model: keras.Model, source: keras.Model, report: InitReport) -> InitReport:
    src = _layers_with_weights(source)
    dst = _layers_with_weights(model)
    for name, layer in dst.items():
        if name not in src:
            report.not_loaded[name] = "no layer of that name in the source"
            continue
        values = src[name].get_weights()
        shapes = [tuple(v.shape) for v in layer.weights]
        got = [tuple(v.shape) for v in values]
        if got != shapes:
            report.not_loaded[name] = f"shapes {got} in the source, {shapes} here"
            continue
        layer.set_weights(values)
        report.loaded.append(name)
    report.unused = [name for name in src if name not in dst]
    return report


def _load_h5_by_position(model: keras.Model, path: Path, report: InitReport) -> InitReport:
    """A .weights.h5 is keyed by layer order, not name: load with skip_mismatch and find the
    variables it left alone by pre-filling them with NaN."""
    original = [v.numpy() for v in model.weights]
    for v in model.weights:
        if v.dtype.startswith("float"):
            v.assign(np.full(v.shape, np.nan, v.dtype))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.load_weights(str(path), skip_mismatch=True)
    except Exception:
        for v, value in zip(model.weights, original):
            v.assign(value)
        raise
    index = {id(v): i for i, v in enumerate(model.weights)}
    for layer in _layers_with_weights(model).values():
        stale = [w for w in layer.weights if w.dtype.startswith("float") and np.isnan(w.numpy()).any()]
        if stale:
            for w in layer.weights:
                w.assign(original[index[id(w)]])
            report.not_loaded[layer.name] = "no weights of matching shape at its position in the file"
        else:
            report.loaded.append(layer.name)
    return report


def _source_model_from_workdir(path: Path) -> keras.Model:
    """Rebuild the model of a training workdir (its config.yaml) and restore its latest checkpoint."""
    import tensorflow as tf

    workdir = path if (path / "config.yaml").is_file() else path.parent
    config_file = workdir / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: not a training workdir (no config.yaml next to the checkpoints)")
    model_cfg = (yaml.safe_load(config_file.read_text()) or {}).get("model", {})
    source = build_model(
        model_cfg.get("level", "H0"),
        num_joints=int(model_cfg.get("num_joints", 17)),
        tag_per_joint=bool(model_cfg.get("tag_per_joint", True)),
        # the Dropout layers it adds or leaves out shift the checkpoint's layer numbering
        drop_connect_rate=float(model_cfg.get("drop_connect_rate", DROP_CONNECT_RATE)),
    )
    ckpt_dir = path if path != workdir else workdir / "checkpoints"
    latest = tf.train.latest_checkpoint(str(ckpt_dir))
    if latest is None:
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint to initialise from")
    tf.train.Checkpoint(model=source).restore(latest).expect_partial()
    return source


def load_initial_weights(model: keras.Model, path: str | os.PathLike) -> InitReport:
    """Initialise `model` from a `.keras` model, a `.weights.h5` file or a training workdir.

    `.keras` files and workdirs are matched by layer name (so a backbone classifier built by
    `build_backbone_classifier` fills "stem_*"/"block*_*"); `.weights.h5` files, which Keras
    keys by layer position, must come from a model of the same level (any keypoint count).
    Layers whose weights do not fit keep their fresh initialisation.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--init: no such file or folder: {path}")
    report = InitReport(source=str(path), num_joints=_num_joints(model))
    if path.is_dir():
        try:
            source = _source_model_from_workdir(path)
        except (FileNotFoundError, ConfigError):
            raise
        except Exception as err:
            raise ConfigError(
                f"--init {path}: cannot restore the workdir's checkpoint: {one_line(err)}"
            ) from None
    elif path.name.endswith(".keras"):
        source = _load_keras_source(path)
    elif path.name.endswith(".h5"):
        _check_h5(path)
        try:
            _load_h5_by_position(model, path, report)
        except Exception as err:
            raise ConfigError(f"--init {path}: cannot read the weights: {one_line(err)}") from None
        return _check_fits(report)
    else:
        raise ConfigError(f"--init {path}: expected a .keras file, a .weights.h5 file or a training workdir")
    report.source_num_joints = _num_joints(source)
    return _check_fits(_copy_by_name(model, source, report))


def _load_keras_source(path: Path) -> keras.Model:
    """Load a `.keras` file, saying what is wrong with one that is not a Keras model archive."""
    try:
        return load_keras_model(path)
    except ValueError as err:
        raise ConfigError(f"--init {err}") from None


def _check_h5(path: Path) -> None:
    import h5py

    if path.stat().st_size == 0:
        raise ConfigError(f"--init {path}: the file is empty (0 bytes); was its writing interrupted?")
    if not h5py.is_hdf5(str(path)):
        raise ConfigError(f"--init {path}: not an HDF5 weights file (truncated or another format?)")


def _check_fits(report: InitReport) -> InitReport:
    """Refuse a source of another architecture: nothing loaded, or a layer other than the
    prediction heads (which change with the keypoint count) has weights of other shapes."""
    mismatched = {
        name: reason
        for name, reason in report.not_loaded.items()
        if name not in HEAD_LAYERS and not reason.startswith("no layer of that name")
    }
    if report.num_loaded == 0 or mismatched:
        first = next(iter(mismatched.items() or report.not_loaded.items()), None)
        detail = f"first mismatch: {first[0]}: {first[1]}" if first else "it has no layers with weights"
        raise ConfigError(
            f"--init {report.source}: does not fit this model (another level or architecture?); "
            f"{report.num_loaded} layer(s) loaded, {detail}"
        )
    return report


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The EfficientNet backbone: layers named "stem_*" and "block<i>_*"."""
    return [layer for layer in model.layers if BACKBONE_PATTERN.match(layer.name)]


def freeze_backbone(model: keras.Model) -> int:
    """Make the backbone non-trainable; its BatchNorm layers then run in inference mode
    (Keras uses moving statistics in non-trainable BatchNorm). Returns the layers frozen."""
    layers = backbone_layers(model)
    for layer in layers:
        layer.trainable = False
    return len(layers)
