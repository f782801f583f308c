"""Export: every artefact computes what the Keras model computes, on real images; clear errors.

One H-4 model at input 128 whose weights give outputs of realistic magnitude
(`realistic_weights`: largest output 2, like heatmaps and tags) is exported
once per format; tolerances are absolute and, through `relative`, against the
output magnitude.
"""

import shutil

import numpy as np
import pytest
import tensorflow as tf

import keras_ehrnet
from keras_ehrnet.data import sample_dataset
from keras_ehrnet.deploy import (
    RuntimeUnavailableError,
    calibration_images,
    check_options,
    default_output_path,
    export,
    letterbox,
    read_image,
)
from keras_ehrnet.deploy.parity import parity_report, realistic_weights, verify_artefact
from keras_ehrnet.deploy.runtimes import KerasRunner, load_runner
from keras_ehrnet.deploy.tensorrt import trtexec_command
from keras_ehrnet.deploy.tflite import representative_dataset, tflite_from_savedmodel
from keras_ehrnet.deploy.tftrt import export_tftrt, tftrt_reason, tftrt_unavailable_reason
from keras_ehrnet.deploy.trt_engine import CalibrationBatcher
from keras_ehrnet.inference.tf_decoder import TFDecoder

SIZE = 128
J = 17
FP32_TOLERANCE = 1e-4  # max |difference|; outputs reach 2, so 5e-5 of the output magnitude
_TFLITE: dict = {}  # precision → .tflite converted from the module's SavedModel


def worst(report: dict, key: str = "max_abs") -> float:
    return max(part[key] for part in report.values())


@pytest.fixture(scope="module")
def image_dir():
    return sample_dataset()[1]


@pytest.fixture(scope="module")
def images(image_dir):
    """4 real images letterboxed to 128 (integer pixel values, so uint8 inputs see the same pixels)."""
    return np.stack(list(calibration_images(image_dir, (SIZE, SIZE), 4, progress=False)))


@pytest.fixture(scope="module")
def model(images):
    return realistic_weights(keras_ehrnet.build_model("H-4"), images)


@pytest.fixture(scope="module")
def keras_runner(model):
    return KerasRunner(model)  # traced once, re-used (weights are variables)


@pytest.fixture(scope="module")
def reference(keras_runner, images):
    return keras_runner(images)


@pytest.fixture(scope="module")
def savedmodel(model, tmp_path_factory):
    _TFLITE.clear()
    return export(
        model, "savedmodel", tmp_path_factory.mktemp("sm") / "ehrnet", input_size=SIZE, with_decoder=True
    )


def test_parity_model_has_outputs_of_realistic_magnitude(reference):
    quarter, half = reference
    for out in (quarter[..., :J], quarter[..., J:], half):
        assert 0.5 < np.abs(out).max() <= 2.0 + 1e-4
        assert out.std() > 0.05  # not a near-constant map


@pytest.fixture(scope="module")
def served(savedmodel):
    """The SavedModel loaded once (loading every signature takes a while)."""
    return load_runner(savedmodel)


def test_savedmodel_matches_keras(served, images, reference):
    runner = served
    assert runner.name == "savedmodel"
    assert runner.input_dtype == np.uint8 and runner.fixed_input_size == (SIZE, SIZE)
    assert runner.num_joints == J
    assert set(runner.signatures) == {
        "serving_default",
        "serving_float",
        "serving_bytes",
        "people",
        "people_bytes",
    }
    report = parity_report(reference, runner(images), J)
    assert worst(report) <= FP32_TOLERANCE, report


