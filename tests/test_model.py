"""Model: scaling config, architectural parity with the released code, shapes, serialisation."""

import json

import keras
import numpy as np
import pytest
from conftest import cached_model

import keras_ehrnet as ke
from keras_ehrnet.models.macs import count_macs
from keras_ehrnet.reference_facts import load_model_table, load_state_dict_facts
from keras_ehrnet.weights.weights_map import batchnorm_counter_keys, weight_pairs

LEVELS = ["H0", "H-1", "H-2", "H-3", "H-4"]

# The paper's Table 1 (the spec), row by row.
TABLE1 = {
    "H0": (512, (32, 64, 128, 256), (1, 4, 3), 128, 256),
    "H-1": (480, (26, 52, 103, 206), (1, 3, 3), 120, 240),
    "H-2": (448, (21, 42, 83, 166), (1, 2, 3), 112, 224),
    "H-3": (416, (17, 34, 67, 133), (1, 1, 3), 104, 208),
    "H-4": (384, (14, 27, 54, 107), (1, 1, 2), 96, 192),
}


def model_for(level: str):  # shared across test files
    return cached_model(level)


@pytest.mark.parametrize("level", LEVELS)
def test_config_reproduces_table1(level):
    cfg = ke.get_config(level)
    size, widths, modules, tags, heatmaps = TABLE1[level]
    assert cfg.input_size == size
    assert cfg.hr_widths == widths
    assert cfg.modules_per_stage == modules
    assert cfg.deconv_width == widths[0]
    row = cfg.table1_row()
    assert row.startswith(f"{level} (φ = {cfg.phi:g}) | {size} | ")
    assert row.endswith(f"| {tags} | {heatmaps}")
    assert "Width per branch" in str(cfg)


def test_config_backbone_multipliers_follow_released_configs():
    released = {  # WIDTH_MULT / DEPTH_MULT of the released example configs
        "H-1": (0.909, 0.833),
        "H-2": (0.826, 0.694),
        "H-3": (0.751, 0.578),
        "H-4": (0.684, 0.483),
    }
    for level, (w, d) in released.items():
        cfg = ke.get_config(level)
        assert abs(cfg.width_mult - w) < 2e-3 and abs(cfg.depth_mult - d) < 2e-3


@pytest.mark.parametrize("level", LEVELS)
def test_weights_match_reference_state_dict_one_to_one(level):
    facts = load_state_dict_facts(level)
    ref = {k: tuple(s) for k, s in facts["state_dict"]}
    model = model_for(level)
    pairs = weight_pairs(model)
    keys = [p.torch_key for p in pairs] + batchnorm_counter_keys(model)
    assert len(keys) == len(set(keys)), "a reference tensor is used twice"
    assert set(keys) == set(ref), (sorted(set(ref) - set(keys))[:5], sorted(set(keys) - set(ref))[:5])
    for p in pairs:
        assert p.to_torch_shape(tuple(p.variable.shape)) == ref[p.torch_key], p.torch_key
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    buffers = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert trainable == facts["num_params"]
    num_counters = sum(1 for k in ref if k.endswith("num_batches_tracked"))
    assert buffers == facts["num_buffer_elems"] - num_counters
    assert (
        model.config.num_backbone_blocks
        == load_state_dict_facts("summary")["levels"][level]["num_backbone_blocks"]
    )


@pytest.mark.parametrize("level", LEVELS)
def test_count_macs_matches_reference_within_1_percent(level):
    model = model_for(level)
    ref = load_model_table()["models"][level]["conv_macs"]
    macs = count_macs(model, model.config.input_size, by_kind=True)
    assert abs(macs["total"] - ref["total"]) <= 0.01 * ref["total"]
    assert macs["conv_transpose2d"] == ref["conv_transpose2d"]
    assert macs["conv2d_depthwise"] == ref["conv2d_depthwise"]


def test_output_shapes_square_and_non_square():
    model = model_for("H-4")
    assert model.output_names == ["quarter", "half"] or [t.name for t in model.outputs]
    for h, w in [(128, 128), (96, 160), (224, 64)]:
        q, hf = (t.numpy() for t in model(np.zeros((2, h, w, 3), np.float32), training=False))
        assert q.shape == (2, h // 4, w // 4, 34)
        assert hf.shape == (2, h // 2, w // 2, 17)


def test_custom_joints_and_single_tag_and_fixed_input():
    model = ke.build_model("H-4", num_joints=14, tag_per_joint=False, input_size=(64, 96))
    assert model.input_shape == (None, 64, 96, 3)
    q, h = model(np.zeros((1, 64, 96, 3), np.float32), training=False)
    assert q.shape == (1, 16, 24, 15) and h.shape == (1, 32, 48, 14)


def test_backbone_endpoints_are_stage_ends():
    for level in ["H0", "H-4", -2.5, 1]:
        cfg = ke.get_config(level)
        model = keras.Model(*_backbone_io(cfg))
        outs = model(np.zeros((1, 64, 64, 3), np.float32), training=False)
        assert [o.shape[1] for o in outs] == [16, 8, 4, 2]
        assert [o.shape[-1] for o in outs] == list(cfg.endpoint_channels)


def _backbone_io(cfg):
    from keras_ehrnet.models.backbone import efficientnet_features

    inp = keras.Input((None, None, 3))
    return inp, efficientnet_features(inp, cfg)


def test_keras_round_trip_gives_identical_outputs(tmp_path):
    model = ke.build_model("H-4", num_joints=5)
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 96, 3)).astype(np.float32)
    before = [t.numpy() for t in model(x, training=False)]
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ke.EfficientHRNet)
    assert loaded.config == model.config
    after = [t.numpy() for t in loaded(x, training=False)]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    # weights-only save/load into a fresh model
    wpath = tmp_path / "m.weights.h5"
    model.save_weights(wpath)
    fresh = ke.build_model("H-4", num_joints=5)
    fresh.load_weights(wpath)
    for a, b in zip(before, [t.numpy() for t in fresh(x, training=False)]):
        np.testing.assert_array_equal(a, b)


