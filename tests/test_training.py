"""The training loop: configs, schedule, weight decay, checkpoints, signals, resume, replicas.

Most loop tests use a tiny stand-in with EfficientHRNet's outputs (it traces in seconds);
one test trains the real H-4 to check the loss falls and the backbone stays frozen, and the
fine-tuning test moves a 17-keypoint H-4 onto 14 keypoints. Runs that need their own process
(SIGTERM, two logical CPU devices) call `worker()` of this module in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from conftest import ROOT

from keras_ehrnet.train import (
    ConfigError,
    NonFiniteLossError,
    StepDecayWarmup,
    Trainer,
    apply_overrides,
    build_optimizer,
    config_from_dict,
    heatmap_panel,
    load_config,
)

J, R, N, BATCH = 3, 32, 8, 4  # keypoints, input size, images, global batch
LEVELS = ("H0", "H-1", "H-2", "H-3", "H-4")
# The released "Example Configs": (INPUT_SIZE, TRAIN.IMAGES_PER_GPU).
RELEASED = {"H0": (512, 1), "H-1": (480, 6), "H-2": (448, 8), "H-3": (416, 10), "H-4": (384, 48)}
# The authors' checkout, when a developer has one: EHRNET_REFERENCE=/path/to/EfficientHRNet
REFERENCE_CONFIGS = Path(os.environ.get("EHRNET_REFERENCE", "EfficientHRNet")) / "Example Configs"


# ---------------------------------------------------------------------------- helpers
def tiny_model(num_joints: int = J) -> keras.Model:
    """EfficientHRNet's interface in a few layers: [R/4 heatmaps+tags, R/2 heatmaps], float32."""
    layers = keras.layers
    inputs = keras.Input((None, None, 3))
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="stem_conv")(x)
    x = layers.ReLU()(layers.BatchNormalization(name="stem_bn")(x))
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="block1_conv")(x)
    features = layers.ReLU()(layers.BatchNormalization(name="block1_bn")(x))
    quarter = layers.Conv2D(2 * num_joints, 1, name="final_quarter")(features)
    x = layers.Concatenate()([features, quarter])
    x = layers.Conv2DTranspose(8, 4, strides=2, padding="same", name="deconv_conv")(x)
    half = layers.Conv2D(num_joints, 1, name="final_half")(layers.BatchNormalization(name="deconv_bn")(x))
    quarter = layers.Activation("linear", dtype="float32")(quarter)
    half = layers.Activation("linear", dtype="float32")(half)
    model = keras.Model(inputs, [quarter, half], name="tiny")
    model.num_joints = num_joints
    return model


def synthetic_arrays(num: int = N, size: int = R, num_joints: int = J, seed: int = 0):
    """Images and targets with the data pipeline's structure: people as 1-pixel peaks."""
    rng = np.random.default_rng(seed)
    q, h = size // 4, size // 2
    images = rng.uniform(0, 255, (num, size, size, 3)).astype(np.float32)
    heat_q = np.zeros((num, q, q, num_joints), np.float32)
    heat_h = np.zeros((num, h, h, num_joints), np.float32)
    joints = np.zeros((num, 30, num_joints, 2), np.int32)
    for n in range(num):
        for p in range(2):
            for j in range(num_joints):
                y, x = rng.integers(0, q, 2)
                heat_q[n, y, x, j] = heat_h[n, 2 * y, 2 * x, j] = 1.0
                joints[n, p, j] = (y * q + x, 1)
    targets = {
        "heatmaps_quarter": heat_q,
        "heatmaps_half": heat_h,
        "mask_quarter": np.ones((num, q, q), np.float32),
        "mask_half": np.ones((num, h, h), np.float32),
        "joints": joints,
    }
    return images, targets


def synthetic_dataset_fn(images, targets, global_batch: int = BATCH, slow: float = 0.0):
    """A `DatasetFn`: one epoch, shuffled by epoch (so a wrong resume position shows)."""

    def fn(ctx: tf.distribute.InputContext, epoch: int) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((images, targets))
        ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        ds = ds.shuffle(len(images), seed=1000 + epoch)
        ds = ds.batch(ctx.get_per_replica_batch_size(global_batch), drop_remainder=True)
        if slow:
            ds = ds.map(
                lambda x, y: (tf.numpy_function(lambda a: (time.sleep(slow), a)[1], [x], tf.float32), y)
            )
            ds = ds.map(lambda x, y: (tf.ensure_shape(x, [None, None, None, 3]), y))
        return ds

    return fn


def tiny_config(workdir, **sections) -> dict:
    values = {
        "model": {"num_joints": J},
        "data": {"batch_size": BATCH, "input_size": R},
        "optimizer": {"learning_rate": 1e-2},
        "train": {"epochs": 2, "workdir": str(workdir), "strategy": "default"},
        "logging": {"progress": False, "every_steps": 1, "images_every_steps": 0},
        "checkpoint": {"every_steps": 1000},
    }
    for name, body in sections.items():
        values.setdefault(name, {}).update(body)
    return values


