"""CPU runtimes without TensorFlow, and the exact clean-ups of our ONNX graph.

- Running an .onnx (and, where installed, a LiteRT .tflite or an OpenVINO .xml) through
  `load_runner` or `Predictor` must not import TensorFlow or Keras: their thread pools would
  take the cores from the runtime. Checked in a fresh process, with the outputs compared to
  the Keras model's (so the child really ran the network).
- Each rewrite of `keras_ehrnet.deploy.onnx_graph` is checked on a small hand-made graph:
  ONNX Runtime's outputs before and after agree (exactly where the rewrite is exact), and a
  graph the rewrite must not touch is left alone.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from keras_ehrnet.deploy.onnx_graph import simplify_onnx

ROOT = Path(__file__).resolve().parents[1]
J = 3
SIZE = 64

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
helper, numpy_helper, TensorProto = onnx.helper, onnx.numpy_helper, onnx.TensorProto


def run_onnx(model, feeds: dict) -> list:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def make_model(nodes, inputs, outputs, initializers) -> "onnx.ModelProto":
    graph = helper.make_graph(
        nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in initializers.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def resize_model(scale: float) -> "onnx.ModelProto":
    node = helper.make_node(
        "Resize",
        ["x", "roi", "scales"],
        ["y"],
        mode="nearest",
        nearest_mode="floor",
        coordinate_transformation_mode="tf_half_pixel_for_nn",
    )
    inits = {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, scale, scale], np.float32)}
    return make_model([node], [value("x", ["batch", 2, 5, 7])], [value("y", [None] * 4)], inits)


@pytest.mark.parametrize("scale", [2.0, 3.0, 4.0, 8.0])
def test_integer_nearest_resize_becomes_asymmetric_with_identical_output(scale):
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 7)).astype(np.float32)
    model = resize_model(scale)
    before = run_onnx(model, {"x": x})[0]
    assert simplify_onnx(model)["resize_asymmetric"] == 1
    (node,) = model.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["coordinate_transformation_mode"] == b"asymmetric"
    np.testing.assert_array_equal(run_onnx(model, {"x": x})[0], before)


def test_fractional_resize_is_left_alone():
    model = resize_model(1.5)
    assert simplify_onnx(model)["resize_asymmetric"] == 0
    attrs = {a.name: helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    assert attrs["coordinate_transformation_mode"] == b"tf_half_pixel_for_nn"


def test_noop_reshapes_go_and_real_ones_stay():
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["g"]),
        helper.make_node("Reshape", ["g", "same"], ["g2"]),  # [N, 4, 1, 1] → [-1, 4, 1, 1]: a no-op
        helper.make_node("Conv", ["g2", "w"], ["c"]),
        helper.make_node("Reshape", ["c", "flat"], ["y"]),  # [N, 6, 1, 1] → [N, 6]: a real one
    ]
    inits = {
        "same": np.array([-1, 4, 1, 1], np.int64),
        "flat": np.array([-1, 6], np.int64),
        "w": rng.standard_normal((6, 4, 1, 1)).astype(np.float32),
    }
    model = make_model(nodes, [value("x", ["batch", 4, 8, 8])], [value("y", [None, None])], inits)
    x = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    before = run_onnx(model, {"x": x})[0]
    assert simplify_onnx(model)["noop_reshape"] == 1
    assert [n.op_type for n in model.graph.node] == ["GlobalAveragePool", "Conv", "Reshape"]
    np.testing.assert_array_equal(run_onnx(model, {"x": x})[0], before)


def test_batchnorm_after_conv_transpose_is_folded_into_it():
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node(
            "ConvTranspose", ["x", "w"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[4, 4]
        ),
        helper.make_node("Mul", ["t", "scale"], ["m"]),
        helper.make_node("Add", ["m", "shift"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
    ]
    inits = {
        "w": rng.standard_normal((5, 3, 4, 4)).astype(np.float32),
        "scale": rng.uniform(0.5, 1.5, (1, 3, 1, 1)).astype(np.float32),
        "shift": rng.standard_normal((1, 3, 1, 1)).astype(np.float32),
    }
    model = make_model(nodes, [value("x", ["batch", 5, 6, 6])], [value("y", [None] * 4)], inits)
    x = rng.standard_normal((2, 5, 6, 6)).astype(np.float32)
    before = run_onnx(model, {"x": x})[0]
    assert simplify_onnx(model)["conv_affine_fold"] == 1
    assert [n.op_type for n in model.graph.node] == ["ConvTranspose", "Relu"]
    after = run_onnx(model, {"x": x})[0]
    assert np.abs(after - before).max() <= 1e-5 * np.abs(before).max()


def test_batchnorm_after_a_depthwise_conv_is_folded_into_it():
    """tf2onnx leaves the BatchNorm of a grouped (depthwise) convolution as Mul and Add."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], group=4, pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Mul", ["c", "scale"], ["m"]),
        helper.make_node("Add", ["m", "shift"], ["a"]),
        helper.make_node("Sigmoid", ["a"], ["s"]),
        helper.make_node("Mul", ["a", "s"], ["y"]),  # swish: its Mul has no constant, it stays
    ]
    inits = {
        "w": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
        "scale": rng.uniform(0.5, 1.5, (1, 4, 1, 1)).astype(np.float32),
        "shift": rng.standard_normal((4, 1, 1)).astype(np.float32),
    }
    model = make_model(nodes, [value("x", ["batch", 4, 7, 7])], [value("y", [None] * 4)], inits)
    x = rng.standard_normal((2, 4, 7, 7)).astype(np.float32)
    before = run_onnx(model, {"x": x})[0]
    assert simplify_onnx(model)["conv_affine_fold"] == 1
    assert [n.op_type for n in model.graph.node] == ["Conv", "Sigmoid", "Mul"]
    after = run_onnx(model, {"x": x})[0]
    assert np.abs(after - before).max() <= 1e-5 * np.abs(before).max()


