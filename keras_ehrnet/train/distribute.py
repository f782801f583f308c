"""Choosing a tf.distribute strategy, and which worker writes files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from keras_ehrnet._tf import tf
from keras_ehrnet.train.config import ConfigError


def _tf_config_tasks() -> int:
    """Number of tasks (chief + workers) in TF_CONFIG's cluster, 0 when unset."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (json.JSONDecodeError, AttributeError) as err:
        raise ConfigError(f"TF_CONFIG is not valid JSON: {err}") from None
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """A strategy by name.

    auto: MultiWorkerMirroredStrategy when TF_CONFIG describes several machines, else
    MirroredStrategy over several GPUs, else one GPU, else the default (CPU) strategy.
    mirrored: every local GPU, or every logical CPU device when there is no GPU.
    multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG. It must be made before the
    program runs any TF op or lists devices (TF configures collectives at start-up).
    """
    if name == "auto" and _tf_config_tasks() > 1:
        name = "multi_worker"
    if name == "multi_worker":
        # Before anything else touches the TF runtime: collectives are configured at start-up.
        if _tf_config_tasks() == 0:
            raise ConfigError("strategy 'multi_worker' needs TF_CONFIG describing the cluster")
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (ValueError, KeyError) as err:  # a task missing from its cluster, a bad address …
            raise ConfigError(f"TF_CONFIG: {err}") from None
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if len(gpus) > 1:
            name = "mirrored"
        elif len(gpus) == 1:
            name = "one_device"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    raise ValueError(
        f"unknown strategy {name!r}; expected auto, default, one_device, mirrored or multi_worker"
    )


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one worker that writes checkpoints, logs and models."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def input_pipeline(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """(this worker's input pipeline id, number of pipelines): (0, 1) on one machine; across
    workers, one pipeline per worker, the chief first, as `distribute_datasets_from_function`
    numbers them (so a worker can read its share of the data before training starts)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return 0, 1
    spec = resolver.cluster_spec().as_dict()
    chiefs, workers = len(spec.get("chief", [])), len(spec.get("worker", []))
    if chiefs + workers <= 1:
        return 0, 1
    task_type = resolver.task_type
    if task_type == "chief":
        return 0, chiefs + workers
    if task_type == "worker":
        return chiefs + int(resolver.task_id), chiefs + workers
    raise ConfigError(
        f"TF_CONFIG task type {task_type!r} takes no part in training; expected chief or worker"
    )


def write_dir(base: str | os.PathLike, strategy: tf.distribute.Strategy) -> Path:
    """Where this worker writes: `base` on the chief, a scratch folder inside it elsewhere
    (every worker must take part in saving a checkpoint; only the chief's copy is kept)."""
    base = Path(base)
    if is_chief(strategy):
        return base
    resolver = strategy.cluster_resolver
    return base / f".worker-{resolver.task_type}{resolver.task_id}"


def remove_scratch(path: Path, base: str | os.PathLike) -> None:
    """Delete a non-chief scratch folder made by `write_dir`."""
    if Path(path) != Path(base):
        shutil.rmtree(path, ignore_errors=True)
