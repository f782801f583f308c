"""ImageNet starts for the backbone: Keras' EfficientNetB0 files (H0) and the authors' .pth (φ < 0).

Parity: our four endpoints against Keras' block2b_add, block3b_add, block5c_add and
block7a_project_bn, with the same random weights and random BatchNorm statistics, on the ten
sample images (224 × 224 crops, pixels 0 … 255), within 1e-5 of the largest magnitude. Nothing
is downloaded: files are made here, and "imagenet" is served by a stand-in for get_file.
"""

from __future__ import annotations

import re

import cv2
import keras
import numpy as np
import pytest
from conftest import ROOT
from torch_pth import write_pth

import keras_ehrnet as ke
from keras_ehrnet.models import backbone as backbone_module
from keras_ehrnet.models.scaling import IMAGENET_MEAN, IMAGENET_STD
from keras_ehrnet.weights import pretrained
from keras_ehrnet.weights.pretrained import KERAS_B0_FILE, KERAS_B0_URL, BackboneWeightsError
from keras_ehrnet.weights.weights_map import weight_pairs

KERAS_ENDPOINTS = ("block2b_add", "block3b_add", "block5c_add", "block7a_project_bn")
OUR_ENDPOINTS = ("block3_add", "block5_add", "block11_add", "block16_project_bn")
SIZE = 224
TOLERANCE = 1e-5


def sample_images(size: int = SIZE) -> np.ndarray:
    """The embedded sample images: shorter side resized to `size`, centre crop, RGB 0 … 255."""
    out = []
    for path in sorted((ROOT / "keras_ehrnet/data/sample/images").glob("*.jpg")):
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        h, w = image.shape[:2]
        s = size / min(h, w)
        image = cv2.resize(
            image, (max(size, round(w * s)), max(size, round(h * s))), interpolation=cv2.INTER_AREA
        )
        h, w = image.shape[:2]
        y, x = (h - size) // 2, (w - size) // 2
        out.append(image[y : y + size, x : x + size])
    return np.stack(out).astype("float32")


def randomise(model: keras.Model, seed: int = 0, *, normalization_variance: str = "std**2") -> None:
    """Random weights and BatchNorm statistics; the Normalization layer set to ImageNet's."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c))
            layer.beta.assign(rng.normal(0.0, 0.2, c))
            layer.moving_mean.assign(rng.normal(0.0, 0.2, c))
            # small variances make the BatchNorm ε difference (1e-3 vs 1e-5) visible
            layer.moving_variance.assign(rng.uniform(0.02, 1.0, c))
        elif isinstance(layer, keras.layers.Normalization):
            v = {w.name: w for w in layer.weights}
            v["mean"].assign(np.array(IMAGENET_MEAN))
            std = np.array(IMAGENET_STD)
            v["variance"].assign(std**2 if normalization_variance == "std**2" else std)
            layer.finalize_state()
        else:
            for w in layer.weights:
                fan_in = int(np.prod(w.shape[:-1])) if len(w.shape) > 1 else 1
                w.assign(rng.normal(0.0, 1.0 / np.sqrt(max(fan_in, 1)), w.shape))


def save_keras_h5(model: keras.Model, path) -> None:
    """Weights in the HDF5 layout of Keras' downloads (efficientnetb0_notop.h5)."""
    import h5py
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    with h5py.File(path, "w") as f:
        save_weights_to_hdf5_group(f, model)


@pytest.fixture(scope="module")
def keras_b0(tmp_path_factory):
    """Keras' EfficientNetB0 with random weights, its endpoints on the sample images, and files."""
    folder = tmp_path_factory.mktemp("b0")
    model = keras.applications.EfficientNetB0(weights=None, include_top=False, input_shape=(None, None, 3))
    randomise(model)
    files = {
        "h5": folder / KERAS_B0_FILE,  # the layout of Keras' download
        "keras": folder / "b0.keras",
        "weights.h5": folder / "b0.weights.h5",
    }
    save_keras_h5(model, files["h5"])
    model.save(files["keras"])
    model.save_weights(files["weights.h5"])
    images = sample_images()
    probe = keras.Model(model.input, [model.get_layer(n).output for n in KERAS_ENDPOINTS])
    return {"files": files, "images": images, "endpoints": run(probe, images)}