def test_a_shared_conv_weight_is_not_folded():
    rng = np.random.default_rng(6)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Mul", ["c", "scale"], ["m"]),
        helper.make_node("Conv", ["x", "w"], ["d"], kernel_shape=[1, 1]),
        helper.make_node("Add", ["m", "d"], ["y"]),
    ]
    inits = {
        "w": rng.standard_normal((3, 3, 1, 1)).astype(np.float32),
        "scale": rng.uniform(0.5, 1.5, (1, 3, 1, 1)).astype(np.float32),
    }
    model = make_model(nodes, [value("x", ["batch", 3, 4, 4])], [value("y", [None] * 4)], inits)
    assert simplify_onnx(model)["conv_affine_fold"] == 0
    assert [n.op_type for n in model.graph.node] == ["Conv", "Mul", "Conv", "Add"]


def test_a_channel_last_affine_after_conv_transpose_is_not_folded():
    """A [C] constant broadcasts over the last (width) axis in NCHW: folding it per channel would be wrong."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node(
            "ConvTranspose", ["x", "w"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[4, 4]
        ),
        helper.make_node("Mul", ["t", "scale"], ["y"]),
    ]
    inits = {"w": rng.standard_normal((5, 3, 4, 4)).astype(np.float32), "scale": np.ones(12, np.float32)}
    model = make_model(nodes, [value("x", ["batch", 5, 6, 6])], [value("y", [None] * 4)], inits)
    assert simplify_onnx(model)["conv_affine_fold"] == 0
    assert [n.op_type for n in model.graph.node] == ["ConvTranspose", "Mul"]


def test_input_normalisation_moves_after_the_layout_transpose():
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Mul", ["image", "scale"], ["m"]),
        helper.make_node("Add", ["m", "shift"], ["a"]),
        helper.make_node("Transpose", ["a"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits = {
        "scale": np.array([1 / 58.4, 1 / 57.1, 1 / 57.4], np.float32),
        "shift": np.array([-2.1, -2.0, -1.8], np.float32),
        "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
    }
    model = make_model(nodes, [value("image", ["batch", 8, 8, 3])], [value("y", [None] * 4)], inits)
    x = rng.uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    before = run_onnx(model, {"image": x})[0]
    assert simplify_onnx(model)["normalise_in_nchw"] == 1
    assert [n.op_type for n in model.graph.node] == ["Transpose", "Mul", "Add", "Conv"]
    np.testing.assert_array_equal(run_onnx(model, {"image": x})[0], before)  # the same float ops per pixel


def test_every_four_d_intermediate_carries_the_batch_name():
    model = resize_model(2.0)
    model.graph.node.append(helper.make_node("Relu", ["y"], ["z"]))
    model.graph.output[0].CopyFrom(value("z", [None] * 4))
    simplify_onnx(model)
    shapes = {v.name: v.type.tensor_type.shape.dim for v in model.graph.value_info}
    assert shapes["y"][0].dim_param == "batch"
    assert [d.dim_value for d in shapes["y"][1:]] == [2, 10, 14]


# --------------------------------------------------------------------------- without TensorFlow

CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from keras_ehrnet import Predictor
    from keras_ehrnet.deploy.runtimes import load_runner

    paths, pixels_file, out_file = sys.argv[1:-2], sys.argv[-2], sys.argv[-1]
    pixels = np.load(pixels_file)
    result, outputs = {}, {}
    for path in paths:
        runner = load_runner(path, num_threads=1)
        quarter, half = runner(pixels)
        outputs[path + ":quarter"], outputs[path + ":half"] = quarter, half
        people = Predictor(path, input_size=64, flip=False).predict(pixels[0].astype(np.uint8))
        result[path] = {"name": runner.name, "people_is_list": isinstance(people, list),
                        "source": getattr(runner, "interpreter_source", None)}
    np.savez(out_file, **outputs)
    result["loaded"] = [m for m in ("tensorflow", "keras", "torch") if m in sys.modules]
    print(json.dumps(result))
    """
)


