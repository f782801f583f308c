"""The README's promises hold: its set-up commands are the ones CI runs, the quickstart delivers
every file it lists, the Python snippet computes what its comments say, and each command named
in its prose runs (placeholders replaced by the sample data, settings made small)."""

from __future__ import annotations

import json
import math
import re
import shlex

import numpy as np
import pytest
from conftest import ROOT
from guide_commands import code_blocks, python_m_commands, run_module

README = ROOT / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_set_up_commands_are_exactly_what_ci_runs():
    install = re.findall(r"```bash\n(.*?)\n```", section("Install"), re.S)
    test = re.findall(r"```bash\n(.*?)\n```", section("Test"), re.S)
    assert install == ["pip install -r requirements.txt"]
    assert test == ["python -m pytest -q"]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert ci_lines[-2:] == [install[0], test[0]]  # the last two steps, in this order
    assert "python3 -m venv .ci-venv" in ci_lines and "rm -rf .ci-venv" in ci_lines  # fresh environment


def test_quickstart_writes_everything_it_lists(tmp_path, capsys):
    quickstart = re.findall(
        r"```bash\n(.*?)\n```",
        section("Quickstart: the whole product on the embedded sample, in one command"),
        re.S,
    )
    assert quickstart == ["python -m training.quickstart"]
    out = tmp_path / "quickstart"
    argv = shlex.split(quickstart[0]) + ["--out", str(out), "--input-size", "64", "--epochs", "1", "--quiet"]
    assert run_module(argv) == 0
    printed = capsys.readouterr().out
    for name in ("model.keras", "model.tflite", "metrics.json", "loss.png", "compare.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        assert str(out / name) in printed  # it says where everything is
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["AP"]) and math.isfinite(metrics["AP_tflite"])
    assert metrics["epochs_done"] == 1 and metrics["images"] == 10
    # trained, scored and exported at one letterboxed geometry: the export scores what Keras scores
    assert metrics["tflite_input_size"] == [64, 64] and metrics["config"]["data"]["scale_type"] == "long"
    assert abs(metrics["AP_tflite"] - metrics["AP"]) <= 0.01
    assert "memorised" in printed and f"≥ {metrics['draw_min_score']:g}" in printed
    drawn = sorted((out / "predictions").glob("*.jpg"))
    assert len(drawn) == 10 and [str(p) for p in drawn] == metrics["files"]["annotated_images"]
    import cv2

    from keras_ehrnet.data import sample_dataset

    original = cv2.imread(str(sample_dataset()[1] / drawn[0].name))
    assert cv2.imread(str(drawn[0])).shape == original.shape


def test_python_snippet_computes_what_its_comments_say():
    snippet, video = code_blocks(README, "python")  # the second ("Video and tracking") continues the first
    scope: dict = {}
    exec(compile(snippet, str(README), "exec"), scope)
    assert tuple(scope["quarter"].shape) == (1, 96, 96, 34)
    assert tuple(scope["half"].shape) == (1, 192, 192, 17)
    assert scope["model"].config.name == "H-4"
    assert isinstance(scope["people"], list)
    exec(compile(video, str(README), "exec"), scope)
    assert scope["tracker"].frame == 0
    assert all(isinstance(p.track_id, int) and p.track_id >= 1 for p in scope["people"])


def _checkpoint(path) -> None:
    """A released-style H-4 state_dict (random, with valid BatchNorm statistics) as a .pth file."""
    from torch_pth import write_pth

    from keras_ehrnet.reference_facts import load_state_dict_facts

    rng = np.random.default_rng(0)
    state = {}
    for key, shape in load_state_dict_facts("H-4")["state_dict"]:
        if key.endswith("num_batches_tracked"):
            state[key] = np.array(1, np.int64)
        elif key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            state[key] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
    write_pth(path, state, wrap="state_dict")


@pytest.mark.slow
def test_commands_in_the_prose_run(tmp_path, monkeypatch):
    from keras_ehrnet.data import sample_dataset

    text = README.read_text()
    commands = [shlex.split(c) for c in re.findall(r"`(python -m [^`]+)`", text)]
    commands += python_m_commands(README, "text")  # the serving export
    modules = [c[2] for c in commands]
    assert modules == [
        "conversion.from_torch",
        "training",
        "evaluation.coco",
        "conversion",
        "evaluation.profile",
        "conversion",
    ], "the README's commands changed: update this test"
    ann, images = sample_dataset()
    monkeypatch.chdir(tmp_path)
    _checkpoint(tmp_path / "CHECKPOINT.pth")
    placeholders = {
        "A": str(ann),
        "D": str(images),
        "M.keras": "model.keras",
        "training/configs/H-4.yaml": str(ROOT / "training/configs/H-4.yaml"),
    }
    smaller = {
        "conversion.from_torch": [],
        "training": ["--input-size", "64", "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "1"]
        + ["--no-progress", "--strategy", "default", "--workdir", str(tmp_path / "run")],
        "evaluation.coco": ["--input-size", "64", "--max-images", "2", "--quiet"],
        "conversion": ["--input-size", "64", "--no-progress"],
        "evaluation.profile": ["--levels", "H-4", "--no-latency"],
    }
    for argv in commands:
        argv = [placeholders.get(a, a) for a in argv] + smaller[argv[2]]
        assert run_module(argv) == 0, argv
    assert (tmp_path / "model.keras").is_file() and (tmp_path / "model.tflite").stat().st_size > 1e6
    assert (tmp_path / "run" / "final.keras").is_file()
    assert (tmp_path / "models" / "ehrnet" / "1" / "saved_model.pb").is_file()
