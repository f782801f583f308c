"""Outputs survive failures and bad inputs: atomic writes, output paths checked up front,
batch programs that skip what they cannot take, and a Predictor that says what it refuses.
"""

from __future__ import annotations

import json

import cv2
import keras
import numpy as np
import pytest
from test_predictor import IMAGE_SIZE, SceneRunner, scene
from test_training import tiny_model, tiny_trainer

from keras_ehrnet.deploy import calibration_images, collect_skipped
from keras_ehrnet.fileio import OutputPathError, atomic_path, atomic_write_json, check_writable
from keras_ehrnet.inference.images import to_rgb_uint8
from keras_ehrnet.inference.predictor import Predictor, predict_files
from keras_ehrnet.train import TrainingFailedError


# ---------------------------------------------------------------------------- atomic writes
def test_a_failed_rewrite_keeps_the_previous_file_or_folder(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"AP": 0.5})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"AP": object()})  # cannot be encoded
    with pytest.raises(OSError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text('{"AP": 0.')
        raise OSError("disk full")
    assert json.loads(target.read_text()) == {"AP": 0.5}

    folder = tmp_path / "model_savedmodel"
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "saved_model.pb").write_text("one")
    with pytest.raises(RuntimeError), atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "saved_model.pb").write_text("half")
        raise RuntimeError("killed")
    assert (folder / "saved_model.pb").read_text() == "one"
    with atomic_path(folder) as tmp:  # a complete new folder replaces the old one
        tmp.mkdir()
        (tmp / "saved_model.pb").write_text("two")
    assert (folder / "saved_model.pb").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "model_savedmodel"]


