"""Fine-tuning the real H-4: a 17-keypoint model onto 14 keypoints, frozen backbone, loss falls."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from test_training import synthetic_arrays, synthetic_dataset_fn

from keras_ehrnet import build_model
from keras_ehrnet.train import Trainer, backbone_layers, config_from_dict, load_initial_weights

HEADS = {"final_quarter", "final_half", "deconv_conv"}
SIZE = 64


def _weights(model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [w.numpy().copy() for w in layer.weights] for layer in model.layers if layer.weights}


@pytest.fixture(scope="module")
def source17(tmp_path_factory):
    """A 17-keypoint H-4 saved as .keras and .weights.h5, and its weights by layer."""
    folder = tmp_path_factory.mktemp("source17")
    model = build_model("H-4", num_joints=17)
    # Make every weight distinguishable from a fresh initialisation (BN gammas are all 1 at init).
    for v in model.weights:
        v.assign(v.numpy() + np.random.default_rng(len(v.path)).normal(0, 0.01, v.shape).astype(np.float32))
    model.save(folder / "h4_17.keras")
    model.save_weights(folder / "h4_17.weights.h5")
    return folder, _weights(model)


def _assert_only_heads_fresh(model, source_weights, report):
    assert set(report.not_loaded) == HEADS
    assert len(report.loaded) == len(source_weights) - len(HEADS)
    for layer in model.layers:
        if layer.name in report.loaded:
            for mine, theirs in zip(layer.weights, source_weights[layer.name]):
                np.testing.assert_array_equal(mine.numpy(), theirs)
    assert model.get_layer("final_half").weights[0].shape[-1] == 14
    assert all(np.isfinite(w.numpy()).all() for name in HEADS for w in model.get_layer(name).weights)


def test_weights_h5_from_17_keypoints_fill_everything_but_the_heads(source17):
    folder, source_weights = source17
    model = build_model("H-4", num_joints=14)
    report = load_initial_weights(model, folder / "h4_17.weights.h5")
    _assert_only_heads_fresh(model, source_weights, report)
    with pytest.raises(FileNotFoundError, match="nowhere.keras"):
        load_initial_weights(model, folder / "nowhere.keras")


@pytest.mark.slow
def test_finetune_17_to_14_keypoints_with_frozen_backbone(source17, tmp_path, capsys):
    folder, source_weights = source17
    images, targets = synthetic_arrays(num=2, size=SIZE, num_joints=14)
    config = config_from_dict(
        {
            "model": {"level": "H-4", "num_joints": 14},
            "data": {"input_size": SIZE, "batch_size": 2},
            "train": {
                "epochs": 8,
                "workdir": str(tmp_path / "run"),
                "strategy": "default",
                "init": str(folder / "h4_17.keras"),
                "freeze_backbone": True,
            },
            "logging": {"progress": False, "every_steps": 1, "images_every_steps": 0},
        }
    )
    trainer = Trainer(config, dataset_fn=synthetic_dataset_fn(images, targets, global_batch=2))
    report = trainer.init_report
    _assert_only_heads_fresh(trainer.model, source_weights, report)
    assert report.source_num_joints == 17 and report.num_joints == 14
    backbone = {layer.name for layer in backbone_layers(trainer.model)}
    assert backbone and all(not layer.trainable for layer in backbone_layers(trainer.model))
    heads_before = trainer.model.get_layer("final_quarter").get_weights()[0].copy()

    result = trainer.fit()
    assert "keypoints 17 → 14: heads re-initialised" in capsys.readouterr().out
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 8 and np.mean(losses[-2:]) < losses[0]
    # The frozen backbone, BatchNorm moving statistics included, is still the source's.
    for layer in trainer.model.layers:
        if layer.name in backbone and layer.weights:
            for mine, theirs in zip(layer.weights, source_weights[layer.name]):
                np.testing.assert_array_equal(mine.numpy(), theirs)
    assert not np.allclose(trainer.model.get_layer("final_quarter").get_weights()[0], heads_before)

    # A training workdir is a valid --init source too (back to 17 keypoints).
    model17 = build_model("H-4", num_joints=17)
    back = load_initial_weights(model17, tmp_path / "run")
    assert set(back.not_loaded) == HEADS and back.source_num_joints == 14
    name = next(n for n in back.loaded if n.startswith("stage"))
    np.testing.assert_array_equal(
        model17.get_layer(name).weights[0].numpy(), trainer.model.get_layer(name).weights[0].numpy()
    )
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")) is not None


def test_a_workdir_trained_without_drop_connect_initialises_by_its_own_structure(tmp_path):
    # rate 0 leaves the Dropout layers out, which renumbers the checkpoint's layers
    trained = build_model("H-4", num_joints=3, drop_connect_rate=0.0)
    for v in trained.weights:
        v.assign(v.numpy() + np.random.default_rng(len(v.path)).normal(0, 0.01, v.shape).astype(np.float32))
    (tmp_path / "config.yaml").write_text("model:\n  level: H-4\n  num_joints: 3\n  drop_connect_rate: 0.0\n")
    tf.train.Checkpoint(model=trained).save(str(tmp_path / "checkpoints" / "ckpt"))
    model = build_model("H-4", num_joints=3)  # the released rate: with its Dropout layers
    report = load_initial_weights(model, tmp_path)
    assert report.not_loaded == {}
    for name, values in _weights(trained).items():
        for mine, theirs in zip(model.get_layer(name).weights, values):
            np.testing.assert_array_equal(mine.numpy(), theirs)