def test_bytes_signature_equals_uint8_signature(served, image_dir):
    loaded = served.loaded
    paths = sorted(image_dir.glob("*.jpg"))[:3]
    served = loaded.signatures["serving_bytes"](
        image_bytes=tf.stack([tf.io.read_file(str(p)) for p in paths])
    )
    boxed = [letterbox(read_image(p), SIZE) for p in paths]
    pixels = np.stack([b[0] for b in boxed])
    direct = loaded.signatures["serving_default"](images=tf.constant(pixels))
    for key in ("quarter", "half"):
        np.testing.assert_array_equal(served[key].numpy(), direct[key].numpy())
    np.testing.assert_allclose(served["affine"].numpy(), np.stack([b[1] for b in boxed]), rtol=1e-6)
    # an image already at the served size is not resampled: PNG bytes of the pixels give the same outputs
    png = tf.io.encode_png(tf.constant(pixels[0]))
    again = loaded.signatures["serving_bytes"](image_bytes=tf.stack([png]))
    # against a batch of one too: TensorFlow 2.17's CPU kernels sum in another order for another batch size
    alone = loaded.signatures["serving_default"](images=tf.constant(pixels[:1]))
    np.testing.assert_array_equal(again["half"].numpy(), alone["half"].numpy())
    np.testing.assert_allclose(again["affine"].numpy()[0], [[1, 0, 0], [0, 1, 0]])


def test_people_signatures_return_the_decoded_outputs(served, image_dir):
    loaded = served.loaded
    paths = sorted(image_dir.glob("*.jpg"))[:2]
    boxed = [letterbox(read_image(p), SIZE) for p in paths]
    pixels = tf.constant(np.stack([b[0] for b in boxed]))
    served = loaded.signatures["serving_default"](images=pixels)
    people = {k: v.numpy() for k, v in loaded.signatures["people"](images=pixels).items()}
    expected = TFDecoder(J)(served["quarter"].numpy(), served["half"].numpy())
    for key in ("keypoints", "scores", "num_people"):
        np.testing.assert_allclose(people[key], expected[key], atol=1e-5)
    assert people["keypoints"].shape == (2, 30, J, 3) and people["num_people"].min() > 0
    # the bytes variant maps the same keypoints back to original image pixels
    from_bytes = loaded.signatures["people_bytes"](
        image_bytes=tf.stack([tf.io.read_file(str(p)) for p in paths])
    )
    kp = people["keypoints"]
    for b, (_, affine) in enumerate(boxed):
        found = kp[b, ..., 2] > 0
        k, offset = affine[0, 0], affine[:, 2]
        np.testing.assert_allclose(
            from_bytes["keypoints"].numpy()[b][found][:, :2], (kp[b][found][:, :2] - offset) / k, atol=1e-3
        )


def test_verify_artefact_reports_parity(keras_runner, served, image_dir):
    report = verify_artefact(keras_runner, served, image_dir, num_images=2)
    assert report["runner"] == "savedmodel" and report["images"] == 2 and report["input_size"] == "128x128"
    assert worst(report["outputs"]) <= FP32_TOLERANCE


def tflite_file(savedmodel, image_dir, precision):
    """Convert the SavedModel's float signature once per precision (the slow part of these tests)."""
    if precision not in _TFLITE:
        representative = (
            representative_dataset(image_dir, (SIZE, SIZE), 8, progress=False)
            if precision == "int8"
            else None
        )
        out = savedmodel.parent / f"ehrnet_{precision}.tflite"
        _TFLITE[precision] = tflite_from_savedmodel(savedmodel, out, precision, representative=representative)
    return _TFLITE[precision]


def test_tflite_fp32_matches_keras(savedmodel, image_dir, images, reference):
    runner = load_runner(tflite_file(savedmodel, image_dir, "fp32"), num_threads=2)
    assert runner.name == "tflite-fp32" and runner.num_threads == 2
    assert runner.fixed_input_size == (SIZE, SIZE) and runner.input_dtype == np.float32
    out = runner(images)
    assert not any(np.isnan(o).any() for o in out)  # unfrozen variables under XNNPACK give NaN
    report = parity_report(reference, out, J)
    assert worst(report) <= FP32_TOLERANCE, report


