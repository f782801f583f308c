"""Training configuration: typed sections, YAML loading, dotted overrides, validation.

A config file has the sections below (every key optional; defaults are the paper's
recipe for H0). Unknown sections or keys, wrong types and impossible values raise
`ConfigError` naming the file and the key, with a suggestion for misspellings.

    model:      level, num_joints, tag_per_joint, hr_init, drop_connect_rate, backbone_weights
    data:       train/val annotation files and image folders, input_size, batch_size
                (per replica), sigma, max_people, augmentation ranges, ...
    loss:       heatmap_factors, push_factor, pull_factor, ae_type
    optimizer:  learning_rate, weight_decay (+ mode), lr_steps, lr_factor, warm-up, clipping
    train:      epochs, seed, mixed_precision, strategy, workdir, resume, init, freeze_backbone
    checkpoint: every_steps, every_epochs, keep
    logging:    every_steps, images_every_steps, progress
    validation: every_epochs, flip, input_size, scales, max_images
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from keras_ehrnet.data.validate import keypoint_categories, load_annotation_json
from keras_ehrnet.fileio import atomic_write_text
from keras_ehrnet.keypoints import find_dataset_info
from keras_ehrnet.models.scaling import DROP_CONNECT_RATE, HR_INITS, check_drop_connect_rate, get_config
from keras_ehrnet.weights.pretrained import check_backbone_weights


class ConfigError(ValueError):
    """A training configuration that cannot be used; the message names the file and key."""


@dataclass
class ModelConfig:
    """Which EfficientHRNet to train."""

    level: float | str = "H0"  # "H0" … "H-4" or a compound coefficient φ
    # keypoints per person; None: from the training annotations (`resolve_num_joints`)
    num_joints: int | None = None
    tag_per_joint: bool = True
    hr_init: str = "released"  # or "he": the HR part initialised like the backbone (from scratch)
    drop_connect_rate: float = DROP_CONNECT_RATE  # backbone stochastic depth (released: 0.2)
    # start the backbone from ImageNet: "imagenet" (H0, Keras' EfficientNetB0) or a weights file
    # (see keras_ehrnet.weights.pretrained); train.init, if given, is loaded over it; --resume skips it
    backbone_weights: str | None = None


@dataclass
class DataConfig:
    """Where the data is and how it is turned into training batches (paper §4.2.2)."""

    train_ann: str | None = None
    train_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None
    input_size: int = 512
    batch_size: int = 1  # per replica (the reference's IMAGES_PER_GPU)
    sigma: float = 2.0
    max_people: int = 30
    flip_prob: float = 0.5
    max_rotation: float = 30.0
    min_scale: float = 0.75
    max_scale: float = 1.5
    scale_type: str = "short"
    max_translate: float = 40.0
    # the loss ignores the black border beyond the image (as the reference); False teaches
    # the network that borders hold nobody, for models that will see letterboxed inputs
    ignore_padding: bool = True
    skip_invalid: bool = False
    # image files checked before the first step: "header" (size, not cut short), "full" (decoded), "off"
    validate_images: str = "header"
    cache: bool = False
    # left/right keypoint pairs swapped by horizontal flips (training and flip test), as names
    # or 0-based indices; default: inferred from left_*/right_* keypoint names
    flip_pairs: list[list[int | str]] | None = None


@dataclass
class LossConfig:
    """Loss weights: heatmaps at (R/4, R/2), associative-embedding push and pull at R/4."""

    heatmap_factors: list[float] = field(default_factory=lambda: [1.0, 1.0])
    push_factor: float = 1e-3
    pull_factor: float = 1e-3
    ae_type: str = "exp"


@dataclass
class OptimizerConfig:
    """Adam with step decay at epoch boundaries, optional warm-up and gradient clipping."""

    learning_rate: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-8  # PyTorch's Adam default, which the reference used
    weight_decay: float = 1e-4
    weight_decay_mode: str = "decoupled"  # decoupled (AdamW) | coupled (L2 in the loss) | none
    lr_steps: list[float] = field(default_factory=lambda: [200, 260])  # epochs
    lr_factor: float = 0.1
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.001
    clip_norm: float | None = None  # clip the global gradient norm (after all-reduce)
    # keep an exponential moving average of the weights (Keras' use_ema); validation, best.keras
    # and final.keras then use the averaged weights. null: off
    ema_momentum: float | None = None


@dataclass
class TrainSection:
    """How long, where and on what hardware to train."""

    epochs: int = 300
    steps_per_epoch: int | None = None  # default: one pass over the training images
    seed: int = 0
    mixed_precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16
    strategy: str = "auto"  # auto | default | one_device | mirrored | multi_worker
    sync_batchnorm: bool = False
    freeze_backbone: bool = False
    init: str | None = None  # .keras / .weights.h5 / training workdir to start from
    resume: bool = False
    workdir: str = "runs/train"


@dataclass
class CheckpointConfig:
    """When to write checkpoints and how many to keep."""

    every_steps: int = 1000
    every_epochs: int = 1  # also at the end of every that many epochs (and of the last one)
    keep: int = 3


@dataclass
class LoggingConfig:
    """Progress bar, TensorBoard scalars and heatmap images."""

    every_steps: int = 20
    images_every_steps: int = 500
    progress: bool = True


@dataclass
class ValidationConfig:
    """Periodic COCO AP on the validation set (when data.val_ann is given)."""

    every_epochs: int = 10
    flip: bool = True
    input_size: int | None = None  # default: data.input_size
    scales: list[float] = field(default_factory=lambda: [1.0])
    max_images: int | None = None
    oks_sigmas: list[float] | None = None  # per keypoint; default COCO's (17) or 0.0669 each


@dataclass
class TrainConfig:
    """Everything a training run needs; `load_config` reads it from YAML."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (YAML-ready)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write the YAML atomically (a kill never leaves a half-written config)."""
        atomic_write_text(path, self.to_yaml())


