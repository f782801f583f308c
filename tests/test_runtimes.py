"""Runners: one call for every artefact kind, quantised TFLite handled, clear errors for wrong files.

A tiny two-output network shaped like EfficientHRNet (quarter: J heatmaps + J
tags at 1/4, half: J heatmaps at 1/2) keeps conversions fast; the real model's
parity is in test_export.py.
"""

import numpy as np
import pytest

from keras_ehrnet.deploy.artefact import RuntimeUnavailableError
from keras_ehrnet.deploy.runtimes import (
    KerasRunner,
    OnnxRunner,
    SavedModelRunner,
    TFLiteRunner,
    load_runner,
    order_outputs,
    tflite_precision,
    to_uint8,
)
from keras_ehrnet.threads import available_cores

J = 3
SIZE = 64


def tiny_pose_model(size=SIZE):
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 3) if size else (None, None, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2D(48, 3, strides=2, padding="same", activation="relu")(x)
    quarter = layers.Conv2D(2 * J, 1, name="quarter")(x)
    y = layers.Conv2DTranspose(32, 4, strides=2, padding="same", activation="relu")(x)
    half = layers.Conv2D(J, 1, name="half")(y)
    return keras.Model(inputs, [quarter, half], name="tiny")


@pytest.fixture(scope="module")
def tiny():
    import keras

    keras.utils.set_random_seed(0)
    return tiny_pose_model()


@pytest.fixture(scope="module")
def pixels():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(2, SIZE, SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def float_savedmodel(tiny, tmp_path_factory):
    from keras_ehrnet.deploy.savedmodel import export_savedmodel

    return export_savedmodel(tiny, tmp_path_factory.mktemp("tiny") / "sm", (SIZE, SIZE), float_default=True)


def keras_outputs(model, images):
    return [np.asarray(o) for o in model(images, training=False)]


def test_keras_runner_calls_the_model(tiny, pixels):
    runner = load_runner(tiny)
    assert isinstance(runner, KerasRunner) and runner.name == "keras"
    assert runner.fixed_input_size == (SIZE, SIZE) and runner.num_joints == J
    quarter, half = runner(pixels)
    assert quarter.shape == (2, SIZE // 4, SIZE // 4, 2 * J) and half.shape == (2, SIZE // 2, SIZE // 2, J)
    for got, want in zip((quarter, half), keras_outputs(tiny, pixels)):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert load_runner(runner) is runner


def test_keras_file_runner_loads_an_efficienthrnet(tmp_path):
    from conftest import cached_model

    model = cached_model("H-4")
    path = tmp_path / "h4.keras"
    model.save(path)
    runner = load_runner(path)
    assert runner.name == "keras" and runner.num_joints == 17 and runner.fixed_input_size is None
    assert runner.path == path
    quarter, half = runner(np.zeros((1, 64, 96, 3), np.float32))
    assert quarter.shape == (1, 16, 24, 34) and half.shape == (1, 32, 48, 17)


def test_images_are_checked_before_the_artefact_runs(tiny):
    runner = load_runner(tiny)
    with pytest.raises(ValueError, match="batch"):
        runner(np.zeros((SIZE, SIZE, 3), np.float32))
    with pytest.raises(ValueError, match="exported for input 64x64, got 96x96"):
        runner(np.zeros((1, 96, 96, 3), np.float32))
    dynamic = load_runner(tiny_pose_model(size=None))
    with pytest.raises(ValueError, match="divisible by 32; got 70x64"):
        dynamic(np.zeros((1, 70, 64, 3), np.float32))


def test_savedmodel_runner_with_float_input(float_savedmodel, tiny, pixels):
    runner = load_runner(float_savedmodel)
    assert isinstance(runner, SavedModelRunner) and runner.name == "savedmodel"
    assert (
        runner.input_dtype == np.float32
        and runner.fixed_input_size == (SIZE, SIZE)
        and runner.num_joints == J
    )
    for got, want in zip(runner(pixels), keras_outputs(tiny, pixels)):
        np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="without the decoder"):
        runner.people(pixels)


def test_savedmodel_runner_takes_any_two_output_signature(tiny, pixels, tmp_path):
    """A SavedModel written by Keras' own model.export (outputs output_0/output_1, any order)."""
    path = tmp_path / "keras_export"
    tiny.export(str(path), verbose=False)
    runner = load_runner(path)
    for got, want in zip(runner(pixels), keras_outputs(tiny, pixels)):
        np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="no signature 'nope'"):
        SavedModelRunner(path, signature="nope")


_TFLITE: dict = {}


def tiny_tflite(float_savedmodel, precision):
    from keras_ehrnet.deploy.tflite import tflite_from_savedmodel

    if precision not in _TFLITE:
        rng = np.random.default_rng(1)

        def representative():
            for _ in range(16):
                yield [rng.integers(0, 256, size=(1, SIZE, SIZE, 3)).astype(np.float32)]

        out = float_savedmodel.parent / f"tiny_{precision}.tflite"
        _TFLITE[precision] = tflite_from_savedmodel(
            float_savedmodel,
            out,
            precision,
            representative=representative if precision == "int8" else None,
            signature="serving_default",
        )
    return _TFLITE[precision]


@pytest.mark.parametrize(
    ("precision", "tolerance"), [("fp32", 1e-5), ("fp16", 1e-2), ("int8-dynamic", 0.05), ("int8", 0.1)]
)
def test_tflite_runner_names_precision_and_matches_keras(
    float_savedmodel, tiny, pixels, precision, tolerance
):
    runner = load_runner(tiny_tflite(float_savedmodel, precision), num_threads=1)
    assert isinstance(runner, TFLiteRunner)
    assert runner.name == f"tflite-{precision}" and runner.precision == precision
    assert runner.num_threads == 1 and runner.fixed_input_size == (SIZE, SIZE) and runner.num_joints == J
    assert runner.input_dtype == (np.int8 if precision == "int8" else np.float32)
    for got, want in zip(runner(pixels), keras_outputs(tiny, pixels)):
        assert got.dtype == np.float32 and got.shape == want.shape
        scale = np.abs(want).max()
        assert np.abs(got - want).max() <= tolerance * scale, (precision, np.abs(got - want).max(), scale)
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_full_integer_tflite_is_quantised_with_the_tensor_parameters(float_savedmodel, pixels):
    runner = load_runner(tiny_tflite(float_savedmodel, "int8"))
    scale, zero = runner._input["quantization"]
    quantised = runner._prepare(pixels)
    assert quantised.dtype == np.int8
    np.testing.assert_array_equal(
        quantised, np.clip(np.rint(pixels / scale + zero), -128, 127).astype(np.int8)
    )
    # pixels 0..255 fit the int8 range exactly when calibration saw both ends
    assert scale == pytest.approx(1.0, rel=0.02)


def test_tflite_runner_resizes_for_the_batch(float_savedmodel, pixels):
    runner = load_runner(tiny_tflite(float_savedmodel, "fp32"))
    one = [runner(pixels[i : i + 1]) for i in range(2)]
    both = runner(pixels)
    for k in range(2):
        np.testing.assert_allclose(both[k], np.concatenate([o[k] for o in one]), atol=1e-6)
    assert runner(pixels[:1])[0].shape[0] == 1  # and back


def test_onnx_runner(tiny, pixels, tmp_path):
    from keras_ehrnet.deploy.onnx import export_onnx

    path = export_onnx(tiny, tmp_path / "tiny.onnx", None)
    runner = load_runner(path, num_threads=1)
    assert isinstance(runner, OnnxRunner) and runner.name == "onnx" and runner.num_threads == 1
    assert runner.fixed_input_size is None and runner.num_joints == J and runner.input_dtype == np.float32
    for got, want in zip(runner(pixels), keras_outputs(tiny, pixels)):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert load_runner(path).num_threads == available_cores()


def test_wrong_or_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model not found: .*absent.onnx"):
        load_runner(tmp_path / "absent.onnx")
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(ValueError, match="folder is a directory without saved_model.pb"):
        load_runner(folder)
    for name, content, message in [
        ("fake.tflite", b"\x00" * 64, "fake.tflite is not a TFLite flatbuffer"),
        ("fake.onnx", b"not a protobuf at all", "fake.onnx is not a valid ONNX model"),
        ("fake.keras", b"plain text", r"fake.keras: not a .keras file \(not a zip archive"),
        ("weights.pth", b"x", "unknown model file .*weights.pth"),
    ]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=message):
            load_runner(path)
    with pytest.raises(TypeError, match="got a dict"):
        load_runner({"not": "a model"})


