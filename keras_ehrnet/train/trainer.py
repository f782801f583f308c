"""The custom training loop: tf.GradientTape in tf.function, under any tf.distribute strategy.

    from keras_ehrnet.train import Trainer, load_config
    config = load_config("training/configs/H-4.yaml", ["data.train_ann=…", "data.train_images=…"])
    result = Trainer(config).fit()

* Losses are per-sample, summed on each replica and divided by the global batch, so the
  all-reduced gradient is the gradient of the mean over the global batch.
* Checkpoints (tf.train.CheckpointManager) hold the model, the optimizer (moments,
  iterations, loss scale), the epoch and the position inside the epoch; `resume` continues
  from exactly that batch. SIGTERM or Ctrl-C finish the current step, write a checkpoint
  and return `interrupted=True` (a second Ctrl-C while a checkpoint is written waits for
  it). A non-finite loss stops at once *without* writing, so the last checkpoint stays good.
* Any other error mid-run (an image that cannot be decoded, a TF error of the input
  pipeline, a full disk) first writes a checkpoint of the last finished step, then raises
  `TrainingFailedError` naming it; `resume` continues from there.
* `resume` needs a checkpoint in the workdir and the batch size it was written with; it drops
  `history.jsonl` rows after the restored step and what an interrupted write left behind.
* final.keras, best.keras and config.yaml are written atomically (keras_ehrnet.fileio): a
  kill at any moment leaves the previous file or the complete new one.
* Non-chief workers of a multi-worker run write into scratch folders that are removed.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_ehrnet._tf import tf
from keras_ehrnet.data import AugmentConfig, CocoKeypoints, build_dataset
from keras_ehrnet.fileio import atomic_save_model, check_writable, one_line, remove_stale_temporaries
from keras_ehrnet.keypoints import resolve_flip_index
from keras_ehrnet.metrics.coco import evaluate_coco, keypoint_category, load_coco
from keras_ehrnet.models.model import build_model
from keras_ehrnet.train.config import MIXED_PRECISION, ConfigError, TrainConfig, resolve_num_joints
from keras_ehrnet.train.distribute import input_pipeline, is_chief, make_strategy, remove_scratch, write_dir
from keras_ehrnet.train.finetune import InitReport, freeze_backbone, load_initial_weights
from keras_ehrnet.train.losses import EHRNetLoss
from keras_ehrnet.train.monitor import TrainMonitor, heatmap_panel
from keras_ehrnet.train.optim import build_optimizer, decayed_variables

DatasetFn = Callable[[tf.distribute.InputContext, int], tf.data.Dataset]
"""(input context, epoch) → one epoch of per-replica `(images, targets)` batches for one input
pipeline (`ctx.get_per_replica_batch_size(global_batch)` images each)."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and nothing was saved after it."""


class TrainingFailedError(RuntimeError):
    """Training stopped on an error after writing a checkpoint of its last finished step.

    `checkpoint`: that checkpoint (None when none could be written and none existed);
    `step`: the optimizer steps it holds; `input_error`: the error came from the input
    pipeline (bad data rather than, say, a full disk).
    """

    def __init__(self, message: str, *, checkpoint: str | None, step: int, input_error: bool):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.step = step
        self.input_error = input_error


@dataclass
class TrainResult:
    """How a `Trainer.fit` ended."""

    workdir: Path
    epoch: int  # epochs completed
    step: int  # optimizer steps done in total (global batches)
    steps_per_epoch: int
    interrupted: bool = False
    signal: int | None = None
    checkpoint: str | None = None  # latest checkpoint path
    final_model: Path | None = None
    best_model: Path | None = None
    best_ap: float | None = None
    validation: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    init_report: InitReport | None = None