def tiny_trainer(workdir, *, strategy=None, arrays=None, slow=0.0, evaluate_fn=None, **sections) -> Trainer:
    images, targets = arrays if arrays is not None else synthetic_arrays()
    per_replica = sections.get("data", {}).get("batch_size", BATCH)
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    config = config_from_dict(tiny_config(workdir, **sections))
    return Trainer(
        config,
        strategy=strategy,
        model_fn=tiny_model,
        dataset_fn=synthetic_dataset_fn(images, targets, per_replica * replicas, slow),
        evaluate_fn=evaluate_fn,
    )


def worker(spec: str) -> None:
    """Subprocess entry: run the tiny trainer as the JSON `spec` says and print a JSON result."""
    spec = json.loads(spec)
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(0)
    if spec.get("mode") == "replicas":
        from keras_ehrnet.train import make_strategy

        out = {}
        for name, strategy, batch in (
            ("one", tf.distribute.get_strategy(), BATCH),
            ("two", make_strategy("mirrored"), 2),
        ):
            keras.utils.set_random_seed(0)
            trainer = tiny_trainer(
                Path(spec["workdir"]) / name,
                strategy=strategy,
                data={"batch_size": batch},
                train={"epochs": 2, "sync_batchnorm": True},
                optimizer={"learning_rate": 1e-2, "clip_norm": 0.5},
            )
            result = trainer.fit()
            out[name] = {"replicas": trainer.num_replicas, "losses": [row["loss"] for row in result.history]}
        print("RESULT " + json.dumps(out), flush=True)
        return
    trainer = tiny_trainer(
        spec["workdir"],
        slow=spec.get("slow", 0.0),
        train={"epochs": spec["epochs"], "resume": spec["resume"]},
    )
    result = trainer.fit()
    out = {
        "interrupted": result.interrupted,
        "step": result.step,
        "iterations": int(trainer.optimizer.iterations.numpy()),
        "losses": {row["step"]: row["loss"] for row in result.history},
    }
    print("RESULT " + json.dumps(out), flush=True)
    sys.exit(128 + result.signal if result.interrupted else 0)


def _spawn(spec: dict, prelude: str = "", module: str = "test_training") -> subprocess.Popen:
    """A subprocess running `module.worker(spec)` (a test module's training worker), pipes open."""
    env = dict(
        os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    )
    code = f"{prelude}\nimport {module}\n{module}.worker({json.dumps(json.dumps(spec))})"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, dict]:
    out, err = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result (exit {proc.returncode})\n{out[-3000:]}\n{err[-3000:]}"
    return proc.returncode, json.loads(lines[-1][len("RESULT ") :])


def _checkpoint_value(path: str, name: str):
    reader = tf.train.load_checkpoint(path)
    return reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")


# ---------------------------------------------------------------------------- configs
@pytest.mark.parametrize("level", LEVELS)
def test_level_configs_hold_the_paper_recipe(level):
    config = load_config(ROOT / "training" / "configs" / f"{level}.yaml")
    from keras_ehrnet.models.scaling import get_config

    assert config.model.level == level and config.model.num_joints is None  # from the data: COCO's 17
    assert config.data.input_size == get_config(level).input_size == RELEASED[level][0]
    assert config.data.batch_size == RELEASED[level][1]
    assert (config.data.sigma, config.data.max_people, config.data.flip_prob) == (2.0, 30, 0.5)
    assert (config.data.max_rotation, config.data.min_scale, config.data.max_scale) == (30.0, 0.75, 1.5)
    assert (config.data.max_translate, config.data.scale_type) == (40.0, "short")
    assert config.loss.heatmap_factors == [1.0, 1.0]
    assert (config.loss.push_factor, config.loss.pull_factor, config.loss.ae_type) == (1e-3, 1e-3, "exp")
    o = config.optimizer
    assert (o.learning_rate, o.weight_decay, o.lr_steps, o.lr_factor) == (1e-3, 1e-4, [200, 260], 0.1)
    assert config.train.epochs == 300


@pytest.mark.parametrize("level", LEVELS)
def test_level_configs_agree_with_released_yaml(level):
    released = REFERENCE_CONFIGS / f"{level}.yaml"
    if not released.is_file():
        pytest.skip(f"released configs not at {REFERENCE_CONFIGS}")
    ref = yaml.safe_load(released.read_text())
    config = load_config(ROOT / "training" / "configs" / f"{level}.yaml")
    d, t, loss = ref["DATASET"], ref["TRAIN"], ref["LOSS"]
    assert (config.data.input_size, config.data.batch_size) == (d["INPUT_SIZE"], t["IMAGES_PER_GPU"])
    assert (config.data.sigma, config.data.max_people, config.data.flip_prob) == (
        d["SIGMA"],
        d["MAX_NUM_PEOPLE"],
        d["FLIP"],
    )
    assert (config.data.min_scale, config.data.max_scale) == (d["MIN_SCALE"], d["MAX_SCALE"])
    assert (config.data.max_rotation, config.data.max_translate) == (d["MAX_ROTATION"], d["MAX_TRANSLATE"])
    assert config.loss.heatmap_factors == loss["HEATMAPS_LOSS_FACTOR"]
    assert [config.loss.push_factor, config.loss.pull_factor] == [
        loss["PUSH_LOSS_FACTOR"][0],
        loss["PULL_LOSS_FACTOR"][0],
    ]
    assert (config.optimizer.learning_rate, config.optimizer.lr_steps, config.optimizer.lr_factor) == (
        t["LR"],
        t["LR_STEP"],
        t["LR_FACTOR"],
    )
    assert (config.train.epochs, config.optimizer.weight_decay) == (t["END_EPOCH"], t["WD"])