def fp16_rounded_keras(keras_runner, images):
    """What the Keras model computes when its kernels are rounded to float16 (then restored)."""
    model = keras_runner.model
    saved = [w.numpy() for w in model.weights]
    try:
        for w in model.weights:
            if w.path.endswith("kernel"):
                w.assign(w.numpy().astype(np.float16).astype(np.float32))
        return keras_runner(images)
    finally:
        for w, value in zip(model.weights, saved):
            w.assign(value)


def test_tflite_fp16_is_as_close_as_fp16_weights_allow(
    keras_runner, savedmodel, image_dir, images, reference
):
    """fp16 stores weights in half precision; this random network magnifies that rounding (about 30×),
    so the bound is what the Keras model itself does with fp16-rounded kernels, and 3 % of the output."""
    path = tflite_file(savedmodel, image_dir, "fp16")
    runner = load_runner(path, num_threads=2)
    assert runner.name == "tflite-fp16"
    assert path.stat().st_size < 0.6 * tflite_file(savedmodel, image_dir, "fp32").stat().st_size
    report = parity_report(reference, runner(images), J)
    baseline = parity_report(reference, fp16_rounded_keras(keras_runner, images), J)
    assert worst(report) <= 2.5 * worst(baseline), (report, baseline)
    assert worst(report, "relative") <= 0.03, report
    assert min(part["correlation"] for part in report.values()) >= 0.999, report


def test_tflite_full_integer_int8(savedmodel, image_dir, images, reference):
    """int8 inputs and outputs quantised with their scale and zero point by the runner. No trained
    model exists here to measure the AP drop, so the heatmaps' correlation with fp32 is the check
    (about 0.65 on this random network, which magnifies quantisation error; see docs/deployment.md)."""
    path = tflite_file(savedmodel, image_dir, "int8")
    runner = load_runner(path, num_threads=2)
    assert runner.name == "tflite-int8" and runner.input_dtype == np.int8
    assert path.stat().st_size < 0.35 * tflite_file(savedmodel, image_dir, "fp32").stat().st_size
    out = runner(images)
    report = parity_report(reference, out, J)
    assert not any(part["nan"] for part in report.values())
    assert min(part["correlation"] for part in report.values()) >= 0.4, report
    for ref, got in zip(
        reference, out
    ):  # dequantised to the same scale: a wrong zero point or scale shows here
        assert abs(got.mean() - ref.mean()) < 0.5 * ref.std()
        assert 0.5 < got.std() / ref.std() < 2.0


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    return export(model, "onnx", tmp_path_factory.mktemp("onnx") / "ehrnet.onnx")


def test_onnx_matches_keras_with_dynamic_batch_and_size(onnx_file, keras_runner, images, reference):
    import onnx

    path = onnx_file
    proto = onnx.load(str(path))
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["quarter", "half"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    runner = load_runner(path, num_threads=2)
    assert runner.name == "onnx" and runner.fixed_input_size is None and runner.num_joints == J
    report = parity_report(reference, runner(images), J)
    assert worst(report) <= FP32_TOLERANCE, report
    other = np.stack(list(calibration_images(sample_dataset()[1], (160, 96), 1, progress=False)))
    report = parity_report(keras_runner(other), runner(other), J)
    assert worst(report) <= FP32_TOLERANCE, report


def test_onnx_graph_has_the_cpu_clean_ups(onnx_file):
    """No deprecated Resize mode, no no-op squeeze-excitation Reshape, no BatchNorm left after the ConvTranspose."""
    import onnx

    graph = onnx.load(str(onnx_file)).graph
    producers = {o: n for n in graph.node for o in n.output}
    modes = {
        onnx.helper.get_attribute_value(a)
        for n in graph.node
        if n.op_type == "Resize"
        for a in n.attribute
        if a.name == "coordinate_transformation_mode"
    }
    assert modes and b"tf_half_pixel_for_nn" not in modes
    after = {
        (producers[n.input[0]].op_type, n.op_type) for n in graph.node if n.input and n.input[0] in producers
    }
    assert ("GlobalAveragePool", "Reshape") not in after
    assert not after & {("ConvTranspose", "Mul"), ("ConvTranspose", "Add")}


def test_openvino_matches_keras_on_real_images(onnx_file, images, reference, tmp_path):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino)")
    from keras_ehrnet.deploy.openvino import export_openvino

    runner = load_runner(export_openvino(onnx_file, tmp_path / "ehrnet_openvino.xml"), num_threads=2)
    assert runner.name == "openvino" and runner.num_joints == J and runner.fixed_input_size is None
    report = parity_report(reference, runner(images), J)
    assert worst(report) <= FP32_TOLERANCE, report
    assert list(runner._requests) == [-1]  # free height and width: one dynamic compilation serves all
    assert not runner.replicable and runner.replicas(2) is None  # nor copies for video