class CocoTrainData:
    """The training `DatasetFn` over a COCO-format keypoint file (keras_ehrnet.data).

    `shard=(pipeline id, pipelines)` (several workers): only this worker's share of the
    records is built and checked, and only this input pipeline can be made from it.
    """

    def __init__(self, config: TrainConfig, global_batch: int, shard: tuple[int, int] | None = None):
        d = config.data
        if not d.train_ann or not d.train_images:
            raise ConfigError("data.train_ann and data.train_images are needed (--train-ann, --train-images)")
        for key, path, kind in (
            ("data.train_ann", d.train_ann, "file"),
            ("data.train_images", d.train_images, "folder"),
        ):
            p = Path(path)
            if not (p.is_file() if kind == "file" else p.is_dir()):
                raise FileNotFoundError(f"{key}: no such {kind}: {p}")
        self.config = config
        self.global_batch = global_batch
        self.dataset = CocoKeypoints(
            d.train_ann,
            d.train_images,
            num_joints=config.model.num_joints,
            flip_pairs=d.flip_pairs,
            require_annotations=True,
            skip_invalid=d.skip_invalid,
            validate_images=d.validate_images,
            shard=shard,
        )
        self.num_examples = self.dataset.shard_size * self.dataset.num_shards

    def __call__(self, ctx: tf.distribute.InputContext, epoch: int) -> tf.data.Dataset:
        d = self.config.data
        augment = AugmentConfig(
            max_rotation=d.max_rotation,
            min_scale=d.min_scale,
            max_scale=d.max_scale,
            max_translate=d.max_translate,
            flip_prob=d.flip_prob,
            scale_type=d.scale_type,
        )
        return build_dataset(
            self.dataset,
            input_size=d.input_size,
            batch_size=self.global_batch,
            training=True,
            augment=augment,
            shuffle=d.shuffle,
            seed=self.config.train.seed,
            epoch=epoch,
            epochs=1,
            cache=d.cache,
            skip_invalid=d.skip_invalid,
            max_people=d.max_people,
            sigma=d.sigma,
            ignore_padding=d.ignore_padding,
            input_context=ctx,
        )


def coco_validation(config: TrainConfig) -> Callable[[keras.Model], dict]:
    """`evaluate_fn` computing COCO AP on data.val_ann / data.val_images."""
    d, v = config.data, config.validation
    for key, path, is_file in (("data.val_ann", d.val_ann, True), ("data.val_images", d.val_images, False)):
        p = Path(path)
        if not (p.is_file() if is_file else p.is_dir()):
            raise FileNotFoundError(f"{key}: no such {'file' if is_file else 'folder'}: {p}")
    flip_index = None
    if d.flip_pairs is not None:
        names = keypoint_category(load_coco(d.val_ann))["keypoints"]
        flip_index = resolve_flip_index(names, d.flip_pairs)

    def evaluate(model: keras.Model) -> dict:
        return evaluate_coco(
            model,
            d.val_ann,
            d.val_images,
            input_size=v.input_size or d.input_size,
            flip=v.flip,
            scales=tuple(v.scales),
            max_images=v.max_images,
            flip_index=flip_index,
            oks_sigmas=v.oks_sigmas,
            progress=config.logging.progress,
            verbose=False,
        )

    return evaluate


@contextlib.contextmanager
def _global_policy(name: str):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


