"""BatchNorm folding and the one-op nearest upsampling give the same outputs as the plain graph."""

import keras
import numpy as np
from conftest import cached_model, restored_weights

import keras_ehrnet as ke
from keras_ehrnet.metrics.benchmarking import timing_weights
from keras_ehrnet.models.folding import fold_batchnorm
from keras_ehrnet.models.layers import NearestUpsampling2D


def test_nearest_upsampling_matches_keras_upsampling_and_pytorch_rule():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32)
    for f in (2, 4, 8):
        ours = NearestUpsampling2D(f)(x).numpy()
        keras_up = keras.layers.UpSampling2D(f, interpolation="nearest")(x).numpy()
        np.testing.assert_array_equal(ours, keras_up)
        i, j = 3 * f - 1, 5 * f - 1  # output pixel i reads input pixel i // f
        np.testing.assert_array_equal(ours[:, i, j], x[:, i // f, j // f])
    layer = NearestUpsampling2D.from_config(NearestUpsampling2D(4, name="up").get_config())
    assert layer.factor == 4 and layer.compute_output_shape((None, None, 7, 3)) == (None, None, 28, 3)


def test_folded_twin_computes_the_same_outputs(tmp_path):
    with restored_weights(cached_model("H-4")) as model:
        timing_weights(model, (96, 128))  # realistic magnitudes (and BatchNorm statistics)
        x = np.random.default_rng(1).uniform(0, 255, (2, 96, 128, 3)).astype(np.float32)
        want = [t.numpy() for t in model(x, training=False)]
        twin = fold_batchnorm(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in twin.layers)
    assert twin.fold_batchnorm and twin.count_params() < model.count_params()
    got = [t.numpy() for t in twin(x, training=False)]
    for a, b in zip(want, got):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    path = tmp_path / "folded.keras"
    twin.save(path)
    again = keras.saving.load_model(path)
    assert again.fold_batchnorm
    np.testing.assert_array_equal(again(x, training=False)[1].numpy(), got[1])


def test_fold_refuses_other_models():
    clf = ke.build_backbone_classifier("B-4", num_classes=3)
    try:
        fold_batchnorm(clf)
    except ValueError as exc:
        assert "EfficientHRNet" in str(exc)
    else:
        raise AssertionError("expected ValueError")