def test_config_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  sigmaa: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'sigmaa'.*did you mean 'sigma'"):
        load_config(bad)
    bad.write_text("optimiser:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown section 'optimiser'.*'optimizer'"):
        load_config(bad)
    bad.write_text("data:\n  input_size: 100\n")
    with pytest.raises(ConfigError, match=r"data\.input_size.*multiple of 32.*100"):
        load_config(bad)
    bad.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"train\.epochs.*integer.*many"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found.*nowhere.yaml"):
        load_config(tmp_path / "nowhere.yaml")
    with pytest.raises(ConfigError, match="val_ann/val_images"):
        config_from_dict({"data": {"val_ann": "a.json"}})


def test_overrides_and_command_line():
    from training.__main__ import build_parser, overrides_from_args

    base = load_config(ROOT / "training" / "configs" / "H-4.yaml")
    config = apply_overrides(base, ["optimizer.lr_steps=[2, 3]", "train.mixed_precision=bfloat16"])
    assert config.optimizer.lr_steps == [2, 3] and config.train.mixed_precision == "bfloat16"
    assert base.optimizer.lr_steps == [200, 260]  # the original is left alone
    args = build_parser().parse_args(
        [
            "--train-ann",
            "a.json",
            "--train-images",
            "img",
            "--epochs",
            "7",
            "--batch-size",
            "3",
            "--input-size",
            "256",
            "--resume",
            "--freeze-backbone",
            "--init",
            "m.keras",
            "--lr",
            "5e-4",
            "--ema-momentum",
            "0.99",
            "--set",
            "data.sigma=3",
        ]
    )
    config = apply_overrides(base, overrides_from_args(args))
    assert (config.data.train_ann, config.data.train_images) == ("a.json", "img")
    assert (config.train.epochs, config.data.batch_size, config.data.input_size) == (7, 3, 256)
    assert config.train.resume and config.train.freeze_backbone and config.train.init == "m.keras"
    assert (config.optimizer.learning_rate, config.data.sigma) == (5e-4, 3.0)
    assert config.optimizer.ema_momentum == 0.99 and base.optimizer.ema_momentum is None
    with pytest.raises(ConfigError, match="input_size"):
        apply_overrides(base, {"data.input_size": 250})


def test_command_line_reports_missing_files(tmp_path, capsys):
    from training.__main__ import main

    code = main(
        ["--config", str(ROOT / "training/configs/H-4.yaml"), "--train-ann", str(tmp_path / "missing.json")]
        + ["--train-images", str(tmp_path), "--workdir", str(tmp_path / "run"), "--strategy", "default"]
    )
    assert code == 2
    assert "missing.json" in capsys.readouterr().err


# ---------------------------------------------------------------------------- schedule and optimizer
def test_step_decay_at_epoch_boundaries_with_warmup():
    schedule = StepDecayWarmup(1e-3, steps_per_epoch=10, step_epochs=[200, 260], factor=0.1)
    lr = {s: float(schedule(s)) for s in (0, 1999, 2000, 2599, 2600, 2999)}
    np.testing.assert_allclose([lr[0], lr[1999]], [1e-3, 1e-3], rtol=1e-6)
    np.testing.assert_allclose([lr[2000], lr[2599]], [1e-4, 1e-4], rtol=1e-6)
    np.testing.assert_allclose([lr[2600], lr[2999]], [1e-5, 1e-5], rtol=1e-5)
    warm = StepDecayWarmup(1e-3, steps_per_epoch=10, warmup_steps=20, warmup_start_factor=0.1)
    np.testing.assert_allclose(
        [float(warm(s)) for s in (0, 10, 20, 30)], [1e-4, 5.5e-4, 1e-3, 1e-3], rtol=1e-5
    )
    assert StepDecayWarmup.from_config(warm.get_config()).get_config() == warm.get_config()


def test_a_scaled_schedule_follows_its_multiplier_while_it_changes():
    from keras_ehrnet.train.schedules import ScaledSchedule

    multiplier = tf.Variable(1.0, trainable=False)
    scaled = ScaledSchedule(StepDecayWarmup(1e-3, steps_per_epoch=10, step_epochs=[2]), multiplier)
    read = tf.function(lambda step: scaled(step))  # traced once, must still see later values
    np.testing.assert_allclose([float(read(0)), float(read(25))], [1e-3, 1e-4], rtol=1e-6)
    multiplier.assign(0.1)
    np.testing.assert_allclose([float(read(0)), float(read(25))], [1e-4, 1e-5], rtol=1e-5)
    again = ScaledSchedule.from_config(scaled.get_config())
    np.testing.assert_allclose(float(again(25)), 1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["decoupled", "none"])