def test_a_crash_while_best_keras_is_rewritten_keeps_the_previous_best(tmp_path):
    aps = iter([0.1, 0.2, 0.3])
    trainer = tiny_trainer(
        tmp_path,
        evaluate_fn=lambda model: {"AP": next(aps)},
        train={"epochs": 3},
        validation={"every_epochs": 1},
    )
    save, calls = trainer.model.save, []

    def dying_save(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second best.keras: the disk fills half-way through
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 half a zip")
            raise OSError(28, "No space left on device")
        return save(path, *args, **kwargs)

    trainer.model.save = dying_save
    with pytest.raises(TrainingFailedError, match="No space left on device") as info:
        trainer.fit()
    assert not info.value.input_error and info.value.checkpoint.endswith("ckpt-4")
    assert keras.saving.load_model(tmp_path / "best.keras", compile=False) is not None  # epoch 1's
    assert not list(tmp_path.glob(".tmp-*"))


# ---------------------------------------------------------------------------- output paths checked first
def test_output_locations_are_checked_before_the_work(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert (
        check_writable(tmp_path / "new" / "deeper" / "model.tflite") == tmp_path / "new/deeper/model.tflite"
    )
    assert not (tmp_path / "new").exists()  # nothing is created by the check
    with pytest.raises(
        OutputPathError, match=r"--out .*notes.txt/model.onnx cannot be created: .*notes.txt is a file"
    ):
        check_writable(a_file / "model.onnx", what="--out")
    with pytest.raises(OutputPathError, match="is a folder; expected a file"):
        check_writable(tmp_path, what="--out")
    with pytest.raises(OutputPathError, match="is a file; expected a folder"):
        check_writable(a_file, kind="dir", what="--workdir")


def test_conversion_refuses_an_unwritable_out_before_converting(tmp_path, capsys):
    from conversion.__main__ import main

    a_file = tmp_path / "exists.txt"
    a_file.write_text("x")
    code = main(["--level", "H-4", "--format", "savedmodel", "--out", str(a_file)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --out") and "expected a folder" in err and "\n" not in err
    assert a_file.read_text() == "x"


def test_predict_program_checks_out_and_strict_fails_on_skipped_inputs(tmp_path, capsys):
    from evaluation.predict import main

    model = tmp_path / "tiny.keras"
    tiny_model().save(model)  # 3 keypoints, any input size: fast to load and run
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.jpg"), np.full((50, 70, 3), 128, np.uint8))
    (folder / "notes.jpg").write_text("a text file renamed .jpg")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    common = ["--model", str(model), "--input-size", "64", "--no-flip", "--quiet", str(folder)]

    assert main([*common, "--out", str(a_file / "out")]) == 2
    assert "file.txt is a file" in capsys.readouterr().err

    out = tmp_path / "out"
    assert main([*common, "--out", str(out), "--strict"]) == 2  # after predicting the good image
    assert "--strict: 1 input(s) skipped" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert [s["input"] for s in summary["skipped"]] == [str(folder / "notes.jpg")]
    assert summary["frames"] == 1 and (out / "good.json").is_file()


# ---------------------------------------------------------------------------- batch programs skip and go on
def test_one_image_the_model_cannot_take_does_not_stop_the_folder(tmp_path):
    truth = scene(2, seed=4)
    # the stand-in network only takes the input sizes of 240x320 images; any other size raises
    predictor = Predictor(SceneRunner(truth, IMAGE_SIZE, 256), input_size=256, flip=False)
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), np.full((*IMAGE_SIZE, 3), 90, np.uint8))
    cv2.imwrite(str(folder / "b.jpg"), np.full((500, 90, 3), 90, np.uint8))  # the runtime fails here
    cv2.imwrite(str(folder / "c.png"), np.full((*IMAGE_SIZE, 3), 90, np.uint8))
    out = tmp_path / "out"
    summary = predict_files(predictor, [folder], out, progress=False)
    assert [e["input"] for e in summary["inputs"]] == [str(folder / "a.jpg"), str(folder / "c.png")]
    (skipped,) = summary["skipped"]
    assert skipped["input"] == str(folder / "b.jpg") and skipped["reason"].startswith("cannot be predicted")
    assert "\n" not in skipped["reason"]
    assert summary["frames"] == 2 and (out / "c.json").is_file() and not (out / "b.json").exists()


def test_calibration_skips_and_lists_unreadable_images(tmp_path):
    for name in ("a.jpg", "c.png"):
        cv2.imwrite(str(tmp_path / name), np.full((40, 60, 3), 100, np.uint8))
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 truncated")
    with collect_skipped() as skipped:
        images = list(calibration_images(tmp_path, (64, 64), progress=False))
    assert len(images) == 2 and images[0].shape == (64, 64, 3)
    assert [s["input"] for s in skipped] == [str(tmp_path / "b.jpg")]
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "c.png").write_bytes(b"")
    with pytest.raises(ValueError, match="none of the 3 calibration images"):
        list(calibration_images(tmp_path, (64, 64), progress=False))


def test_broken_model_files_are_named_with_what_is_wrong(tmp_path):
    from keras_ehrnet.deploy import export
    from keras_ehrnet.deploy.runtimes import load_runner

    truncated = tmp_path / "final.keras"
    tiny_model().save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])  # a kill during a non-atomic save
    for load in (lambda p: export(p, "onnx", tmp_path / "m.onnx"), load_runner):
        with pytest.raises(ValueError, match="final.keras: not a .keras file"):
            load(truncated)
    copy = tmp_path / "copied_savedmodel"
    copy.mkdir()
    (copy / "saved_model.pb").write_bytes(b"\x08\x01")  # the copy stopped before variables/
    with pytest.raises(ValueError, match="copied_savedmodel has no variables/ folder"):
        load_runner(copy)


# ---------------------------------------------------------------------------- Predictor values
def test_float_images_in_0_to_1_are_scaled_and_other_values_refused():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(base.astype(np.float32) / 255.0), base)  # not black
    np.testing.assert_array_equal(to_rgb_uint8(base.astype(np.float64)), base)  # 0..255 floats as they are
    np.testing.assert_array_equal(to_rgb_uint8(base.astype(np.int64)), base)
    refused = {
        "0..255 .*got -0.5..": base.astype(np.float32) - 0.5,
        r"0\.\.255 .*\.\.300 \(dtype int32\)": np.where(base == base.max(), 300, base.astype(np.int32)),
        "NaN or infinite": np.where(base > 250, np.nan, base.astype(np.float32) / 255),
        "dtype bool": base > 100,
        "dtype complex": base.astype(np.complex64),
        "one image at a time": base[None],
        "channels first": base.transpose(2, 0, 1),
    }
    for message, image in refused.items():
        with pytest.raises(ValueError, match=message):
            to_rgb_uint8(image)
    predictor = Predictor(SceneRunner(scene(0), (20, 30), 64), input_size=64)
    with pytest.raises(ValueError, match="0..255"):
        predictor.predict(base.astype(np.float32) * 2)
