"""Training never loses finished work: errors mid-run checkpoint first, resume is checked,
a second Ctrl-C waits for the checkpoint, a kill leaves every file usable, bad --init is named.

Uses the tiny stand-in model and synthetic data of test_training (a few seconds per run).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from test_training import BATCH, N, synthetic_arrays, tiny_model, tiny_trainer
from test_training import _spawn as spawn_worker

from keras_ehrnet.train import ConfigError, TrainingFailedError, load_initial_weights


def _steps(workdir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (workdir / "history.jsonl").read_text().splitlines()]


def _latest(workdir: Path) -> str | None:
    return tf.train.latest_checkpoint(str(workdir / "checkpoints"))


def failing_dataset_fn(images, targets, broken: dict):
    """Plain batches; while `broken["epoch"]` is set, that epoch's second batch fails inside
    the input pipeline (a TF error at `get_next`, as an undecodable image gives)."""

    def fn(ctx: tf.distribute.InputContext, epoch: int) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((images, targets)).batch(BATCH, drop_remainder=True)
        if broken.get("epoch") == epoch:

            def check(i, batch):
                ok = tf.debugging.assert_less(
                    i, tf.constant(1, tf.int64), message="cannot decode image 7.jpg"
                )
                with tf.control_dependencies([ok]):
                    return tf.identity(batch[0]), batch[1]

            ds = ds.enumerate().map(check)
        return ds

    return fn


def test_an_input_error_mid_run_checkpoints_first_and_resume_continues(tmp_path):
    images, targets = synthetic_arrays()
    broken = {"epoch": 1}
    sections = {"train": {"epochs": 2}, "checkpoint": {"every_steps": 1000, "every_epochs": 100}}
    trainer = tiny_trainer(tmp_path, **sections)
    trainer.dataset_fn = failing_dataset_fn(images, targets, broken)
    with pytest.raises(TrainingFailedError, match="cannot decode image 7.jpg") as info:
        trainer.fit()
    steps = N // BATCH  # 2 per epoch: steps 1, 2 and 3 finished, the 4th batch failed
    err = info.value
    assert err.input_error and err.step == steps + 1
    assert "\n" not in str(err) and "--resume" in str(err)
    assert err.checkpoint.endswith(f"ckpt-{steps + 1}") and _latest(tmp_path) == err.checkpoint
    reader = tf.train.load_checkpoint(err.checkpoint)
    assert reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE") == 1
    assert reader.get_tensor("step_in_epoch/.ATTRIBUTES/VARIABLE_VALUE") == 1

    # A kill after the checkpoint left rows of steps that will be trained again, and half a line.
    with open(tmp_path / "history.jsonl", "a") as f:
        f.write(json.dumps({"step": steps + 2, "loss": 1.0}) + "\n" + '{"step": 6, "lo')
    broken.clear()  # the image is fixed
    resumed = tiny_trainer(tmp_path, train={"epochs": 2, "resume": True}, checkpoint=sections["checkpoint"])
    resumed.dataset_fn = failing_dataset_fn(images, targets, broken)
    result = resumed.fit()
    assert result.step == 2 * steps and not result.interrupted
    assert [row["step"] for row in result.history] == [2 * steps]  # only the step that failed
    assert _steps(tmp_path) == list(range(1, 2 * steps + 1))  # each step once


def test_the_command_line_ends_a_failed_run_with_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import training.__main__ as cli

    images, targets = synthetic_arrays()

    def fit(config):
        trainer = tiny_trainer(
            tmp_path, train={"epochs": 2}, checkpoint={"every_steps": 1000, "every_epochs": 100}
        )
        trainer.dataset_fn = failing_dataset_fn(images, targets, {"epoch": 1})
        return trainer.fit()

    monkeypatch.setattr("keras_ehrnet.train.train", fit)
    code = cli.main(["--workdir", str(tmp_path), "--strategy", "default"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: reading the training data failed") and "\n" not in err
    assert "ckpt-3" in err and "Traceback" not in err


def test_resume_refuses_a_workdir_without_checkpoints_and_another_batch_size(tmp_path):
    typo = tmp_path / "rn"
    with pytest.raises(FileNotFoundError, match=f"--resume: no checkpoint in {typo}"):
        tiny_trainer(typo, train={"resume": True})
    assert not typo.exists()  # nothing created under the mistyped name

    run = tmp_path / "run"
    tiny_trainer(run, train={"epochs": 1}).fit()
    with pytest.raises(ConfigError, match=r"data.batch_size 4 .*now 2.*--batch-size 4"):
        tiny_trainer(run, train={"epochs": 2, "resume": True}, data={"batch_size": 2})


def test_resume_removes_what_a_killed_save_left(tmp_path):
    tiny_trainer(tmp_path, train={"epochs": 1}).fit()
    leftovers = [
        tmp_path / "checkpoints" / "ckpt-9_temp",
        tmp_path / "best" / "best-9_temp",
        tmp_path / ".tmp-0123abcd-final.keras",
    ]
    for path in leftovers[:2]:
        path.mkdir(parents=True)
        (path / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 10)
    leftovers[2].write_bytes(b"PK\3\4")
    result = tiny_trainer(tmp_path, train={"epochs": 2, "resume": True}).fit()
    assert result.step == 2 * (N // BATCH)
    assert not any(p.exists() for p in leftovers)


# Run in a fresh process: a signal a test sends itself is handled by whatever thread the kernel
# picks, and a pytest worker that earlier tests filled with other runtimes' thread pools
# (OpenVINO's, JAX's) once died here with a segfault.
_SECOND_CTRL_C = """
import json, os, signal, sys, time
sys.path.insert(0, sys.argv[2])
from test_training import tiny_trainer