def test_weight_decay_spares_biases_and_batchnorm(mode):
    model = tiny_model()
    model(np.zeros((1, R, R, 3), np.float32), training=True)
    config = config_from_dict(
        {"optimizer": {"learning_rate": 0.1, "weight_decay": 0.1, "weight_decay_mode": mode}}
    ).optimizer
    optimizer = build_optimizer(config, model, steps_per_epoch=10)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    # Zero gradients: Adam's own step is zero, so only the decoupled decay moves weights.
    optimizer.apply([tf.zeros_like(v) for v in model.trainable_variables], model.trainable_variables)
    after = {v.path: v.numpy() for v in model.trainable_variables}
    kernel, gamma, bias = "stem_conv/kernel", "stem_bn/gamma", "final_half/bias"
    factor = 1 - 0.1 * 0.1 if mode == "decoupled" else 1.0
    np.testing.assert_allclose(after[kernel], before[kernel] * factor, rtol=1e-6)
    np.testing.assert_array_equal(after[gamma], before[gamma])
    np.testing.assert_array_equal(after[bias], before[bias])


# ---------------------------------------------------------------------------- the loop
def test_checkpoints_best_model_and_logs(tmp_path):
    aps = iter([0.1, 0.3, None, 0.2])

    def evaluate(model):
        ap = next(aps)
        if ap is None:
            raise RuntimeError("evaluation broke")  # reported; training goes on
        return {"AP": ap, "AP50": 0.5}

    trainer = tiny_trainer(
        tmp_path,
        evaluate_fn=evaluate,
        train={"epochs": 4},
        validation={"every_epochs": 1},
        checkpoint={"every_steps": 1, "keep": 2},
        logging={"progress": True, "every_steps": 1, "images_every_steps": 2},
    )
    result = trainer.fit()
    steps = trainer.steps_per_epoch
    assert steps == N // BATCH and result.step == 4 * steps and not result.interrupted
    assert result.best_ap == pytest.approx(0.3)
    assert [row.get("AP") for row in result.validation] == [
        pytest.approx(0.1),
        pytest.approx(0.3),
        None,
        pytest.approx(0.2),
    ]
    assert "evaluation broke" in result.validation[2]["error"]
    assert tf.train.latest_checkpoint(str(tmp_path / "best")).endswith(f"best-{2 * steps}")
    assert len(tf.train.get_checkpoint_state(str(tmp_path / "checkpoints")).all_model_checkpoint_paths) == 2
    assert _checkpoint_value(result.checkpoint, "epoch") == 4
    assert _checkpoint_value(result.checkpoint, "best_ap") == pytest.approx(0.3)
    reloaded = keras.saving.load_model(result.final_model)
    x = np.random.default_rng(1).uniform(0, 255, (1, R, R, 3)).astype(np.float32)
    np.testing.assert_allclose(reloaded(x)[0], trainer.model(x)[0], atol=1e-5)
    assert keras.saving.load_model(result.best_model) is not None
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 4 * steps + 1))
    tags = set()
    for event_file in (tmp_path / "tensorboard").iterdir():
        from tensorflow.core.util import event_pb2

        for record in tf.data.TFRecordDataset(str(event_file)):
            tags.update(v.tag for v in event_pb2.Event.FromString(record.numpy()).summary.value)
    assert {"train/loss", "train/push", "train/learning_rate", "val/AP", "train/heatmaps"} <= tags
    with pytest.raises(FileExistsError, match="--resume"):
        tiny_trainer(tmp_path).fit()  # never overwrite a finished run by accident


def test_the_learning_rate_can_be_scaled_from_another_thread(tmp_path):
    trainer = tiny_trainer(tmp_path, train={"epochs": 2})
    worker = threading.Thread(target=trainer.scale_learning_rate, args=(0.1,))
    worker.start()
    worker.join()
    result = trainer.fit()
    np.testing.assert_allclose([row["lr"] for row in result.history], 1e-3, rtol=1e-6)  # 1e-2 × 0.1
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive number"):
            trainer.scale_learning_rate(bad)


def test_each_epochs_iterator_is_released_off_the_training_thread(tmp_path, monkeypatch):
    import keras_ehrnet.train.trainer as trainer_module

    handed = []

    def spy(held):
        handed.append(held)
        return real(held)

    real = trainer_module._retire
    monkeypatch.setattr(trainer_module, "_retire", spy)
    result = tiny_trainer(tmp_path, train={"epochs": 3}).fit()
    assert result.epoch == 3 and len(handed) == 2  # the first two epochs' iterators
    assert all(held == [] for held in handed)  # dropped, and joined before fit returned
    assert not any(t.name == "ehrnet-retire-iterator" and t.is_alive() for t in threading.enumerate())