class Trainer:
    """Train EfficientHRNet as `config` says.

    Args:
        config: the run's TrainConfig (see `keras_ehrnet.train.config`).
        strategy: a tf.distribute strategy (default: `make_strategy(config.train.strategy)`).
        model_fn: builds the model (called in the strategy scope under the mixed-precision
            policy); default `build_model(config.model…)`. Any model with EfficientHRNet's two
            outputs works.
        dataset_fn: `DatasetFn` of the training data; default COCO from config.data.
        evaluate_fn: model → {"AP": …}; default COCO AP on config.data.val_* when given.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        strategy: tf.distribute.Strategy | None = None,
        model_fn: Callable[[], keras.Model] | None = None,
        dataset_fn: DatasetFn | None = None,
        evaluate_fn: Callable[[keras.Model], Mapping[str, Any]] | None = None,
    ):
        config = resolve_num_joints(config)  # unset: the training annotations' count
        self.config = config
        self._check_resume(config)
        check_writable(config.train.workdir, kind="dir", what="train.workdir (--workdir)")
        self.strategy = strategy or make_strategy(config.train.strategy)
        self.chief = is_chief(self.strategy)
        self.workdir = Path(config.train.workdir)
        self.write_dir = write_dir(self.workdir, self.strategy)
        self.num_replicas = self.strategy.num_replicas_in_sync
        self.pipeline_id, self.num_pipelines = input_pipeline(self.strategy)
        self.global_batch = config.data.batch_size * self.num_replicas
        shard = (self.pipeline_id, self.num_pipelines) if self.num_pipelines > 1 else None
        self.dataset_fn = dataset_fn or CocoTrainData(config, self.global_batch, shard)
        if evaluate_fn is None and config.data.val_ann:
            evaluate_fn = coco_validation(config)
        self.evaluate_fn = evaluate_fn
        self.policy = MIXED_PRECISION[str(config.train.mixed_precision).lower()]
        self.steps_per_epoch = config.train.steps_per_epoch or self._count_steps()
        self._stop_signal: int | None = None
        self._saving = False  # a second Ctrl-C waits while this is set
        self.save_models = True  # write final.keras / best.keras (benchmarks turn it off)
        self._build(model_fn)

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _check_resume(config: TrainConfig) -> None:
        """`resume` without a checkpoint (a mistyped workdir) or with another batch size is refused."""
        if not config.train.resume:
            return
        workdir = Path(config.train.workdir)
        if tf.train.latest_checkpoint(str(workdir / "checkpoints")) is None:
            raise FileNotFoundError(
                f"--resume: no checkpoint in {workdir / 'checkpoints'}; check --workdir, or leave out "
                "--resume to start a new run"
            )
        saved = workdir / "config.yaml"
        if not saved.is_file():
            return
        import yaml

        try:
            old = (yaml.safe_load(saved.read_text()) or {}).get("data", {}).get("batch_size")
        except (yaml.YAMLError, AttributeError, OSError):
            return
        new = config.data.batch_size
        if old is not None and int(old) != int(new):
            raise ConfigError(
                f"--resume: {workdir} was trained with data.batch_size {old} ({saved}), now {new}; the "
                f"checkpoint's data position and learning-rate schedule count batches of {old}. Resume with "
                f"--batch-size {old}, or start a new --workdir with --init {workdir}"
            )

    def _count_steps(self) -> int:
        per_pipeline = self.num_replicas // self.num_pipelines
        ctx = tf.distribute.InputContext(self.num_pipelines, self.pipeline_id, self.num_replicas)
        batches = int(self.dataset_fn(ctx, 0).cardinality().numpy())
        if batches < 0:
            examples = getattr(self.dataset_fn, "num_examples", None)
            if examples is None:
                raise ConfigError("cannot tell how many steps an epoch has; set train.steps_per_epoch")
            batches = examples // self.num_pipelines // (self.global_batch // self.num_replicas)
        steps = batches // per_pipeline
        if steps < 1:
            raise ConfigError(
                f"one epoch holds fewer images than one global batch of {self.global_batch} "
                f"({self.config.data.batch_size} per replica × {self.num_replicas} replicas); lower data.batch_size"
            )
        return steps

    def _build(self, model_fn) -> None:
        c = self.config
        self.init_report: InitReport | None = None
        # scales the scheduled learning rate at run time (scale_learning_rate); not checkpointed
        self.lr_multiplier = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="lr_multiplier")
        with _global_policy(self.policy), self.strategy.scope():
            if model_fn is not None:
                model = model_fn()
            else:
                model = build_model(
                    c.model.level,
                    num_joints=c.model.num_joints,
                    tag_per_joint=c.model.tag_per_joint,
                    hr_init=c.model.hr_init,
                    drop_connect_rate=c.model.drop_connect_rate,
                    # a resumed run's checkpoint holds the backbone already
                    backbone_weights=None if self._resume_checkpoint() else c.model.backbone_weights,
                )
            self.model = model
            if c.train.init and not self._resume_checkpoint():
                self.init_report = load_initial_weights(model, c.train.init)
            if c.train.freeze_backbone and freeze_backbone(model) == 0:
                raise ConfigError("train.freeze_backbone: the model has no 'stem_*' or 'block*_*' layers")
            if c.train.sync_batchnorm:
                for layer in model.layers:
                    if isinstance(layer, keras.layers.BatchNormalization):
                        layer.synchronized = True
            self.optimizer = build_optimizer(
                c.optimizer,
                model,
                self.steps_per_epoch,
                loss_scaling=self.policy == "mixed_float16",
                lr_multiplier=self.lr_multiplier,
            )
        self.num_joints = int(getattr(model, "num_joints", c.model.num_joints))
        self.loss_fn = EHRNetLoss(
            self.num_joints,
            heatmap_factors=c.loss.heatmap_factors,
            push_factor=c.loss.push_factor,
            pull_factor=c.loss.pull_factor,
            ae_type=c.loss.ae_type,
        )
        self._l2_vars = decayed_variables(model) if c.optimizer.weight_decay_mode == "coupled" else []
        self._state = {
            "epoch": tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch"),
            "step_in_epoch": tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch"),
            "global_step": tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step"),
            "best_ap": tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_ap"),
        }
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, **self._state)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            str(self.write_dir / "checkpoints"),
            max_to_keep=c.checkpoint.keep,
            checkpoint_name="ckpt",
        )
        self.best_manager = tf.train.CheckpointManager(
            self.checkpoint, str(self.write_dir / "best"), max_to_keep=1, checkpoint_name="best"
        )
        self._train_step = tf.function(self._distributed_step)

    def _resume_checkpoint(self) -> str | None:
        if not self.config.train.resume:
            return None
        return tf.train.latest_checkpoint(str(self.workdir / "checkpoints"))

    @property
    def _inner_optimizer(self) -> keras.optimizers.Optimizer:
        return getattr(self.optimizer, "inner_optimizer", self.optimizer)

    # ------------------------------------------------------------------ one step
    def _replica_step(self, images, targets, stop):
        c = self.config
        scaled_optimizer = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            outputs = self.model(images, training=True)
            terms = self.loss_fn(outputs, targets)
            logs = {k: tf.reduce_sum(v) / self.global_batch for k, v in terms.items()}
            loss = tf.add_n(list(logs.values()))
            if self._l2_vars:
                l2 = (
                    0.5
                    * c.optimizer.weight_decay
                    * tf.add_n([tf.reduce_sum(tf.square(v)) for v in self._l2_vars])
                )
                logs["l2"] = l2 / self.num_replicas
                loss += logs["l2"]
            if self.model.losses:
                loss += tf.add_n([tf.cast(x, tf.float32) for x in self.model.losses]) / self.num_replicas
            scaled = self.optimizer.scale_loss(loss) if scaled_optimizer else loss
        grads = tape.gradient(scaled, variables)
        if c.optimizer.clip_norm:
            # Clip the global norm of the *aggregated*, unscaled gradient; the optimizer then sums
            # the replicas' identical copies again, hence the division.
            pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
            grads = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, [g for g, _ in pairs]
            )
            loss_scale = self.optimizer.dynamic_scale if scaled_optimizer else 1.0
            grads = [g / loss_scale for g in grads]
            grads, _ = tf.clip_by_global_norm(grads, c.optimizer.clip_norm)
            grads = [g * loss_scale / self.num_replicas for g in grads]
            variables = [v for _, v in pairs]
        self.optimizer.apply(grads, variables)
        logs["loss"] = loss
        logs["_stop"] = tf.identity(stop)  # a per-replica value, so it can be reduced
        return logs

    def _distributed_step(self, batch, stop):
        lr = self._inner_optimizer.learning_rate
        images, targets = batch
        per_replica = self.strategy.run(self._replica_step, args=(images, targets, stop))
        out = {
            k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()
        }
        out["lr"] = tf.cast(lr, tf.float32)
        return out

    # ------------------------------------------------------------------ checkpoints
    def _save(self, epoch: int, step_in_epoch: int, global_step: int) -> str:
        self._state["epoch"].assign(epoch)
        self._state["step_in_epoch"].assign(step_in_epoch)
        self._state["global_step"].assign(global_step)
        self._saving = True
        try:
            path = self.manager.save(checkpoint_number=global_step)
        finally:
            self._saving = False
        if not self.chief:
            remove_scratch(self.write_dir, self.workdir)
        return path

    def _remove_leftovers(self) -> None:
        """What a killed run left half-written: `ckpt-N_temp` folders and `.tmp-*` files."""
        for folder in (self.workdir / "checkpoints", self.workdir / "best"):
            if folder.is_dir():
                for temp in folder.glob("*_temp*"):
                    if temp.is_dir():
                        shutil.rmtree(temp, ignore_errors=True)
                    else:
                        temp.unlink(missing_ok=True)
        remove_stale_temporaries(self.workdir)

    def _fail(
        self, err: Exception, epoch: int, step_in_epoch: int, global_step: int, last_saved, input_error: bool
    ) -> TrainingFailedError:
        """Checkpoint the last finished step (unless that is already done), then describe `err`."""
        checkpoint = self.manager.latest_checkpoint
        note = ""
        done = checkpoint is not None and checkpoint.endswith(f"-{global_step}")
        if last_saved is not None and last_saved.endswith(f"-{global_step}"):
            checkpoint, done = last_saved, True
        if not done and global_step > 0 and self.num_pipelines == 1:
            try:
                checkpoint = self._save(epoch, step_in_epoch, global_step)
            except Exception as save_err:  # a full disk fails this too
                note = f"; writing a checkpoint failed too ({one_line(save_err, 200)})"
        # A collective that lost its peer (raised by the step or, as often, by the distributed
        # iterator) is no data error; its own text may say no more than "Graph execution error".
        peer_lost = self.num_pipelines > 1 and isinstance(
            err, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)
        )
        if peer_lost:
            input_error = False
            note += (
                "; a worker of the cluster stopped or cannot be reached (TF_CONFIG): start every worker again"
            )
        where = "reading the training data" if input_error else "training"
        saved = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint"
        resume = f"; continue with --resume --workdir {self.workdir}" if checkpoint else ""
        message = (
            f"{where} failed at epoch {epoch + 1}, step {step_in_epoch + 1} (after {global_step} optimizer "
            f"steps): {one_line(err)}{note}; {saved}{resume}"
        )
        return TrainingFailedError(message, checkpoint=checkpoint, step=global_step, input_error=input_error)

    def _restore(self) -> str | None:
        c = self.config
        existing = tf.train.latest_checkpoint(str(self.workdir / "checkpoints"))
        if existing and not c.train.resume:
            raise FileExistsError(
                f"{self.workdir} already holds checkpoints ({existing}); pass --resume to continue that run "
                "or choose another --workdir"
            )
        if not c.train.resume:
            return None
        if existing is None:  # removed since __init__ checked
            raise FileNotFoundError(f"--resume: no checkpoint in {self.workdir / 'checkpoints'}")
        status = self.checkpoint.restore(existing)
        try:
            status.assert_existing_objects_matched()
        except AssertionError as err:
            raise ConfigError(
                f"{existing} does not fit this model/optimizer (changed level, keypoints or frozen layers?): {err}"
            ) from None
        self._print(
            f"resumed {existing}: epoch {int(self._state['epoch'])}, step {int(self._state['step_in_epoch'])} "
            f"of {self.steps_per_epoch}, optimizer step {int(self._inner_optimizer.iterations.numpy())}"
        )
        return existing

    # ------------------------------------------------------------------ helpers
    def _print(self, text: str) -> None:
        if self.chief:
            monitor = getattr(self, "monitor", None)
            if monitor is not None and monitor.active:
                monitor.message(text)
            else:
                print(text, flush=True)

    def _dataset(self, epoch: int, skip: int):
        per_pipeline = self.num_replicas // self.num_pipelines

        def fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            ds = self.dataset_fn(ctx, epoch)
            return ds.skip(skip * per_pipeline) if skip else ds

        return self.strategy.distribute_datasets_from_function(fn)

    def _broadcast_from_chief(self, value: float) -> float:
        """The chief's value on every worker (multi-worker validation decisions)."""
        if self.num_pipelines == 1:
            return value
        local = len(self.strategy.extended.worker_devices)
        mine = tf.constant(value / local if self.chief else 0.0, tf.float32)

        def fn():
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, mine)

        result = self.strategy.run(tf.function(fn))
        return float(self.strategy.experimental_local_results(result)[0])

    def _install_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                if self._saving:  # a half-written checkpoint helps nobody: let it finish
                    self._print("\nwriting a checkpoint; training stops when it is complete")
                    return
                raise KeyboardInterrupt
            self._stop_signal = signum
            self._print(
                f"\nsignal {signal.Signals(signum).name}: finishing this step and writing a checkpoint"
            )

        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
        return previous

    def scale_learning_rate(self, factor: float) -> None:
        """From the next step on, train at `factor` × the configured schedule (safe to call from
        another thread while `fit` runs; for example, steps placed on a wall-clock budget).
        Not kept in checkpoints: a resumed run starts at 1."""
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"learning-rate factor must be a positive number, got {factor!r}")
        self.lr_multiplier.assign(float(factor))

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[bool]:
        """Inside, the model holds the optimizer's moving average of its weights (when
        optimizer.ema_momentum is set; yields whether it does); the trained weights come back
        on leaving. Validation, best.keras and final.keras go through here."""
        optimizer = self._inner_optimizer
        if not getattr(optimizer, "use_ema", False):
            yield False
            return
        variables = self.model.trainable_variables
        trained = [tf.identity(v) for v in variables]
        optimizer.finalize_variable_values(variables)
        try:
            yield True
        finally:
            for variable, value in zip(variables, trained):
                variable.assign(value)

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask the loop to checkpoint and return after the current step (as SIGTERM does)."""
        self._stop_signal = signum

    def _validate(self, epoch: int, global_step: int, result: TrainResult) -> bool:
        """COCO AP after `epoch`; on a new best, the best checkpoint and best.keras. Returns
        whether AP improved. A failing evaluation is reported and training goes on."""
        ap = float("nan")
        if self.chief:
            self._print(f"validating after epoch {epoch} …")
            try:
                with self.averaged_weights():
                    metrics = dict(self.evaluate_fn(self.model))
            except Exception as err:  # a long run should not die of its evaluation
                self._print(f"epoch {epoch}: validation failed, training goes on: {err!r}")
                result.validation.append({"epoch": epoch, "step": global_step, "error": repr(err)})
            else:
                ap = float(metrics.get("AP", float("nan")))
                numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
                result.validation.append({"epoch": epoch, "step": global_step, **numbers})
                self.monitor.scalars(global_step, numbers)
                self._print(f"epoch {epoch}: validation AP {ap:.4f}")
        ap = self._broadcast_from_chief(ap)
        best = float(self._state["best_ap"].numpy())
        if not (math.isfinite(ap) and ap > best):
            return False
        self._state["best_ap"].assign(ap)
        self.best_manager.save(checkpoint_number=global_step)
        if not self.chief:
            remove_scratch(self.write_dir, self.workdir)
        elif self.save_models:
            path = self.workdir / "best.keras"
            with self.averaged_weights():
                atomic_save_model(self.model, path)
            result.best_model = path
            self._print(f"new best AP {ap:.4f}: {path}")
        return True

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        """Train to config.train.epochs (or until a signal); returns a TrainResult."""
        c = self.config
        if self.chief:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._remove_leftovers()
        self.write_dir.mkdir(parents=True, exist_ok=True)
        self.monitor = TrainMonitor(
            self.workdir if self.chief else None,
            progress=c.logging.progress,
            every_steps=c.logging.every_steps,
            images_every_steps=c.logging.images_every_steps,
        )
        try:
            self._restore()
            # rows a killed or failed run logged after its checkpoint are trained again now
            self.monitor.keep_until(int(self._state["global_step"].numpy()))
        except BaseException:
            self.monitor.close()
            raise
        if self.init_report is not None:
            self._print(self.init_report.summary())
        if self.chief:
            c.save(self.workdir / "config.yaml")
        epoch = int(self._state["epoch"].numpy())
        step_in_epoch = int(self._state["step_in_epoch"].numpy())
        global_step = int(self._state["global_step"].numpy())
        best = float(self._state["best_ap"].numpy())
        result = TrainResult(
            workdir=self.workdir,
            epoch=epoch,
            step=global_step,
            steps_per_epoch=self.steps_per_epoch,
            best_ap=best if best >= 0 else None,
            init_report=self.init_report,
            history=self.monitor.history,
        )
        self._print(
            f"training {self.model.name} on {self.num_replicas} replica(s), global batch {self.global_batch}, "
            f"{self.steps_per_epoch} steps per epoch, epochs {epoch + 1}…{c.train.epochs}, policy {self.policy}"
        )
        previous = self._install_signals()
        last_saved = None
        reading = False  # whether an error now comes from the input pipeline
        retired: list[threading.Thread] = []
        try:
            iterator = None
            while epoch < c.train.epochs:
                self.monitor.start_epoch(epoch, c.train.epochs, self.steps_per_epoch, done=step_in_epoch)
                if iterator is not None:
                    held, iterator = [iterator], None  # `held` is now the only reference
                    retired = [t for t in retired if t.is_alive()] + [_retire(held)]
                reading = True
                iterator = iter(self._dataset(epoch, step_in_epoch))
                reading = False
                while step_in_epoch < self.steps_per_epoch:
                    started = time.perf_counter()
                    reading = True
                    optional = iterator.get_next_as_optional()
                    if not optional.has_value():
                        self._print(
                            f"epoch {epoch + 1} ended early after {step_in_epoch} steps (data exhausted)"
                        )
                        break
                    batch = optional.get_value()
                    reading = False
                    stop = tf.constant(1.0 if self._stop_signal is not None else 0.0)
                    out = self._train_step(batch, stop)
                    logs = {k: float(v) for k, v in out.items()}
                    lr, stop_votes = logs.pop("lr"), logs.pop("_stop")
                    if not all(math.isfinite(v) for v in logs.values()):
                        raise NonFiniteLossError(
                            f"non-finite loss at epoch {epoch + 1}, step {step_in_epoch + 1} (optimizer step "
                            f"{global_step + 1}): {logs}. Nothing was saved after it; the last good checkpoint is "
                            f"{self.manager.latest_checkpoint or '(none yet)'}. Lower optimizer.learning_rate, set "
                            "optimizer.clip_norm, or check the data."
                        )
                    step_in_epoch += 1
                    global_step += 1
                    self.monitor.step(
                        global_step, epoch, logs, lr, self.global_batch, time.perf_counter() - started
                    )
                    if self.monitor.want_images(global_step):
                        self._log_images(global_step, batch)
                    if global_step % c.checkpoint.every_steps == 0:
                        last_saved = self._save(epoch, step_in_epoch, global_step)
                    stop_now = stop_votes > 0 or (self.num_pipelines == 1 and self._stop_signal is not None)
                    if stop_now:
                        if self._stop_signal is None:
                            self._stop_signal = int(signal.SIGTERM)  # another worker was told to stop
                        if last_saved is None or not last_saved.endswith(f"-{global_step}"):
                            last_saved = self._save(epoch, step_in_epoch, global_step)
                        self._print(
                            f"stopped by signal at epoch {epoch + 1}, step {step_in_epoch}: {last_saved}"
                        )
                        result.interrupted, result.signal = True, self._stop_signal
                        result.epoch, result.step, result.checkpoint = epoch, global_step, last_saved
                        return result
                self.monitor.end_epoch()
                epoch += 1
                step_in_epoch = 0
                wants_val = self.evaluate_fn is not None and (
                    epoch % c.validation.every_epochs == 0 or epoch == c.train.epochs
                )
                due = epoch % c.checkpoint.every_epochs == 0 or epoch == c.train.epochs
                if due or wants_val:  # before validating: keep the work
                    last_saved = self._save(epoch, 0, global_step)
                if wants_val and self._validate(epoch, global_step, result):
                    last_saved = self._save(epoch, 0, global_step)  # the new best AP goes in too
            result.epoch, result.step, result.checkpoint = epoch, global_step, self.manager.latest_checkpoint
            if self.chief and self.save_models:
                path = self.workdir / "final.keras"
                with self.averaged_weights():
                    atomic_save_model(self.model, path)
                result.final_model = path
                self._print(f"saved {path}")
            best = float(self._state["best_ap"].numpy())
            result.best_ap = best if best >= 0 else None
            if result.best_ap is not None and (self.workdir / "best.keras").is_file():
                result.best_model = self.workdir / "best.keras"
            return result
        except NonFiniteLossError:
            raise  # deliberately without a checkpoint: the weights are no good
        except Exception as err:
            raise self._fail(err, epoch, step_in_epoch, global_step, last_saved, reading) from err
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.monitor.close()
            for thread in retired:
                thread.join()

    def _log_images(self, step: int, batch) -> None:
        if not self.chief:
            return
        images, targets = batch
        local = self.strategy.experimental_local_results
        images = local(images)[0][:2]
        targets = {k: local(v)[0][:2] for k, v in targets.items()}
        outputs = self.model(images, training=False)
        panel = heatmap_panel(
            np.asarray(images), {k: np.asarray(v) for k, v in targets.items()}, outputs, self.num_joints
        )
        self.monitor.images(step, panel)


def _retire(held: list) -> threading.Thread:
    """Drop `held` (a list holding the only reference to a finished epoch's iterator) on a
    background thread.

    Tearing down a tf.data iterator can block for seconds while it waits, idle, for its
    autotuning thread to stop (measured here: 2–5 s on about every second epoch of a 36-image
    set, a quarter of a 30-minute run). Training goes on meanwhile; `fit` joins these threads.
    """
    thread = threading.Thread(target=held.clear, name="ehrnet-retire-iterator", daemon=True)
    thread.start()
    return thread


def train(config: TrainConfig, **kwargs) -> TrainResult:
    """`Trainer(config, **kwargs).fit()`."""
    return Trainer(config, **kwargs).fit()