def test_tensorrt_engine_without_tensorrt_says_what_is_missing(tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed")
    except ImportError:
        pass
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine")
    with pytest.raises(RuntimeUnavailableError, match="TensorRT Python API is not installed"):
        load_runner(engine)


def test_helpers():
    assert to_uint8(np.array([-3.0, 0.4, 0.6, 254.5, 300.0])).tolist() == [0, 0, 1, 254, 255]
    small, big = np.zeros((1, 8, 8, 6)), np.zeros((1, 16, 16, 3))
    assert order_outputs([big, small])[0] is small and order_outputs([small, big])[1] is big
    with pytest.raises(ValueError, match="two outputs"):
        order_outputs([small])
    assert tflite_precision(np.int8, {np.dtype(np.float32)}) == "int8"
    assert tflite_precision(np.float32, {np.dtype(np.float16), np.dtype(np.float32)}) == "fp16"
    assert tflite_precision(np.float32, {np.dtype(np.int8), np.dtype(np.float32)}) == "int8-dynamic"
    assert tflite_precision(np.float32, {np.dtype(np.float32)}) == "fp32"
    # counts: full integer inside with float input/outputs (float heads) against dynamic range
    f32, i8 = np.dtype(np.float32), np.dtype(np.int8)
    assert tflite_precision(np.float32, {f32: 9, i8: 463}) == "int8"
    assert tflite_precision(np.float32, {f32: 400, i8: 120}) == "int8-dynamic"


def test_tflite_int8_with_float_heads_keeps_only_the_output_convolutions_float(tiny, pixels, tmp_path):
    """The recipe of BENCHMARKS §9.5: everything int8 except the two output convolutions, which
    are found by output index; the runner still calls it full-integer int8."""
    import tensorflow as tf

    from keras_ehrnet.data import sample_dataset
    from keras_ehrnet.deploy.tflite import export_tflite

    path = export_tflite(
        tiny, tmp_path / "heads.tflite", (SIZE, SIZE), "int8",
        calibration_dir=sample_dataset()[1], num_calibration_images=4, float_heads=True, progress=False,
    )  # fmt: skip
    interpreter = tf.lite.Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    producers = {o: op for op in ops for o in op["outputs"]}
    for out in interpreter.get_output_details():  # written by a float convolution with float weights
        op = producers[out["index"]]
        assert out["dtype"] == np.float32 and op["op_name"] == "CONV_2D"
        assert tensors[op["inputs"][1]]["dtype"] == np.float32
    convs = [op for op in ops if op["op_name"] in ("CONV_2D", "TRANSPOSE_CONV")]
    assert sum(tensors[op["outputs"][0]]["dtype"] == np.int8 for op in convs) == len(convs) - 2
    runner = load_runner(path, num_threads=1)
    assert runner.name == "tflite-int8"  # full integer inside; its input and outputs are float
    want = [np.asarray(o) for o in tiny(pixels, training=False)]
    for got, ref in zip(runner(pixels), want):
        assert np.isfinite(got).all() and np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.9
    with pytest.raises(ValueError, match="float_heads applies to full-integer int8 only"):
        export_tflite(tiny, tmp_path / "x.tflite", (SIZE, SIZE), "fp16", float_heads=True)