MIXED_PRECISION = {
    "float32": "float32",
    "none": "float32",
    "float16": "mixed_float16",
    "mixed_float16": "mixed_float16",
    "bfloat16": "mixed_bfloat16",
    "mixed_bfloat16": "mixed_bfloat16",
}
STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker")
WEIGHT_DECAY_MODES = ("decoupled", "coupled", "none")


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check/convert a YAML value to the annotated type of a config field."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if number != int(number):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(number)
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, (dict, list, tuple)) or value is None:
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _section_hints(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def _update_section(section: Any, values: Mapping[str, Any], where: str) -> None:
    hints = _section_hints(type(section))
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(
                f"{where}: unknown key {key!r}{_suggest(str(key), hints)}; known: {sorted(hints)}"
            )
        setattr(section, key, _coerce(value, hints[key], f"{where}.{key}"))


def config_from_dict(values: Mapping[str, Any], source: str = "<dict>") -> TrainConfig:
    """A validated TrainConfig from nested {section: {key: value}}; `source` names it in errors."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(values).__name__}")
    config = TrainConfig()
    sections = _section_hints(TrainConfig)
    for name, body in values.items():
        if name not in sections:
            raise ConfigError(
                f"{source}: unknown section {name!r}{_suggest(str(name), sections)}; known: {sorted(sections)}"
            )
        if body is None:
            continue
        if not isinstance(body, Mapping):
            raise ConfigError(f"{source}: section {name!r} must be a mapping, got {body!r}")
        _update_section(getattr(config, name), body, f"{source}: {name}")
    validate(config, source)
    return config


def load_config(path: str | os.PathLike, overrides: Iterable[str] | Mapping[str, Any] = ()) -> TrainConfig:
    """Read a YAML training config, apply `overrides` ("section.key=value" or a mapping), validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    config = config_from_dict(values, str(path))
    return apply_overrides(config, overrides) if overrides else config


def parse_override(text: str) -> tuple[str, Any]:
    """ "section.key=value" → ("section.key", YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(
    config: TrainConfig, overrides: Iterable[str] | Mapping[str, Any], source: str = "override"
) -> TrainConfig:
    """A copy of `config` with dotted overrides applied ({"data.batch_size": 8} or ["data.batch_size=8"])."""
    items = overrides.items() if isinstance(overrides, Mapping) else [parse_override(o) for o in overrides]
    config = dataclasses.replace(
        config, **{s: dataclasses.replace(getattr(config, s)) for s in _section_hints(TrainConfig)}
    )
    sections = _section_hints(TrainConfig)
    for dotted, value in items:
        if "." not in dotted:
            raise ConfigError(f"{source} {dotted!r}: expected section.key (sections: {sorted(sections)})")
        name, key = dotted.split(".", 1)
        if name not in sections:
            raise ConfigError(f"{source} {dotted!r}: unknown section {name!r}{_suggest(name, sections)}")
        _update_section(getattr(config, name), {key: value}, f"{source} {name}")
    validate(config, source)
    return config


def resolve_num_joints(config: TrainConfig, announce: Callable[[str], None] | None = print) -> TrainConfig:
    """`config` with model.num_joints set: as given, or (when unset) the keypoint count of
    data.train_ann's keypoint category, said in one line through `announce`; COCO's 17
    without training annotations. A given value that disagrees with the data is refused
    later, naming both numbers and the file (`CocoKeypoints`)."""
    if config.model.num_joints is not None:
        return config
    num_joints, origin = 17, "COCO's, no data.train_ann"
    if config.data.train_ann:
        path = config.data.train_ann
        names = keypoint_categories(load_annotation_json(path), path)[0]["keypoints"]
        info = find_dataset_info(names)
        num_joints, origin = len(names), f"from {path}" + (f", {info.name}'s keypoints" if info else "")
    if announce is not None:
        announce(f"model.num_joints: {num_joints} ({origin})")
    return apply_overrides(config, {"model.num_joints": num_joints}, source="resolve_num_joints")


def validate(config: TrainConfig, source: str = "config") -> None:
    """Refuse impossible settings with a message naming the key and value."""

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{source}: {key} {message}")

    try:
        get_config(config.model.level, num_joints=max(config.model.num_joints or 17, 1))
    except (ValueError, TypeError) as err:
        fail("model.level", f"= {config.model.level!r} is not a level: {err}")
    if config.model.num_joints is not None and config.model.num_joints < 1:
        fail("model.num_joints", f"must be >= 1, got {config.model.num_joints}")
    if config.model.hr_init not in HR_INITS:
        fail("model.hr_init", f"must be one of {HR_INITS}, got {config.model.hr_init!r}")
    if config.model.backbone_weights is not None:
        try:
            check_backbone_weights(
                get_config(config.model.level), config.model.backbone_weights, file_must_exist=False
            )
        except ValueError as err:
            fail("model.backbone_weights", f"= {config.model.backbone_weights!r}: {err}")
    try:
        check_drop_connect_rate(config.model.drop_connect_rate)
    except ValueError:
        fail("model.drop_connect_rate", f"must be in [0, 1), got {config.model.drop_connect_rate!r}")
    d = config.data
    if d.input_size <= 0 or d.input_size % 32:
        fail("data.input_size", f"must be a positive multiple of 32, got {d.input_size}")
    if d.batch_size < 1:
        fail("data.batch_size", f"must be >= 1, got {d.batch_size}")
    if d.sigma <= 0:
        fail("data.sigma", f"must be > 0, got {d.sigma}")
    if d.max_people < 1:
        fail("data.max_people", f"must be >= 1, got {d.max_people}")
    if not 0 <= d.flip_prob <= 1:
        fail("data.flip_prob", f"must be in [0, 1], got {d.flip_prob}")
    if not 0 < d.min_scale <= d.max_scale:
        fail("data.min_scale/max_scale", f"need 0 < min_scale <= max_scale, got {d.min_scale}, {d.max_scale}")
    if d.scale_type not in ("short", "long"):
        fail("data.scale_type", f"must be 'short' or 'long', got {d.scale_type!r}")
    if d.validate_images not in ("header", "full", "off"):
        fail("data.validate_images", f"must be 'header', 'full' or 'off', got {d.validate_images!r}")
    if (d.val_ann is None) != (d.val_images is None):
        fail("data.val_ann/val_images", "must be given together")
    if d.flip_pairs is not None:
        for pair in d.flip_pairs:
            if len(pair) != 2:
                fail("data.flip_pairs", f"needs pairs of two keypoints, got {pair!r}")
    if (d.train_ann is None) != (d.train_images is None):
        fail("data.train_ann/train_images", "must be given together")
    loss = config.loss
    if len(loss.heatmap_factors) != 2:
        fail("loss.heatmap_factors", f"needs two weights (R/4, R/2), got {loss.heatmap_factors}")
    if loss.ae_type not in ("exp", "max"):
        fail("loss.ae_type", f"must be 'exp' or 'max', got {loss.ae_type!r}")
    o = config.optimizer
    if o.learning_rate <= 0:
        fail("optimizer.learning_rate", f"must be > 0, got {o.learning_rate}")
    if o.weight_decay < 0:
        fail("optimizer.weight_decay", f"must be >= 0, got {o.weight_decay}")
    if o.weight_decay_mode not in WEIGHT_DECAY_MODES:
        fail(
            "optimizer.weight_decay_mode", f"must be one of {WEIGHT_DECAY_MODES}, got {o.weight_decay_mode!r}"
        )
    if list(o.lr_steps) != sorted(o.lr_steps) or any(s <= 0 for s in o.lr_steps):
        fail("optimizer.lr_steps", f"must be increasing positive epochs, got {o.lr_steps}")
    if not 0 < o.lr_factor <= 1:
        fail("optimizer.lr_factor", f"must be in (0, 1], got {o.lr_factor}")
    if o.warmup_epochs < 0 or not 0 < o.warmup_start_factor <= 1:
        fail(
            "optimizer.warmup_*",
            f"need warmup_epochs >= 0 and 0 < start factor <= 1, got {o.warmup_epochs}, {o.warmup_start_factor}",
        )
    if o.clip_norm is not None and o.clip_norm <= 0:
        fail("optimizer.clip_norm", f"must be > 0 or null, got {o.clip_norm}")
    if o.ema_momentum is not None and not 0 < o.ema_momentum < 1:
        fail("optimizer.ema_momentum", f"must be in (0, 1) or null, got {o.ema_momentum}")
    t = config.train
    if t.epochs < 1:
        fail("train.epochs", f"must be >= 1, got {t.epochs}")
    if t.steps_per_epoch is not None and t.steps_per_epoch < 1:
        fail("train.steps_per_epoch", f"must be >= 1 or null, got {t.steps_per_epoch}")
    if str(t.mixed_precision).lower() not in MIXED_PRECISION:
        fail(
            "train.mixed_precision",
            f"must be one of {sorted(set(MIXED_PRECISION))}, got {t.mixed_precision!r}",
        )
    if t.strategy not in STRATEGIES:
        fail("train.strategy", f"must be one of {STRATEGIES}, got {t.strategy!r}")
    ck = config.checkpoint
    if ck.every_steps < 1 or ck.every_epochs < 1 or ck.keep < 1:
        fail(
            "checkpoint.every_steps/every_epochs/keep",
            f"must be >= 1, got {ck.every_steps}/{ck.every_epochs}/{ck.keep}",
        )
    if config.logging.every_steps < 1 or config.logging.images_every_steps < 0:
        fail("logging.every_steps/images_every_steps", "must be >= 1 / >= 0")
    v = config.validation
    if v.every_epochs < 1:
        fail("validation.every_epochs", f"must be >= 1, got {v.every_epochs}")
    if v.input_size is not None and (v.input_size <= 0 or v.input_size % 32):
        fail("validation.input_size", f"must be a positive multiple of 32, got {v.input_size}")