@pytest.fixture(scope="module")
def tiny_and_pixels():
    import keras
    from test_runtimes import tiny_pose_model

    keras.utils.set_random_seed(0)
    pixels = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.float32)
    return tiny_pose_model(), pixels


def artefacts_without_tensorflow(tiny, tmp_path) -> list[Path]:
    """The tiny model as .onnx, plus LiteRT .tflite and OpenVINO .xml where those are installed."""
    import importlib.util

    from keras_ehrnet.deploy.onnx import export_onnx

    paths = [export_onnx(tiny, tmp_path / "tiny.onnx", (SIZE, SIZE))]
    if importlib.util.find_spec("ai_edge_litert") is not None:
        from keras_ehrnet.deploy.savedmodel import export_savedmodel
        from keras_ehrnet.deploy.tflite import tflite_from_savedmodel

        saved = export_savedmodel(tiny, tmp_path / "tiny_sm", (SIZE, SIZE))
        paths.append(
            tflite_from_savedmodel(saved, tmp_path / "tiny.tflite", "fp32", signature="serving_default")
        )
    if importlib.util.find_spec("openvino") is not None:
        from keras_ehrnet.deploy.openvino import export_openvino

        paths.append(export_openvino(paths[0], tmp_path / "tiny_openvino.xml"))
    return paths


def test_runners_and_predictor_run_exported_files_without_tensorflow(tiny_and_pixels, tmp_path):
    tiny, pixels = tiny_and_pixels
    paths = artefacts_without_tensorflow(tiny, tmp_path)
    np.save(tmp_path / "pixels.npy", pixels)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            *map(str, paths),
            str(tmp_path / "pixels.npy"),
            str(tmp_path / "out.npz"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result.pop("loaded") == [], "running an exported file imported TensorFlow/Keras"
    outputs = np.load(tmp_path / "out.npz")
    want = [np.asarray(o) for o in tiny(pixels, training=False)]
    for path in paths:
        assert result[str(path)]["people_is_list"]
        if path.suffix == ".tflite":
            assert result[str(path)]["source"] == "ai-edge-litert"
        for key, ref in zip(("quarter", "half"), want):
            got = outputs[f"{path}:{key}"]
            assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), (path, key)