def run(model: keras.Model, images: np.ndarray) -> list[np.ndarray]:
    """Inference outputs as arrays (eager: one call is cheaper than predict's tracing)."""
    return [np.asarray(o) for o in model(images, training=False)]


def relative_difference(ours: list, reference: list) -> float:
    return max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(ours, reference))


@pytest.mark.parametrize("kind", ["h5", "keras", "weights.h5"])
def test_endpoints_equal_keras_efficientnet_b0(keras_b0, kind, capsys):
    backbone = ke.build_backbone("H0", weights=keras_b0["files"][kind])
    report = capsys.readouterr().out
    assert report.startswith("backbone: 304 tensors / 3.6 M parameters from ")
    assert "left initialised: nothing" in report
    ours = run(backbone, keras_b0["images"])
    assert [o.shape[1:3] for o in ours] == [(SIZE // s, SIZE // s) for s in (4, 8, 16, 32)]
    diff = relative_difference(ours, keras_b0["endpoints"])
    with capsys.disabled():
        print(
            f"\nmax relative endpoint difference vs Keras EfficientNetB0 ({kind}, 10 sample images "
            f"{SIZE}x{SIZE}, random weights and BatchNorm statistics): {diff:.2e}"
        )
    assert diff < TOLERANCE


def test_batchnorm_epsilon_is_folded_into_the_variance(keras_b0):
    backbone = ke.build_backbone("H0", weights=keras_b0["files"]["h5"])
    keras_bn = keras_b0["files"]["h5"]
    import h5py

    with h5py.File(keras_bn) as f:
        keras_var = f["block2b_bn/block2b_bn/moving_variance"][()]
    ours = backbone.get_layer("block3_dw_bn").moving_variance.numpy()
    np.testing.assert_allclose(ours, keras_var + 1e-3 - 1e-5, rtol=1e-6)


def test_build_model_gets_the_same_backbone(keras_b0, capsys):
    path = keras_b0["files"]["h5"]
    model = ke.build_model("H0", backbone_weights=path)
    report = capsys.readouterr().out
    hr_params = model.count_params() - sum(
        w.numpy().size
        for layer in model.layers
        if layer.name.startswith(("stem_", "block"))
        for w in layer.weights
    )
    assert f"left initialised: {hr_params / 1e6:.1f} M parameters outside the backbone" in report
    endpoints = keras.Model(model.input, [model.get_layer(n).output for n in OUR_ENDPOINTS])
    backbone = ke.build_backbone("H0", weights=path)
    images = sample_images(64)[:1]
    for a, b in zip(run(endpoints, images), run(backbone, images)):
        np.testing.assert_array_equal(a, b)


def test_imagenet_file_with_the_keras_variance_fix_is_accepted(tmp_path):
    # Keras' download stores std as the Normalization variance (and rescales by 1/sqrt(std));
    # both that and std² mean ImageNet normalisation, which ours applies in-graph.
    model = keras.applications.EfficientNetB0(weights=None, include_top=True, input_shape=(64, 64, 3))
    randomise(model, seed=3, normalization_variance="std")
    path = tmp_path / "efficientnetb0.h5"
    model.save(path)  # a full model in the HDF5 format, with the classifier top
    backbone = ke.build_backbone("H0", weights=path)
    np.testing.assert_array_equal(
        backbone.get_layer("block16_project_conv").kernel.numpy(),
        model.get_layer("block7a_project_conv").kernel.numpy(),
    )


def test_other_normalisation_is_refused(tmp_path):
    model = keras.applications.EfficientNetB0(weights=None, include_top=False, input_shape=(None, None, 3))
    path = tmp_path / "untouched.h5"
    save_keras_h5(model, path)  # Normalization never adapted: mean 0, variance 1
    with pytest.raises(BackboneWeightsError, match="Normalization layer uses mean") as err:
        ke.build_backbone("H0", weights=path)
    assert "\n" not in str(err.value)


def _unchanged(model, fn):
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(BackboneWeightsError) as err:
        fn()
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_wrong_architecture_names_the_first_bad_tensor_and_loads_nothing(tmp_path):
    from keras_ehrnet.weights.pretrained import load_backbone_weights

    target = ke.build_backbone("H0")
    wider = keras.applications.EfficientNetB3(weights=None, include_top=False, input_shape=(None, None, 3))
    path = tmp_path / "efficientnetb3_notop.h5"
    save_keras_h5(wider, path)
    message = _unchanged(target, lambda: load_backbone_weights(target, path, ke.get_config("H0")))
    assert str(path) in message
    assert "stem_conv/kernel expected shape (3, 3, 3, 32), got (3, 3, 3, 40)" in message

    deeper = keras.applications.EfficientNetB1(weights=None, include_top=False, input_shape=(None, None, 3))
    path = tmp_path / "efficientnetb1_notop.h5"
    save_keras_h5(deeper, path)
    message = _unchanged(target, lambda: load_backbone_weights(target, path, ke.get_config("H0")))
    assert "block1b_" in message and "has no place in the B0 backbone" in message


def test_unreadable_files_are_one_line_and_load_nothing(tmp_path):
    from keras_ehrnet.weights.pretrained import load_backbone_weights

    target = ke.build_backbone("H0")
    for name in ("efficientnetb0_notop.h5", "b0.weights.h5", "b0.keras", "b0.pth", "b0.npz"):
        path = tmp_path / name
        path.write_bytes(b"\x00 truncated download \xff" * 10)
        message = _unchanged(target, lambda p=path: load_backbone_weights(target, p, ke.get_config("H0")))
        assert message.startswith(str(path)), message


def test_a_keras_b0_file_does_not_fit_other_levels(keras_b0):
    with pytest.raises(BackboneWeightsError, match=r"fit H0 only, not H-2 \(φ = -2\)"):
        ke.build_backbone("H-2", weights=keras_b0["files"]["h5"])


def test_imagenet_comes_from_keras_get_file(keras_b0, monkeypatch, capsys):
    calls = []

    def cached(fname, origin, **kwargs):
        calls.append((fname, origin, kwargs.get("cache_subdir")))
        return str(keras_b0["files"]["h5"])

    monkeypatch.setattr(keras.utils, "get_file", cached)
    backbone = ke.build_backbone("H0", weights="imagenet")
    assert calls == [(KERAS_B0_FILE, KERAS_B0_URL, "models")]
    assert KERAS_B0_FILE in capsys.readouterr().out
    out = run(backbone, keras_b0["images"][:2])
    assert relative_difference(out, [e[:2] for e in keras_b0["endpoints"]]) < TOLERANCE


def test_imagenet_offline_says_what_to_download_and_where(monkeypatch, tmp_path):
    def offline(fname, origin, **kwargs):
        raise Exception(
            f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution"
        )

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    target = ke.build_backbone("H0")
    message = _unchanged(
        target, lambda: pretrained.load_backbone_weights(target, "imagenet", ke.get_config("H0"))
    )
    assert KERAS_B0_URL in message
    assert str(tmp_path / "kh" / "models" / KERAS_B0_FILE) in message


@pytest.mark.parametrize(
    ("level", "needle"),
    [("H-2", "drive.google.com"), (-1.5, "no ImageNet backbone exists"), (1, "no ImageNet backbone exists")],
)
def test_imagenet_for_other_levels_says_what_exists(level, needle):
    with pytest.raises(BackboneWeightsError, match=needle) as err:
        ke.build_backbone(level, weights="imagenet")
    assert "\n" not in str(err.value)


def _classifier_state(level: str, seed: int) -> dict[str, np.ndarray]:
    clf = ke.build_backbone_classifier(level, num_classes=1000)
    rng = np.random.default_rng(seed)
    return {
        p.torch_key: rng.standard_normal(p.to_torch_shape(tuple(p.variable.shape))).astype(np.float32)
        for p in weight_pairs(clf)
    }


def test_authors_compact_backbone_from_pth(tmp_path, capsys):
    state = _classifier_state("B-4", seed=4)
    path = tmp_path / "b-4_imagenet.pth"
    write_pth(path, state)
    backbone = ke.build_backbone("H-4", weights=path)
    assert f"from {path.name}; left initialised: nothing" in capsys.readouterr().out
    np.testing.assert_array_equal(
        backbone.get_layer("block10_project_conv").kernel.numpy(),
        np.transpose(state["features.10.conv.3.weight"], (2, 3, 1, 0)),
    )
    model = ke.build_model("H-4", backbone_weights=path)
    assert "M parameters outside the backbone" in capsys.readouterr().out
    images = sample_images(64)[:1]
    endpoints = keras.Model(model.input, [model.get_layer(n).output for n in backbone.output_names])
    for a, b in zip(run(endpoints, images), run(backbone, images)):
        np.testing.assert_array_equal(a, b)


def test_pth_of_another_level_is_one_line_and_loads_nothing(tmp_path):
    from keras_ehrnet.weights.pretrained import load_backbone_weights

    path = tmp_path / "b-3_imagenet.pth"
    write_pth(path, _classifier_state("B-3", seed=5))
    target = ke.build_backbone("H-4")
    message = _unchanged(target, lambda: load_backbone_weights(target, path, ke.get_config("H-4")))
    assert message.startswith(f"{path}: not the backbone of ")
    assert re.search(r"features\.\d+\.[\w.]+ expected shape \([\d, ]+\), got \([\d, ]+\)", message)


def test_training_cli_refuses_impossible_backbone_weights(capsys):
    from training.__main__ import main

    assert main(["--level", "H-2", "--backbone-weights", "imagenet", "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: command line: model.backbone_weights = 'imagenet'")
    assert "\n" not in err
    assert main(["--set", "model.backbone_weights=imagenet", "--print-config"]) == 0
    assert "backbone_weights: imagenet" in capsys.readouterr().out


def test_missing_file_is_reported_before_building(tmp_path, monkeypatch):
    monkeypatch.setattr(backbone_module, "efficientnet_features", None)  # building would fail loudly
    with pytest.raises(FileNotFoundError, match="no-such.pth"):
        ke.build_backbone("H-4", weights=tmp_path / "no-such.pth")


@pytest.mark.slow
def test_trainer_loads_the_backbone_lets_init_win_and_skips_it_on_resume(tmp_path):
    from test_training import J, synthetic_arrays, synthetic_dataset_fn, tiny_config

    from keras_ehrnet.train import Trainer, config_from_dict

    state = _classifier_state("B-4", seed=6)
    pth = tmp_path / "b-4_imagenet.pth"
    write_pth(pth, state)
    data = synthetic_dataset_fn(*synthetic_arrays(), 4)
    expected = np.transpose(state["features.10.conv.3.weight"], (2, 3, 1, 0))

    def trainer(workdir, **train):
        model = {"level": "H-4", "num_joints": J, "backbone_weights": str(pth)}
        values = tiny_config(tmp_path / workdir, model=model, train=train)
        return Trainer(config_from_dict(values), dataset_fn=data)

    first = trainer("a")
    np.testing.assert_array_equal(first.model.get_layer("block10_project_conv").kernel.numpy(), expected)

    # --init is loaded over the ImageNet backbone: its weights win wherever it fits
    init = ke.build_model("H-4", num_joints=J)
    init.save_weights(tmp_path / "init.weights.h5")
    both = trainer("b", init=str(tmp_path / "init.weights.h5"))
    np.testing.assert_array_equal(
        both.model.get_layer("block10_project_conv").kernel.numpy(),
        init.get_layer("block10_project_conv").kernel.numpy(),
    )

    # a resumed run takes everything from its checkpoint: the backbone file is not even read
    first.manager.save()
    pth.write_bytes(b"not a checkpoint any more")
    resumed = trainer("a", resume=True)
    assert resumed._resume_checkpoint() is not None