def test_averaged_weights_are_validated_saved_and_checkpointed(tmp_path):
    m = 0.5
    seen = []
    trainer = tiny_trainer(
        tmp_path,
        evaluate_fn=lambda model: seen.append([v.numpy() for v in model.trainable_variables]) or {"AP": 0.1},
        optimizer={"ema_momentum": m},
        train={"epochs": 2},
        validation={"every_epochs": 1},
    )
    trained, step = [], trainer._train_step

    def recording_step(*args):
        out = step(*args)
        trained.append([v.numpy() for v in trainer.model.trainable_variables])
        return out

    trainer._train_step = recording_step
    result = trainer.fit()
    expected, average = [], None
    for weights in trained:  # Keras' EMA: the first step copies, then a ← m·a + (1 − m)·w
        average = weights if average is None else [m * a + (1 - m) * w for a, w in zip(average, weights)]
        expected.append(average)
    steps = trainer.steps_per_epoch
    for seen_weights, at in zip(seen, (steps - 1, 2 * steps - 1), strict=True):
        for got, want in zip(seen_weights, expected[at]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the trained weights come back after each use, and differ from the average
    for got, want in zip(trainer.model.trainable_variables, trained[-1]):
        np.testing.assert_array_equal(got.numpy(), want)
    assert max(np.abs(a - w).max() for a, w in zip(expected[-1], trained[-1])) > 1e-4
    final = keras.saving.load_model(result.final_model)
    for got, want in zip(final.trainable_variables, expected[-1]):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    resumed = tiny_trainer(tmp_path, optimizer={"ema_momentum": m}, train={"epochs": 2, "resume": True})
    resumed.fit()  # restores the finished run's checkpoint, with the average, and trains no further
    with resumed.averaged_weights() as averaged:
        assert averaged
        for got, want in zip(resumed.model.trainable_variables, expected[-1]):
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    with tiny_trainer(tmp_path / "plain").averaged_weights() as averaged:
        assert not averaged
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="ema_momentum"):
            config_from_dict(tiny_config(tmp_path, optimizer={"ema_momentum": bad}))


def test_epoch_checkpoints_every_n_epochs_and_at_the_last(tmp_path):
    trainer = tiny_trainer(
        tmp_path, train={"epochs": 5}, checkpoint={"every_steps": 1000, "every_epochs": 2, "keep": 10}
    )
    result = trainer.fit()
    paths = tf.train.get_checkpoint_state(str(tmp_path / "checkpoints")).all_model_checkpoint_paths
    assert [_checkpoint_value(p, "epoch") for p in paths] == [2, 4, 5]
    assert result.checkpoint == paths[-1]
    with pytest.raises(ConfigError, match="every_epochs"):
        config_from_dict(tiny_config(tmp_path, checkpoint={"every_epochs": 0}))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    images, targets = synthetic_arrays()
    images[:] = np.where(np.arange(N)[:, None, None, None] < BATCH, images, np.nan)  # 2nd batch is NaN
    trainer = tiny_trainer(tmp_path, arrays=(images, targets), checkpoint={"every_steps": 1})
    trainer.dataset_fn = lambda ctx, epoch: tf.data.Dataset.from_tensor_slices((images, targets)).batch(BATCH)
    with pytest.raises(NonFiniteLossError, match=r"step 2 .*ckpt-1"):
        trainer.fit()
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-1")