def test_openvino_runner_matches_the_onnx_file(tiny_and_pixels, tmp_path):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino)")
    from keras_ehrnet.deploy.onnx import export_onnx
    from keras_ehrnet.deploy.openvino import export_openvino
    from keras_ehrnet.deploy.runtimes import OpenVINORunner, load_runner

    tiny, pixels = tiny_and_pixels
    onnx_path = export_onnx(tiny, tmp_path / "tiny.onnx", (SIZE, SIZE))
    xml = export_openvino(onnx_path, tmp_path / "tiny_openvino.xml")
    assert xml.with_suffix(".bin").is_file()
    runner = load_runner(xml, num_threads=1)
    assert isinstance(runner, OpenVINORunner) and runner.name == "openvino"
    assert runner.fixed_input_size == (SIZE, SIZE) and runner.num_joints == J
    assert runner.metadata.get("format") == "onnx"  # our metadata travels into the IR
    onnx_runner = load_runner(onnx_path)
    for batch in (pixels, pixels[:1], pixels):
        for got, want in zip(runner(batch), onnx_runner(batch)):
            assert got.shape == want.shape and got.dtype == np.float32
            assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    # a fixed-size file is compiled with every axis fixed, once per batch size seen
    assert sorted(runner._requests) == [1, 2]
    assert all(c.inputs[0].get_partial_shape().is_static for c, _ in runner._requests.values())
    with pytest.raises(ValueError, match="is written as a .xml file"):
        export_openvino(onnx_path, tmp_path / "model.bin")
    broken = tmp_path / "broken.xml"
    broken.write_text("<net>not finished")
    with pytest.raises(ValueError, match="broken.xml is not a valid OpenVINO/ONNX model"):
        load_runner(broken)


def test_replicas_share_the_threads_and_run_side_by_side_with_the_same_outputs(tiny_and_pixels, tmp_path):
    """What the video pipeline's parallel network workers rely on: each replica is its own
    session (ONNX Runtime), interpreter (TFLite) or compiled model (OpenVINO) at its share of the
    threads, and gives the original's outputs while the others run at the same time."""
    import importlib.util
    import threading

    from keras_ehrnet.deploy.onnx import export_onnx
    from keras_ehrnet.deploy.runtimes import load_runner
    from keras_ehrnet.deploy.tflite import export_tflite

    tiny, pixels = tiny_and_pixels
    paths = [
        export_onnx(tiny, tmp_path / "tiny.onnx", (SIZE, SIZE)),
        export_tflite(tiny, tmp_path / "tiny.tflite", (SIZE, SIZE)),
    ]
    if importlib.util.find_spec("openvino") is not None:  # a compiled model each, fixed size only
        from keras_ehrnet.deploy.openvino import export_openvino

        paths.append(export_openvino(paths[0], tmp_path / "tiny_openvino.xml"))
    for path in paths:
        runner = load_runner(path, num_threads=2)
        want = runner(pixels)
        replicas = runner.replicas(2)
        assert runner.replicable and len(replicas) == 2 and replicas[0] is not replicas[1]
        assert all(type(r) is type(runner) and r.num_threads == 1 for r in replicas)
        got: dict = {}

        def run(k, replica, got):
            got[k] = [replica(pixels) for _ in range(3)]

        threads = [threading.Thread(target=run, args=(k, r, got)) for k, r in enumerate(replicas)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for outs in got.values():
            for pair in outs:
                for a, b in zip(pair, want):
                    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(1.0, np.abs(b).max()))
        assert len(runner.replicas(8)) == 8 and runner.replicas(8)[0].num_threads == 1
        with pytest.raises(ValueError, match="replica count"):
            runner.replicas(0)


