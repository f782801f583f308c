"""Importing released PyTorch checkpoints, without torch."""

import io
import os
import pickle
import zipfile

import keras
import numpy as np
import pytest
from conftest import ROOT, cached_model, restored_weights
from torch_pth import write_pth

import keras_ehrnet as ke
from keras_ehrnet.reference_facts import load_state_dict_facts
from keras_ehrnet.weights.torch_import import guess_level, load_torch_weights, read_torch_checkpoint
from keras_ehrnet.weights.weights_map import weight_pairs

FIXTURES = ROOT / "tests" / "data" / "torch"
LEVELS = ["H0", "H-1", "H-2", "H-3", "H-4"]


def synthetic_state(level: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors shaped like the reference state_dict of `level`."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in load_state_dict_facts(level)["state_dict"]:
        if key.endswith("num_batches_tracked"):
            state[key] = np.array(3, np.int64)
        else:
            state[key] = rng.standard_normal(shape).astype(np.float32)
    return state


@pytest.mark.parametrize("name", ["zip_wrapped.pth", "legacy.pth"])
def test_reads_real_torch_files(name):
    expected = np.load(FIXTURES / "expected.npz")
    got = read_torch_checkpoint(FIXTURES / name)
    assert set(got) == set(expected.files)  # "module." stripped, wrapper removed
    for key in expected.files:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert got["half"].dtype == np.float16 and got["bf16"].dtype == np.float32


@pytest.mark.parametrize("level", LEVELS)
def test_mapping_is_total_for_reference_state_dicts(level):
    """Every reference tensor used once, every Keras weight set once, layouts converted."""
    with restored_weights(cached_model(level)) as model:
        _check_total_mapping(model, synthetic_state(level))


def _check_total_mapping(model, state):
    report = load_torch_weights(model, state)
    assert report.ok and not report.skipped
    pairs = weight_pairs(model)
    assert sorted(report.loaded) == sorted(p.torch_key for p in pairs)
    for pair in pairs:
        np.testing.assert_array_equal(pair.variable.numpy(), pair.to_keras(state[pair.torch_key]))
    # spot-check the layout rules on one tensor of each kind
    k = model.get_layer("stem_conv").kernel.numpy()
    np.testing.assert_array_equal(k[:, :, 2, 5], state["features.0.1.weight"][5, 2])
    dw = model.get_layer("block2_dwconv").kernel.numpy()
    np.testing.assert_array_equal(dw[:, :, 7, 0], state["features.2.conv.1.1.weight"][7, 0])
    de = model.get_layer("deconv_conv").kernel.numpy()  # torch [in, out, kh, kw] → (kh, kw, out, in)
    np.testing.assert_array_equal(de[:, :, 3, 9], state["deconv_layers.0.0.0.weight"][9, 3])
    bn = model.get_layer("deconv_bn")
    np.testing.assert_array_equal(bn.moving_variance.numpy(), state["deconv_layers.0.0.1.running_var"])


def test_strict_errors_name_the_tensors_and_change_nothing():
    with restored_weights(cached_model("H-4")) as model:
        _check_strict(model)


def _check_strict(model):
    before = model.get_layer("stem_conv").kernel.numpy().copy()
    state = synthetic_state("H-4")
    missing = dict(state)
    del missing["stage2.0.branches.1.0.conv2.weight"]
    with pytest.raises(ValueError, match=r"stage2\.0\.branches\.1\.0\.conv2\.weight"):
        load_torch_weights(model, missing)
    extra = dict(state, **{"extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"extra\.weight"):
        load_torch_weights(model, extra)
    wrong = dict(state, **{"trans1_branch1.0.weight": np.zeros((15, 16, 3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"trans1_branch1\.0\.weight: checkpoint \(15, 16, 3, 3\)"):
        load_torch_weights(model, wrong)
    np.testing.assert_array_equal(model.get_layer("stem_conv").kernel.numpy(), before)


def test_other_num_joints_needs_allow_missing_head():
    model = ke.build_model("H-4", num_joints=14)
    head_before = model.get_layer("final_half").kernel.numpy().copy()
    state = synthetic_state("H-4")
    with pytest.raises(ValueError, match="final_layers"):
        load_torch_weights(model, state)
    report = load_torch_weights(model, state, allow_missing_head=True)
    assert set(report.skipped) == {
        "final_layers.0.weight",
        "final_layers.0.bias",
        "final_layers.1.weight",
        "final_layers.1.bias",
        "deconv_layers.0.0.0.weight",
    }
    np.testing.assert_array_equal(model.get_layer("final_half").kernel.numpy(), head_before)
    np.testing.assert_array_equal(
        model.get_layer("deconv_bn").gamma.numpy(), state["deconv_layers.0.0.1.weight"]
    )


def test_backbone_only_from_a_classifier_checkpoint():
    clf = ke.build_backbone_classifier("B-4", num_classes=10)
    rng = np.random.default_rng(1)
    state = {
        p.torch_key: rng.standard_normal(p.to_torch_shape(tuple(p.variable.shape))).astype(np.float32)
        for p in weight_pairs(clf)
    }
    assert guess_level(state) == ("B-4", "classifier")
    with restored_weights(cached_model("H-4")) as pose:
        _check_backbone_only(pose, state)


def _check_backbone_only(pose, state):
    hr_before = pose.get_layer("trans1_branch1_conv").kernel.numpy().copy()
    report = load_torch_weights(pose, state, backbone_only=True)
    assert all(k.startswith("features.") for k in report.loaded)
    assert "classifier.1.weight" in report.skipped
    np.testing.assert_array_equal(
        pose.get_layer("block10_project_conv").kernel.numpy(),
        np.transpose(state["features.10.conv.3.weight"], (2, 3, 1, 0)),
    )
    np.testing.assert_array_equal(pose.get_layer("trans1_branch1_conv").kernel.numpy(), hr_before)


@pytest.mark.parametrize("legacy", [False, True])
def test_cli_converts_a_checkpoint_file_to_keras(tmp_path, legacy):
    from conversion.from_torch import main

    state = synthetic_state("H-4", seed=2)
    pth = tmp_path / "ckpt.pth"
    write_pth(pth, state, legacy=legacy, wrap="state_dict")
    out = tmp_path / "m.keras"
    assert main([str(pth), "--out", str(out)]) == 0
    loaded = keras.saving.load_model(out)
    assert loaded.config.name == "H-4"
    np.testing.assert_array_equal(
        loaded.get_layer("final_quarter").kernel.numpy()[0, 0],
        state["final_layers.0.weight"][:, :, 0, 0].T,
    )


def test_cli_reports_bad_files(tmp_path, capsys):
    from conversion.from_torch import main

    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    assert main([str(bad), "--out", str(tmp_path / "x.keras")]) == 1
    assert "notes.pth" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.pth"), "--out", str(tmp_path / "x.keras")]) == 1
    assert "missing.pth" in capsys.readouterr().err


def test_reader_refuses_code_in_the_pickle(tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        buf = io.BytesIO()
        pickle.dump({"w": os.getcwd}, buf, protocol=2)
        zf.writestr("archive/data.pkl", buf.getvalue())
    with pytest.raises(ValueError, match="not part of a state_dict"):
        read_torch_checkpoint(path)


def test_guess_level_for_every_preset():
    for level in LEVELS:
        assert guess_level(synthetic_state(level)) == (level, "pose")


def test_pretrained_weights_reach_predictions(tmp_path):
    """Loading changes the model's outputs (the weights are really used)."""
    model = cached_model("H-4")
    x = np.full((1, 64, 64, 3), 128, np.float32)
    a = model(x, training=False)[1].numpy()
    with restored_weights(model):
        load_torch_weights(model, synthetic_state("H-4", seed=5))
        b = model(x, training=False)[1].numpy()
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(model(x, training=False)[1].numpy(), a)  # restored