@pytest.mark.parametrize("policy", ["float16", "bfloat16"])
def test_mixed_precision_trains(tmp_path, policy):
    trainer = tiny_trainer(tmp_path, train={"epochs": 3, "mixed_precision": policy})
    assert trainer.model.layers[2].compute_dtype == policy
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "float16")
    losses = [row["loss"] for row in trainer.fit().history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert keras.mixed_precision.global_policy().name == "float32"  # the global policy is restored


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_resume_continues_exactly(tmp_path):
    epochs, steps = 3, N // BATCH
    total = epochs * steps
    straight = _spawn({"workdir": str(tmp_path / "straight"), "epochs": epochs, "resume": False})
    code, reference = _result(straight)
    assert code == 0 and reference["step"] == total

    run = tmp_path / "run"
    proc = _spawn({"workdir": str(run), "epochs": epochs, "resume": False, "slow": 0.3})
    history = run / "history.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if history.is_file() and len(history.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code, stopped = _result(proc)
    assert code == 128 + signal.SIGTERM and stopped["interrupted"]
    done = stopped["step"]
    assert 3 <= done < total
    latest = tf.train.latest_checkpoint(str(run / "checkpoints"))
    assert latest.endswith(f"ckpt-{done}")
    assert _checkpoint_value(latest, "global_step") == done
    epoch, in_epoch = _checkpoint_value(latest, "epoch"), _checkpoint_value(latest, "step_in_epoch")
    assert epoch * steps + in_epoch == done and 0 < in_epoch <= steps  # the data position
    assert stopped["iterations"] == done

    code, resumed = _result(_spawn({"workdir": str(run), "epochs": epochs, "resume": True}))
    assert code == 0 and resumed["step"] == total
    assert sorted(int(s) for s in resumed["losses"]) == list(range(done + 1, total + 1))
    # Same batches, same weights and the same Adam moments: the losses follow the straight run.
    for step, loss in resumed["losses"].items():
        assert loss == pytest.approx(reference["losses"][step], rel=1e-5), step
    for step, loss in stopped["losses"].items():
        assert loss == pytest.approx(reference["losses"][step], rel=1e-5), step
    straight_model = keras.saving.load_model(tmp_path / "straight" / "final.keras")
    resumed_model = keras.saving.load_model(run / "final.keras")
    for a, b in zip(straight_model.weights, resumed_model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_replicas_match_one_replica_with_the_same_global_batch(tmp_path):
    prelude = (
        "import tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)"
    )
    code, out = _result(_spawn({"mode": "replicas", "workdir": str(tmp_path)}, prelude))
    assert code == 0
    assert (out["one"]["replicas"], out["two"]["replicas"]) == (1, 2)
    one, two = np.array(out["one"]["losses"]), np.array(out["two"]["losses"])
    assert len(one) == len(two) == 2 * N // BATCH
    assert one[-1] < one[0]  # it trained, so the comparison covers gradient aggregation
    np.testing.assert_allclose(two, one, rtol=1e-5)


def test_heatmap_panel_shows_targets_and_predictions():
    images, targets = synthetic_arrays(num=2)
    outputs = [np.zeros((2, R // 4, R // 4, 2 * J), np.float32), np.zeros((2, R // 2, R // 2, J), np.float32)]
    panel = heatmap_panel(images, targets, outputs, J, min_height=0)
    assert panel.shape == (2, R // 2, 5 * (R // 2), 3) and panel.dtype == np.uint8
    assert heatmap_panel(images, targets, outputs, J, min_height=50).shape == (2, 64, 5 * 64, 3)  # ×4
    tile = R // 2
    target_red = panel[0, :, tile : 2 * tile, 0]
    predicted_red = panel[0, :, 2 * tile : 3 * tile, 0]
    assert target_red.max() == 255 and predicted_red.max() < 255  # peaks drawn only where targets are


def test_coco_training_data_feeds_the_trainer():
    from keras_ehrnet.data import sample_dataset
    from keras_ehrnet.train import CocoTrainData

    ann, image_dir = sample_dataset()
    config = config_from_dict(
        {"data": {"train_ann": str(ann), "train_images": str(image_dir), "input_size": 64, "batch_size": 2}}
    )
    data = CocoTrainData(config, global_batch=2)
    ds = data(tf.distribute.InputContext(), 0)
    assert int(ds.cardinality()) == data.num_examples // 2
    images, targets = next(iter(ds))
    assert images.shape == (2, 64, 64, 3)
    assert targets["heatmaps_quarter"].shape == (2, 16, 16, 17) and targets["joints"].shape[1:] == (30, 17, 2)
    missing = config_from_dict({"data": {"train_ann": "nowhere.json", "train_images": str(image_dir)}})
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        CocoTrainData(missing, global_batch=2)


def test_flip_pairs_given_explicitly_reach_the_dataset():
    """Keypoint names without left/right words: pairs from the config (names or indices) decide flips."""
    from keras_ehrnet.data import DatasetError, sample_dataset
    from keras_ehrnet.train import CocoTrainData
    from training.__main__ import build_parser, overrides_from_args

    ann, image_dir = sample_dataset()
    args = build_parser().parse_args(["--flip-pairs", "left_eye:right_eye, 5:6"])
    overrides = overrides_from_args(args)
    assert overrides["data.flip_pairs"] == [["left_eye", "right_eye"], [5, 6]]
    base = config_from_dict({"data": {"train_ann": str(ann), "train_images": str(image_dir)}})
    data = CocoTrainData(apply_overrides(base, overrides), global_batch=1)
    expected = list(range(17))
    expected[1], expected[2], expected[5], expected[6] = 2, 1, 6, 5  # only the given pairs swap
    assert data.dataset.flip_index == expected
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--flip-pairs", "left_eye"])
    with pytest.raises(ConfigError, match="flip_pairs"):
        apply_overrides(base, {"data.flip_pairs": [["left_eye", "right_eye", "nose"]]})
    bad = apply_overrides(base, {"data.flip_pairs": [["left_eye", "left_tail"]]})
    with pytest.raises(DatasetError, match="left_tail"):
        CocoTrainData(bad, global_batch=1)


def test_throughput_and_loss_plot(tmp_path):
    from evaluation.benchmark.train import measure_throughput
    from keras_ehrnet.train import plot_losses

    row = measure_throughput(input_size=R, batch_size=2, steps=3, warmup=1, model_fn=tiny_model, num_joints=J)
    assert row["steps_timed"] == 3 and row["images_per_sec"] > 0 and row["input_size"] == R
    assert np.isfinite(row["final_loss"])
    assert row["machine"]["logical_cpus"] == os.cpu_count()
    assert 0.0 <= row["cpu_steal_frac"] <= 1.0 and 0.0 <= row["foreign_cpu_frac"] <= 1.0  # Linux
    history = [
        {"step": s, "loss": 1.0 / s, "heatmaps_quarter": 0.5 / s, "push": 1e-3, "pull": 1e-4}
        for s in range(1, 120)
    ]
    png = plot_losses(history, tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("view, scale_type", [("whole", "long"), ("crop", "short")])
def test_overfit_benchmark_trains_and_scores_what_it_shows(tmp_path, view, scale_type):
    from keras_ehrnet.data import sample_dataset
    from keras_ehrnet.train.overfit import overfit

    ann, image_dir = sample_dataset()
    kwargs = dict(input_size=64, batch_size=2, epochs=2, minutes=None, flip_test=False, progress=False)
    metrics = overfit(ann, image_dir, tmp_path, view=view, model_fn=lambda: tiny_model(17), **kwargs)
    assert metrics["view"] == view and metrics["config"]["data"]["scale_type"] == scale_type
    data = metrics["config"]["data"]  # no augmentation unless asked for
    assert data["flip_prob"] == data["max_rotation"] == data["max_translate"] == 0.0
    assert data["min_scale"] == data["max_scale"] == 1.0
    assert metrics["epochs_done"] == 2 and metrics["steps"] == 2 * (metrics["images"] // 2) > 0
    for key in ("AP_before", "AP_after", "foreign_cpu_frac", "cpu_steal_frac"):  # Linux: /proc/stat
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["cpu_warning"] is None or "timed figures are lower" in metrics["cpu_warning"]
    assert metrics["after"]["images"] == metrics["images"]
    assert metrics["machine"]["logical_cpus"] == os.cpu_count() and metrics["machine"]["cpu_model"]
    if sys.platform == "linux" and os.uname().machine == "x86_64":  # family and model from /proc/cpuinfo
        assert metrics["machine"]["cpu_family"].isdigit() and metrics["machine"]["cpu_model_number"].isdigit()
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((tmp_path / "history.json").read_text())) == metrics["steps"]
    assert metrics["config"]["optimizer"]["lr_steps"] == [1, 1] and "of 2 epochs" in metrics["lr_steps"]
    with pytest.raises(ValueError, match="view must be one of"):
        overfit(ann, image_dir, tmp_path / "x", view="sideways")
    with pytest.raises(ValueError, match="epochs, minutes or both"):
        overfit(ann, image_dir, tmp_path / "y", epochs=None, minutes=None)
    for bad in ((0.9, 0.5), (0.5, 1.0), (0.0,), (0.5, 0.5)):
        with pytest.raises(ValueError, match="lr_milestones must rise strictly"):
            overfit(ann, image_dir, tmp_path / "z", lr_milestones=bad)


def test_overfit_benchmark_without_epochs_trains_for_its_time_budget(tmp_path):
    from keras_ehrnet.data import sample_dataset
    from keras_ehrnet.train.overfit import overfit

    ann, image_dir = sample_dataset()
    metrics = overfit(
        ann,
        image_dir,
        tmp_path,
        input_size=64,
        batch_size=2,
        epochs=None,
        minutes=0.02,
        flip_test=False,
        progress=False,
        lr_milestones=(0.5, 0.75),
        model_fn=lambda: tiny_model(17),
    )
    assert metrics["stopped_by_time_limit"] and metrics["steps"] >= 1
    # no epoch-based steps: the rate steps at 50 % and 75 % of the 1.2 s instead
    assert metrics["config"]["optimizer"]["lr_steps"] == []
    assert metrics["lr_steps"] == "x0.1 at 50%, 75% of 0.02 minutes"
    assert metrics["config"]["model"]["drop_connect_rate"] == 0.0  # no stochastic depth: memorising
    assert (tmp_path / "run" / "final.keras").is_file()


def test_the_config_chooses_the_hr_initialisation(tmp_path):
    values = tiny_config(tmp_path, model={"level": "H-4", "num_joints": J, "hr_init": "he"})
    trainer = Trainer(config_from_dict(values), dataset_fn=synthetic_dataset_fn(*synthetic_arrays()))
    assert trainer.model.hr_init == "he"
    kernel = trainer.model.get_layer("stage2_module0_branch0_block0_1_conv").kernel.numpy()
    assert kernel.std() > 0.01  # He, not the released N(0, 0.001)
    with pytest.raises(ConfigError, match="model.hr_init"):
        config_from_dict(tiny_config(tmp_path, model={"hr_init": "zeros"}))


def test_the_config_sets_the_backbone_drop_connect_rate(tmp_path):
    assert config_from_dict({}).model.drop_connect_rate == 0.2  # the released recipe
    values = tiny_config(tmp_path, model={"level": "H-4", "num_joints": J, "drop_connect_rate": 0.05})
    trainer = Trainer(config_from_dict(values), dataset_fn=synthetic_dataset_fn(*synthetic_arrays()))
    assert trainer.model.drop_connect_rate == 0.05
    rates = {layer.rate for layer in trainer.model.layers if isinstance(layer, keras.layers.Dropout)}
    assert rates == {0.05}
    with pytest.raises(ConfigError, match=r"model.drop_connect_rate must be in \[0, 1\), got 1.5"):
        config_from_dict(tiny_config(tmp_path, model={"drop_connect_rate": 1.5}))


@pytest.mark.parametrize("ignore_padding", [True, False])
def test_the_config_says_whether_the_letterbox_border_counts_in_the_loss(ignore_padding):
    from keras_ehrnet.data import sample_dataset
    from keras_ehrnet.train import CocoTrainData

    ann, image_dir = sample_dataset()
    data = {"train_ann": str(ann), "train_images": str(image_dir), "input_size": 64, "batch_size": 1}
    data.update(scale_type="long", max_rotation=0.0, min_scale=1.0, max_scale=1.0, max_translate=0.0)
    data.update(flip_prob=0.0, ignore_padding=ignore_padding)
    loader = CocoTrainData(config_from_dict({"data": data}), global_batch=1)
    images, targets = next(iter(loader(tf.distribute.InputContext(), 0)))
    black = tf.reduce_all(tf.equal(images[0], 0.0), axis=-1).numpy()
    border = black.all(axis=1)[:, None] | black.all(axis=0)[None, :]  # whole black rows/columns
    assert 0.1 < border.mean() < 0.5  # the whole image fits, letterboxed
    half_border = border[0::2, 0::2] & border[1::2, 1::2]
    mask = targets["mask_half"][0].numpy()
    assert np.all(mask[half_border] == (0 if ignore_padding else 1))


def test_overfit_command_needs_epochs_or_minutes(tmp_path, capsys):
    from training.overfit import build_parser, main

    args = build_parser().parse_args(["--out", str(tmp_path)])
    assert (args.epochs, args.minutes) == (None, 30.0)  # by default: the time budget, LR steps on the clock
    # the measured recipe (BENCHMARKS.md §6)
    assert args.lr_milestones == [0.88, 0.96]
    assert (args.batch_size, args.lr, args.input_size) == (8, 2e-3, 256)
    assert args.drop_connect == 0.0  # no stochastic depth when the point is to memorise
    assert main(["--out", str(tmp_path), "--minutes", "0"]) == 2
    assert "--minutes 0 needs --epochs" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--lr-milestones", "0.9", "0.6"]) == 2
    assert "--lr-milestones must rise strictly" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--epochs", "1", "--ann", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


def _overfit_metrics(ap_curve, steps, ap_after, ap_before=0.0):
    return {"AP_before": ap_before, "AP_after": ap_after, "steps": steps, "AP_curve": ap_curve}


def test_ap_points_and_learning_rate_changes_come_from_the_run_records():
    from keras_ehrnet.train.overfit import ap_points, lr_change_steps

    curve = [{"epoch": 60, "step": 540, "AP": 0.1}, {"epoch": 120, "step": 1080, "AP": 0.25}]
    assert ap_points(_overfit_metrics(curve, 1200, 0.3)) == [(0, 0.0), (540, 0.1), (1080, 0.25), (1200, 0.3)]
    # a run that ends on a validation step: the final score is the point there, not a duplicate
    assert ap_points(_overfit_metrics(curve, 1080, 0.26))[-2:] == [(540, 0.1), (1080, 0.26)]
    history = [{"step": s, "lr": 1e-3 if s < 5 else 1e-4 if s < 9 else 1e-5} for s in range(1, 12)]
    assert lr_change_steps(history) == [5, 9]
    assert lr_change_steps([{"step": 1, "lr": 1e-3}, {"step": 2, "lr": 1.0000001e-3}]) == []
    # by images seen: steps × the run's batch size, so batch 2 and batch 4 runs line up
    batch4 = {**_overfit_metrics(curve, 1200, 0.3), "config": {"data": {"batch_size": 4}}}
    assert ap_points(batch4, by="images") == [(0, 0.0), (2160, 0.1), (4320, 0.25), (4800, 0.3)]
    with pytest.raises(ValueError, match="config.data.batch_size"):
        ap_points(_overfit_metrics(curve, 1200, 0.3), by="images")
    with pytest.raises(ValueError, match="epoch"):
        ap_points(batch4, by="epoch")


def test_the_loss_plot_gains_an_ap_panel_and_survives_zero_terms(tmp_path):
    from matplotlib.image import imread

    from keras_ehrnet.train import plot_losses

    history = [
        {"step": s, "loss": 1.0 / s, "heatmaps_quarter": 0.5 / s, "push": 0.0, "pull": 1e-4, "lr": 1e-3}
        for s in range(1, 120)
    ]
    two = imread(plot_losses(history, tmp_path / "two.png"))
    three = imread(
        plot_losses(history, tmp_path / "three.png", ap_curve=[(0, 0.0), (119, 0.4)], ap_target=0.5)
    )
    assert three.shape[0] == two.shape[0] and three.shape[1] == pytest.approx(1.5 * two.shape[1], rel=0.01)


def test_compare_command_tables_and_plots_runs_by_step(tmp_path, capsys):
    from matplotlib.image import imread

    from training.compare import main

    for name, curve, steps, after in (
        ("short", [{"step": 540, "AP": 0.1}], 900, 0.2),
        ("long", [{"step": 540, "AP": 0.12}, {"step": 1080, "AP": 0.3}], 1500, 0.45),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(_overfit_metrics(curve, steps, after)))
    png = tmp_path / "ap.png"
    assert main([str(tmp_path / "short"), str(tmp_path / "long" / "metrics.json"), "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "short: 900 steps" in out and "AP by step  0: 0.000  540: 0.120  1080: 0.300  1500: 0.450" in out
    assert imread(png).ndim == 3
    assert main([str(tmp_path / "short"), "--out", str(png), "--labels", "a", "b"]) == 2
    assert "2 labels for 1 runs" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere"), "--out", str(png)]) == 2
    assert "nowhere" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert main([str(tmp_path / "bad.json"), "--out", str(png)]) == 2
    assert "bad.json: not valid JSON" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"AP": 0.3}))
    assert main([str(tmp_path / "other.json"), "--out", str(png)]) == 2
    assert "no AP_before, AP_after, steps" in capsys.readouterr().err
    # --by images needs each run's batch size, and then scales its steps by it
    assert main([str(tmp_path / "short"), "--by", "images", "--out", str(png)]) == 2
    assert "short: no batch size" in capsys.readouterr().err
    metrics = {
        **_overfit_metrics([{"step": 540, "AP": 0.1}], 900, 0.2),
        "config": {"data": {"batch_size": 2}},
    }
    (tmp_path / "b2.json").write_text(json.dumps(metrics))
    assert main([str(tmp_path / "b2.json"), "--by", "images", "--out", str(png)]) == 0
    assert "AP by images seen  0: 0.000  1080: 0.100  1800: 0.200" in capsys.readouterr().out