def test_training_comparison_takes_medians_of_interleaved_rounds(monkeypatch):
    import argparse

    import evaluation.benchmark.train_reference as tr

    ours = iter([3.0, 1.0, 2.0])
    theirs = iter([4.0, 2.0, 4.0])
    calls = []

    def measure(level, **kwargs):
        calls.append(("ours", level))
        return {"input_size": 384, "step_seconds_median": next(ours)}

    def reference(args, level, size, threads):
        calls.append(("reference", level))
        return {"input_size": size, "step_seconds_median": next(theirs)}

    monkeypatch.setattr(tr, "reference_round", reference)
    args = argparse.Namespace(
        levels=["H-4"],
        rounds=3,
        threads=1,
        input_size=None,
        batch_size=2,
        steps=1,
        warmup=0,
        mixed_precision="float32",
    )
    (row,) = tr.compare_levels(args, measure)
    assert calls == [("ours", "H-4"), ("reference", "H-4")] * 3  # interleaved
    assert row["step_seconds_median"] == 2.0 and row["reference_step_seconds_median"] == 4.0
    assert row["ratio_time_per_image_vs_reference"] == 0.5
    assert row["rounds"]["reference_step_seconds"] == [4.0, 2.0, 4.0]


def test_onnx_pair_times_two_files_by_turns_and_profiles_their_operators(tmp_path, capsys):
    from evaluation.benchmark import onnx_pair

    nhwc = make_model(
        [helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2]), helper.make_node("Relu", ["t"], ["y"])],
        [value("image", [1, 8, 8, 3])], [value("y", [1, 3, 8, 8])], {},
    )  # fmt: skip
    nchw = make_model(
        [helper.make_node("Relu", ["x"], ["y"])], [value("x", [1, 3, 8, 8])], [value("y", [1, 3, 8, 8])], {}
    )
    other = make_model(
        [helper.make_node("Relu", ["x"], ["y"])], [value("x", [1, 3, 4, 4])], [value("y", [1, 3, 4, 4])], {}
    )
    paths = {}
    for name, model in (("ours", nhwc), ("ref", nchw), ("other", other)):
        paths[name] = tmp_path / f"{name}.onnx"
        onnx.save(model, str(paths[name]))
    # the NCHW file gets the same pixels normalised; a wrong feed would make ORT raise
    feed = onnx_pair.feed_for(
        onnx_pair._Graph(paths["ref"], "onnxruntime", 1), np.full((1, 8, 8, 3), 255.0, np.float32)
    )
    np.testing.assert_allclose(
        feed["x"][0, :, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225], rtol=1e-6
    )
    out = tmp_path / "pair.json"
    argv = [str(paths["ours"]), str(paths["ref"]), "--pairs", "5", "--profile", "2", "--json", str(out)]
    assert onnx_pair.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["input"] == [8, 8] and result["pairs"] == 5 and result["ratio_median"] > 0
    assert result["ratio_quartiles"][0] <= result["ratio_median"] <= result["ratio_quartiles"][1]
    ops = result["kernel_ms_by_op"]
    assert "Transpose" in ops["ours"] and "Transpose" not in ops["reference"] and "Relu" in ops["reference"]
    assert "| Transpose |" in capsys.readouterr().out
    assert onnx_pair.main([str(paths["ours"]), str(paths["other"])]) == 2
    assert "different input sizes" in capsys.readouterr().err
    assert onnx_pair.main([str(paths["ours"]), str(tmp_path / "missing.onnx")]) == 2
    assert "missing.onnx" in capsys.readouterr().err
    # the same pair compiled by OpenVINO: each file still gets the input it expects
    argv = [str(paths["ours"]), str(paths["ref"]), "--runtime", "openvino", "--pairs", "3"]
    argv += ["--json", str(out)]
    assert onnx_pair.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["runtime"] == "openvino" and result["input"] == [8, 8] and result["ratio_median"] > 0
    assert "on openvino" in capsys.readouterr().out
    assert onnx_pair.main(argv[:-2] + ["--profile", "2"]) == 2
    assert "ONNX Runtime's profiler" in capsys.readouterr().err