@pytest.mark.parametrize(
    ("fmt", "precision", "decoder", "message"),
    [
        ("savedmodel", "fp16", False, "does not support precision fp16.*tflite"),
        ("onnx", "int8", False, "does not support precision int8.*TensorRT"),
        ("tftrt", "int8-dynamic", False, "does not support precision int8-dynamic"),
        ("tflite", "fp32", True, "--with-decoder is only for the SavedModel"),
        ("coreml", "fp32", False, "unknown format 'coreml'"),
        ("onnx", "int4", False, "unknown precision 'int4'"),
    ],
)
def test_impossible_combinations_are_refused(fmt, precision, decoder, message):
    with pytest.raises(ValueError, match=message):
        check_options(fmt, precision, with_decoder=decoder)


def test_bad_inputs_get_errors_that_name_them(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        export(tmp_path / "missing.keras", "onnx", tmp_path / "m.onnx")
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    with pytest.raises(ValueError, match="notes.keras"):
        export(text, "onnx", tmp_path / "m.onnx")
    h5 = tmp_path / "model.h5"
    h5.write_text("x")
    with pytest.raises(ValueError, match=r"\.keras model file.*model\.h5"):
        export(h5, "onnx", tmp_path / "m.onnx")
    empty = tmp_path / "no_images"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")
    with pytest.raises(ValueError, match="no images .* in calibration folder .*no_images"):
        export(model, "tflite", tmp_path / "m.tflite", precision="int8", calibration_images=empty)
    with pytest.raises(FileNotFoundError, match="calibration image folder not found: .*nowhere"):
        export(
            model, "tflite", tmp_path / "m.tflite", precision="int8", calibration_images=tmp_path / "nowhere"
        )
    with pytest.raises(ValueError, match="needs real calibration images"):
        export(model, "tflite", tmp_path / "m.tflite", precision="int8", input_size=SIZE)
    with pytest.raises(ValueError, match="multiple of 32.*100"):
        export(model, "tflite", tmp_path / "m.tflite", input_size=100)


@pytest.mark.skipif(
    tftrt_unavailable_reason() is None, reason="this TensorFlow has TensorRT: TF-TRT works here"
)
def test_tftrt_without_tensorrt_says_why_and_points_to_onnx(model, tmp_path):
    with pytest.raises(
        RuntimeUnavailableError, match="TF-TRT is not available.*ONNX → TensorRT.*trtexec"
    ) as err:
        export(model, "tftrt", tmp_path / "trt", precision="fp16", input_size=SIZE)
    message = str(err.value)
    assert "\n" not in message and tftrt_unavailable_reason() in message
    # 2.18+ (no TensorRT in the build) → the TF 2.17 environment; 2.16/2.17 without libnvinfer → the install step
    assert "requirements-tf217.txt" in message or "pip install tensorrt==" in message
    assert not (tmp_path / "trt").exists()


def test_tftrt_reasons_name_what_is_missing_and_how_to_install_it():
    no_trt_build = tftrt_reason("2.21.0", False)
    assert "is_tensorrt_build" in no_trt_build and "requirements-tf217.txt" in no_trt_build
    no_libraries = tftrt_reason("2.17.1", True, (8, 6, 1), None)
    for part in ("TensorRT 8.6.1", "libnvinfer.so.8", "pip install tensorrt==8.6.1.post1", "LD_LIBRARY_PATH"):
        assert part in no_libraries
    unknown_major = tftrt_reason("2.16.1", True, (9, 0, 0), None)
    assert "TensorRT 9.0.0" in unknown_major and "libnvinfer.so.9" in unknown_major
    assert "pip install tensorrt" not in unknown_major  # no PyPI package known for it: no made-up command
    assert "loaded TensorRT 10.3.0" in tftrt_reason("2.17.1", True, (8, 6, 1), (10, 3, 0))
    assert "at least 8.6.1" in tftrt_reason("2.17.1", True, (8, 6, 1), (8, 5, 3))
    assert tftrt_reason("2.17.1", True, (8, 6, 1), (8, 6, 1)) is None
    assert tftrt_reason("2.17.1", True, (8, 6, 1), (8, 6, 2)) is None  # newer minor/patch loads fine
    for reason in (no_trt_build, no_libraries, unknown_major):
        assert "\n" not in reason


class FakeTrtConverter:
    """Stands in for TrtGraphConverterV2 where TensorRT is absent: records what it is given, checks the
    inputs against the SavedModel's signature as TF-TRT would feed them, and saves the unconverted model."""

    made: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calibration = self.build_inputs = None
        loaded = tf.saved_model.load(kwargs["input_saved_model_dir"])
        self.spec = next(iter(loaded.signatures["serving_default"].structured_input_signature[1].values()))
        FakeTrtConverter.made.append(self)

    def _check(self, batch):
        ((array,),) = [batch]
        assert self.spec.is_compatible_with(tf.constant(array)), (self.spec, array.shape, array.dtype)
        return array

    def convert(self, calibration_input_fn=None):
        assert (calibration_input_fn is not None) == self.kwargs["use_calibration"]  # TF-TRT raises otherwise
        if calibration_input_fn is not None:
            self.calibration = [self._check(batch) for batch in calibration_input_fn()]

    def build(self, input_fn):
        self.build_inputs = [self._check(batch) for batch in input_fn()]

    def save(self, output_saved_model_dir):
        shutil.copytree(self.kwargs["input_saved_model_dir"], output_saved_model_dir)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tftrt_conversion_gets_the_right_arguments_and_real_calibration_images(
    precision, model, image_dir, images, reference, tmp_path
):
    """Everything up to the TensorRT call: converter arguments, calibration input, build shape, the artefact."""
    FakeTrtConverter.made.clear()
    out = export_tftrt(
        model,
        tmp_path / "trt",
        (SIZE, SIZE),
        precision,
        calibration_dir=image_dir if precision == "int8" else None,
        num_calibration_images=len(images),
        max_workspace_bytes=1 << 28,
        progress=False,
        converter_class=FakeTrtConverter,
    )
    (converter,) = FakeTrtConverter.made
    assert converter.kwargs["precision_mode"] == precision.upper()
    assert converter.kwargs["use_calibration"] == (precision == "int8")
    assert converter.kwargs["max_workspace_size_bytes"] == 1 << 28
    assert converter.spec.dtype == tf.float32 and tuple(converter.spec.shape) == (None, SIZE, SIZE, 3)
    if precision == "int8":  # the real images, letterboxed like at inference, one at a time
        assert len(converter.calibration) == len(images)
        np.testing.assert_array_equal(np.concatenate(converter.calibration), images)
    else:
        assert converter.calibration is None
    assert [b.shape for b in converter.build_inputs] == [(1, SIZE, SIZE, 3)]  # engines for a fixed input
    runner = load_runner(out)  # what our runners make of a TF-TRT SavedModel
    assert runner.name == f"tftrt-{precision}" and runner.fixed_input_size == (SIZE, SIZE)
    assert runner.input_dtype == np.float32
    assert worst(parity_report(reference, runner(images), J)) <= FP32_TOLERANCE


def test_tensorrt_without_tensorrt_writes_onnx_and_prints_trtexec(model, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed: the engine is built (see the GPU test)")
    except ImportError:
        pass
    written = []

    def fake_onnx(model, out, size, **kwargs):  # the real ONNX export is tested above
        out.write_bytes(b"onnx")
        written.append((out, size))
        return out

    monkeypatch.setattr(
        "keras_ehrnet.deploy.tensorrt.export_onnx", fake_onnx
    )  # where the exporter looks it up
    engine = tmp_path / "ehrnet.engine"
    with pytest.raises(
        RuntimeUnavailableError, match="(?s)TensorRT Python API is not installed.*trtexec --onnx="
    ):
        export(model, "tensorrt", engine, precision="fp16", input_size=SIZE)
    assert written == [(tmp_path / "ehrnet.onnx", (SIZE, SIZE))]
    printed = capsys.readouterr().out
    assert f"--onnx={tmp_path / 'ehrnet.onnx'}" in printed and "--fp16" in printed


def test_trtexec_command_matches_the_build_settings():
    cmd = trtexec_command("m.onnx", "m.engine", "fp16", (384, 384), max_batch=4)
    assert cmd.startswith("trtexec --onnx=m.onnx --saveEngine=m.engine")
    assert "--minShapes=image:1x384x384x3" in cmd and "--maxShapes=image:4x384x384x3" in cmd
    assert "--fp16" in cmd and "--int8" not in cmd
    int8 = trtexec_command("m.onnx", "m.engine", "int8", (512, 512), calibration_cache="m.calib")
    assert "--int8" in int8 and "--calib=m.calib" in int8 and "--fp16" in int8
    assert "--fp16" not in trtexec_command("m.onnx", "m.engine", "fp32", (512, 512))
    with pytest.raises(ValueError, match="bf16"):
        trtexec_command("m.onnx", "m.engine", "bf16", (512, 512))
    with pytest.raises(ValueError, match="opt_batch"):
        trtexec_command("m.onnx", "m.engine", "fp16", (512, 512), opt_batch=8, max_batch=4)


def test_calibration_batcher_batches_and_caches(tmp_path):
    served = []

    def images():
        for i in range(10):
            served.append(i)
            yield np.full((32, 32, 3), i, np.uint8)

    cache = tmp_path / "model.calib"
    batcher = CalibrationBatcher(images(), 4, cache)
    assert batcher.read_cache() is None
    first = batcher.next_batch()
    assert first.shape == (4, 32, 32, 3) and first.dtype == np.float32 and first.flags.c_contiguous
    assert first[:, 0, 0, 0].tolist() == [0, 1, 2, 3]
    assert batcher.next_batch()[:, 0, 0, 0].tolist() == [4, 5, 6, 7]
    assert batcher.next_batch() is None  # 2 left over: TensorRT calibrates with full batches only
    batcher.write_cache(b"TRT-8601-EntropyCalibration2")
    again = CalibrationBatcher(images(), 4, cache)
    assert again.read_cache() == b"TRT-8601-EntropyCalibration2"  # TensorRT then asks for no batch
    assert len(served) == 10
    with pytest.raises(ValueError, match="only 3 calibration images for a calibration batch of 4"):
        CalibrationBatcher([np.zeros((8, 8, 3))] * 3, 4, cache).next_batch()


def test_tensorrt_engine_matches_onnx(model, images, reference, tmp_path):
    """Runs where TensorRT, cuda-python and a GPU are present (Jetson, NVIDIA machines)."""
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (no NVIDIA GPU here)")
    pytest.importorskip("cuda", reason="cuda-python is not installed")
    del trt
    engine = export(model, "tensorrt", tmp_path / "ehrnet.engine", precision="fp32", input_size=SIZE)
    runner = load_runner(engine)
    assert runner.name == "tensorrt-fp32"
    report = parity_report(reference, runner(images), J)
    assert worst(report) <= 1e-3, report  # TensorRT may pick TF32 kernels on Ampere and newer


def test_default_output_names_say_what_the_artefact_is():
    assert str(default_output_path("tflite", "int8", "h4")) == "h4_int8.tflite"
    assert str(default_output_path("onnx", "fp32", "h4")) == "h4.onnx"
    assert str(default_output_path("savedmodel", "fp32", "h4")) == "h4_savedmodel"
    assert str(default_output_path("tensorrt", "fp16", "h4")) == "h4_fp16.engine"


def test_conversion_program_maps_its_arguments(monkeypatch, tmp_path, capsys):
    from conversion.__main__ import main

    calls = []

    def fake_export(model, fmt, out, **kwargs):
        calls.append((model, fmt, out, kwargs))
        out.write_bytes(b"x" * 2048)
        return out

    monkeypatch.setattr("keras_ehrnet.deploy.export", fake_export)
    model_file = tmp_path / "m.keras"
    args = ["--model", str(model_file), "--format", "tflite", "--precision", "int8"]
    args += [
        "--calibration-images",
        str(tmp_path),
        "--input-size",
        "256",
        "--out",
        str(tmp_path / "m.tflite"),
    ]
    assert main(args) == 0
    (model, fmt, out, kwargs) = calls[0]
    assert model == model_file and fmt == "tflite" and out == tmp_path / "m.tflite"
    assert kwargs["precision"] == "int8" and kwargs["input_size"] == 256
    assert kwargs["calibration_images"] == tmp_path and kwargs["with_decoder"] is False
    assert "wrote" in capsys.readouterr().out
    report = {"images": 2, "input_size": "256x256", "runner": "tflite-int8", "outputs": {}}
    report["outputs"]["half_heatmaps"] = {"max_abs": 0.5, "reference_max": 2.0, "relative": 0.25}
    report["outputs"]["half_heatmaps"].update(correlation=0.9, nan=False, mean_abs=0.1)
    verified = []
    monkeypatch.setattr(
        "keras_ehrnet.deploy.parity.verify_artefact", lambda *a, **k: verified.append((a, k)) or report
    )
    assert main([*args, "--verify", str(tmp_path), "--num-threads", "1"]) == 0
    assert (
        verified[0][0] == (model_file, tmp_path / "m.tflite", tmp_path) and verified[0][1]["num_threads"] == 1
    )
    assert "half_heatmaps     max |diff| 0.5 (output max 2" in capsys.readouterr().out


def test_conversion_program_reports_bad_combinations(tmp_path, capsys):
    from conversion.__main__ import main

    out = tmp_path / "x"
    assert main(["--level", "H-4", "--format", "onnx", "--precision", "fp16", "--out", str(out)]) == 2
    assert "format onnx does not support precision fp16" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "gone.keras"), "--format", "onnx", "--out", str(out)]) == 2
    assert "gone.keras" in capsys.readouterr().err
    if tftrt_unavailable_reason() is not None:
        assert (
            main(["--level", "H0", "--format", "tftrt", "--out", str(out)]) == 2
        )  # fails before building H0
        err = capsys.readouterr().err
        assert err.startswith("error: TF-TRT is not available") and err.count("\n") == 1  # one line
    with pytest.raises(SystemExit):
        main(["--format", "onnx", "--out", str(out)])  # neither --model nor --level
    assert not out.exists()


def test_conversion_takes_a_square_or_a_height_by_width_input_size():
    from conversion.__main__ import parse_args

    base = ["--level", "H-4", "--format", "tflite", "--out", "x.tflite", "--input-size"]
    assert parse_args([*base, "384"]).input_size == 384
    assert parse_args([*base, "192x288"]).input_size == (192, 288)
    for bad in ("192x", "1x2x3", "big"):
        with pytest.raises(SystemExit):
            parse_args([*base, bad])
