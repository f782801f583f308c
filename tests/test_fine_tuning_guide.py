"""docs/fine-tuning.md works as written: its snippet makes a 14-keypoint set, and each of its
commands runs on it (with a smaller input size and one short epoch appended)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import ROOT
from guide_commands import code_blocks, python_m_commands, run_module

GUIDE = ROOT / "docs" / "fine-tuning.md"
# appended to each program's own arguments (argparse keeps the last value)
SMALLER = {
    "training.show_targets": ["--input-size", "64", "--n", "2"],
    "training": ["--input-size", "64", "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "2"]
    + ["--val-every", "1", "--no-progress", "--strategy", "default"],
    "evaluation.coco": ["--input-size", "64", "--quiet"],
    "conversion": ["--input-size", "64", "--no-progress"],
    "evaluation.predict": ["--input-size", "64", "--quiet"],
}


@pytest.fixture(scope="module")
def guide_dir(tmp_path_factory):
    """A working directory laid out like the repository root (the guide's paths are relative)."""
    work = tmp_path_factory.mktemp("guide")
    for name in ("keras_ehrnet", "training"):
        (work / name).symlink_to(ROOT / name, target_is_directory=True)
    return work


@pytest.mark.slow
def test_the_guide_runs_from_data_to_predictions(guide_dir, monkeypatch, capsys):
    import keras_ehrnet
    from keras_ehrnet.data.coco import keypoint_set

    monkeypatch.chdir(guide_dir)
    (snippet,) = code_blocks(GUIDE, "python")
    exec(compile(snippet, str(GUIDE), "exec"), {"__name__": "guide"})
    ann = guide_dir / "runs/my14/person_keypoints_14.json"
    spec = keypoint_set(ann)
    assert spec.num_joints == 14 and spec.names[-2:] == ("head", "neck")
    assert spec.flip_index[0] == 1 and spec.flip_index[12:] == (12, 13)  # shoulders swap; head, neck stay
    assert len(spec.skeleton) == 14
    anns = json.loads(ann.read_text())["annotations"]
    assert all(len(a["keypoints"]) == 42 for a in anns)

    # the guide starts from the quickstart's 17-keypoint model
    (guide_dir / "runs/quickstart").mkdir(parents=True)
    keras_ehrnet.build_model("H-4").save(guide_dir / "runs/quickstart/model.keras")

    commands = python_m_commands(GUIDE)
    assert [c[2] for c in commands] == list(SMALLER), "the guide's commands changed: update SMALLER"
    for argv in commands:
        assert run_module(argv + SMALLER[argv[2]]) == 0, argv
    out = capsys.readouterr().out

    assert len(list((guide_dir / "runs/my14/targets").glob("*.png"))) == 2
    assert "not loaded" in out and "final_quarter" in out  # the fresh heads are reported
    workdir = guide_dir / "runs/my14/train"
    import keras

    model = keras.models.load_model(workdir / "final.keras")
    assert model.outputs[0].shape[-1] == 28 and model.outputs[1].shape[-1] == 14
    assert math.isfinite(json.loads((guide_dir / "runs/my14/ap.json").read_text())["AP"])
    assert (guide_dir / "runs/my14/model.tflite").stat().st_size > 1e6
    predictions = sorted((guide_dir / "runs/my14/predictions").glob("0*.json"))
    assert len(predictions) == 10
    payload = json.loads(predictions[0].read_text())
    assert payload["keypoint_names"] == list(spec.names)
    assert all(len(p["keypoints"]) == 14 for p in payload["people"])


def test_predict_refuses_a_keypoint_file_that_does_not_fit_the_model(guide_dir, tmp_path, capsys):
    from keras_ehrnet.data import sample_dataset

    ann, images = sample_dataset()
    one = sorted(images.iterdir())[0]
    model = tmp_path / "m14.keras"
    import keras_ehrnet

    keras_ehrnet.build_model("H-4", num_joints=14).save(model)
    argv = ["python", "-m", "evaluation.predict", "--model", str(model), "--keypoints", str(ann), str(one)]
    assert run_module(argv + ["--out", str(tmp_path / "p"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "predicts 14 keypoints" in err and "names 17" in err
    argv = [
        "python",
        "-m",
        "evaluation.predict",
        "--model",
        str(model),
        "--flip-pairs",
        "left_a:right_a",
        str(one),
    ]
    assert run_module(argv + ["--out", str(tmp_path / "p"), "--quiet"]) == 2
    assert "--keypoints" in capsys.readouterr().err