def test_initialisation_follows_released_code():
    model = model_for("H-2")
    hr = model.get_layer("stage3_module0_branch0_block0_1_conv").kernel.numpy()
    assert 0.0007 < hr.std() < 0.0013
    stem = model.get_layer("stem_conv").kernel.numpy()  # He fan-out: std = sqrt(2 / (9 * 24))
    assert abs(stem.std() / np.sqrt(2 / (9 * stem.shape[-1])) - 1) < 0.2
    dw = model.get_layer("block5_dwconv").kernel.numpy()
    c = dw.shape[2]
    assert abs(dw.std() / np.sqrt(2 / (dw.shape[0] * dw.shape[1] * c)) - 1) < 0.2
    bn = model.get_layer("trans1_branch1_bn")
    assert np.all(bn.gamma.numpy() == 1) and np.all(bn.beta.numpy() == 0)
    assert np.all(model.get_layer("final_quarter").bias.numpy() == 0)
    assert model.get_layer("deconv_bn").epsilon == 1e-5


def test_he_initialisation_of_the_hr_part_for_training_from_scratch(tmp_path):
    model = ke.build_model("H-4", num_joints=5, hr_init="he")
    for name in ("stage3_module0_branch0_block0_1_conv", "trans1_branch1_conv", "deconv_conv"):
        kernel = model.get_layer(name).kernel.numpy()
        fan_out = kernel.shape[0] * kernel.shape[1] * kernel.shape[-1]  # Keras' "fan_out" of the kernel
        assert abs(kernel.std() / np.sqrt(2 / fan_out) - 1) < 0.2, name
    # the heads have no BatchNorm after them: they keep N(0, 0.001), so outputs start near zero
    assert 0.0007 < model.get_layer("final_quarter").kernel.numpy().std() < 0.0013
    path = tmp_path / "he.keras"
    model.save(path)
    assert keras.saving.load_model(path).hr_init == "he"
    with pytest.raises(ValueError, match="hr_init must be one of"):
        ke.build_model("H-4", hr_init="xavier")


def test_drop_connect_rate_is_a_model_option_that_survives_saving(tmp_path):
    def drops(model):
        return [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]

    released = ke.build_model("H-4", num_joints=3)
    assert released.drop_connect_rate == 0.2
    assert drops(released) and all(layer.rate == 0.2 for layer in drops(released))
    model = ke.build_model("H-4", num_joints=3, drop_connect_rate=0.0)
    assert drops(model) == []  # rate 0 leaves the layers out rather than dropping nothing

    def shapes(m):
        return {layer.name: [tuple(w.shape) for w in layer.weights] for layer in m.layers if layer.weights}

    assert shapes(model) == shapes(released)  # the same weights under the same names
    path = tmp_path / "no_drop.keras"
    model.save(path)
    assert keras.saving.load_model(path).drop_connect_rate == 0.0
    for bad in (1.0, -0.1, "0.2"):
        with pytest.raises(ValueError, match="drop_connect_rate must be a number in"):
            ke.build_model("H-4", drop_connect_rate=bad)


def test_pixels_are_normalised_in_graph():
    model = model_for("H-4")
    norm = model.get_layer("normalize")
    y = norm(np.array([[[[0.485 * 255, 0.456 * 255, 0.406 * 255]]]], np.float32)).numpy()
    np.testing.assert_allclose(y, 0, atol=1e-5)
    y = norm(np.full((1, 1, 1, 3), 255, np.float32)).numpy().ravel()
    np.testing.assert_allclose(y, [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225], rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"level": "H-9"}, "H-9"),
        ({"level": "X2"}, "X2"),
        ({"level": 2.5}, "2.5"),
        ({"level": "H-4", "input_size": 100}, "100"),
        ({"level": "H-4", "input_size": (64, 90)}, "90"),
        ({"level": "H-4", "num_joints": 0}, "0"),
        ({"level": "H-4", "num_joints": -3}, "-3"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(kwargs, needle):
    level = kwargs.pop("level")
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        ke.build_model(level, **kwargs)


def test_fractional_and_positive_phi():
    cfg = ke.get_config(-1.5)
    assert cfg.input_size % 32 == 0 and cfg.hr_widths[0] == int(np.ceil(32 * 1.2455**-1.5))
    assert ke.get_config(1).name == "H+1" and ke.get_config(1).modules_per_stage == (1, 4, 3)
    assert ke.get_config("H-2") == ke.get_config(-2)


def test_backbone_classifier_shares_feature_names():
    clf = ke.build_backbone_classifier("B-4", num_classes=10, input_size=None)
    out = clf(np.zeros((2, 128, 128, 3), np.float32), training=False)
    assert out.shape == (2, 10)
    pose = model_for("H-4")
    shared = {x.name for x in clf.layers if x.weights} & {x.name for x in pose.layers if x.weights}
    assert "block10_project_conv" in shared and "stem_conv" in shared
    # odd sizes (B-1 trains at 195) work because stride-2 layers pad like PyTorch
    assert ke.build_backbone_classifier("B-1", num_classes=3, input_size=195).output_shape == (None, 3)


def test_reference_facts_are_packaged():
    table = load_model_table()
    assert set(table["models"]) == set(LEVELS)
    assert json.dumps(load_state_dict_facts("H-4"))  # loads