trainer = tiny_trainer(sys.argv[1], train={"epochs": 3}, checkpoint={"every_steps": 2})
save = trainer.manager.save

def impatient_save(**kwargs):
    if not trainer._stop_signal:  # the user presses Ctrl-C twice as the first save begins
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    return save(**kwargs)

trainer.manager.save = impatient_save
result = trainer.fit()
print(json.dumps({"interrupted": result.interrupted, "signal": result.signal, "step": result.step}))
"""


def test_a_second_ctrl_c_while_a_checkpoint_is_written_waits_for_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _SECOND_CTRL_C, str(tmp_path), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"interrupted": True, "signal": int(signal.SIGINT), "step": 2}
    assert "training stops when it is complete" in proc.stdout + proc.stderr  # the second press waited
    assert _latest(tmp_path).endswith("ckpt-2")
    assert not list((tmp_path / "checkpoints").glob("*_temp*"))
    reader = tf.train.load_checkpoint(_latest(tmp_path))
    assert reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE") == 2


# ---------------------------------------------------------------------------- --init
def _other_architecture(path: Path) -> Path:
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(16, 5, strides=2, padding="same", name="stem_conv")(inputs)
    keras.Model(inputs, keras.layers.Conv2D(6, 1, name="final_quarter")(x)).save(path)
    return path


def test_init_names_the_file_and_what_is_wrong_with_it(tmp_path):
    model = tiny_model()
    empty = tmp_path / "empty.keras"
    empty.write_bytes(b"")
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    other_zip = tmp_path / "photos.keras"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("a.txt", "x")
    h5 = tmp_path / "garbage.weights.h5"
    h5.write_bytes(b"\x89HDF" + b"\0" * 100)
    tiny_model().save(tmp_path / "good.keras")
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes((tmp_path / "good.keras").read_bytes()[:-200])
    cases = {
        empty: "empty \\(0 bytes\\)",
        text: "not a .keras file \\(not a zip archive",
        other_zip: "not a Keras model \\(no config.json",
        h5: "not an HDF5 weights file",
        truncated: "not a .keras file|damaged|cannot load",
        _other_architecture(tmp_path / "other.keras"): "does not fit this model.*first mismatch: stem_conv",
    }
    for path, message in cases.items():
        with pytest.raises(ConfigError, match=f"--init {path}: .*({message})") as info:
            load_initial_weights(model, path)
        assert "\n" not in str(info.value)
    report = load_initial_weights(model, tmp_path / "good.keras")  # a fitting file still loads
    assert report.num_loaded == len([layer for layer in model.layers if layer.weights])


# ---------------------------------------------------------------------------- SIGKILL at any moment
def worker(spec: str) -> None:
    """Subprocess entry: a tiny run with slow data and a rising validation AP (so best.keras is
    rewritten every epoch); prints the steps it trained."""
    spec = json.loads(spec)
    aps = iter(np.linspace(0.1, 0.9, 50))
    trainer = tiny_trainer(
        spec["workdir"],
        slow=spec["slow"],
        evaluate_fn=lambda model: {"AP": float(next(aps))},
        train={"epochs": spec["epochs"], "resume": spec["resume"]},
        validation={"every_epochs": 1},
        checkpoint={"every_steps": 1, "keep": 2},
    )
    result = trainer.fit()
    print("RESULT " + json.dumps({"steps": [row["step"] for row in result.history], "step": result.step}))


def _spawn(spec: dict) -> subprocess.Popen:
    return spawn_worker(spec, module="test_train_robust")


def _check_every_file(workdir: Path) -> None:
    for model_file in workdir.glob("*.keras"):
        assert keras.saving.load_model(model_file, compile=False) is not None, model_file
    yaml.safe_load((workdir / "config.yaml").read_text())
    for line in (workdir / "history.jsonl").read_text().splitlines():
        json.loads(line)


@pytest.mark.slow
def test_a_killed_run_leaves_every_finished_file_intact_and_resumes(tmp_path):
    epochs, steps = 4, N // BATCH
    proc = _spawn({"workdir": str(tmp_path), "epochs": epochs, "resume": False, "slow": 0.25})
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not (tmp_path / "best.keras").is_file():
        time.sleep(0.02)
    time.sleep(0.6)  # somewhere in the second epoch: steps, checkpoints, a best.keras rewrite
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    latest = _latest(tmp_path)
    assert latest is not None
    done = int(latest.rsplit("-", 1)[1])
    assert 0 < done < epochs * steps
    _check_every_file(tmp_path)

    resumed = _spawn({"workdir": str(tmp_path), "epochs": epochs, "resume": True, "slow": 0.0})
    out, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-3000:]
    result = json.loads([line for line in out.splitlines() if line.startswith("RESULT ")][-1][7:])
    assert result["steps"] == list(range(done + 1, epochs * steps + 1))  # from the checkpoint on
    assert _steps(tmp_path) == list(range(1, epochs * steps + 1))
    _check_every_file(tmp_path)
    assert (tmp_path / "final.keras").is_file() and not list(tmp_path.glob(".tmp-*"))
