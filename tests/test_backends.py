"""Every Keras backend: the same .keras file and real images on TensorFlow, JAX and PyTorch.

TensorFlow (this process) prepares a randomly initialised H-4 model (no stochastic depth, so a
training step is deterministic), a batch of two embedded sample images with their pipeline
targets, and its own outputs, loss terms and MAC counts. One subprocess per backend
(tests/backend_worker.py, TensorFlow refused by an import hook) does all its checks at once;
the tests below compare. Tolerances: outputs within 1e-5 of the largest |output|; each loss term
of two SGD steps within 1e-4 (relative); MAC counts exactly equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_ehrnet as ke
from keras_ehrnet.data import make_dataset, sample_dataset
from keras_ehrnet.train.fit import arrays_from_dataset, train_step_losses

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("jax", "torch")
LEVEL = "H-4"
SIZE = 128
MAC_LEVELS = ("H-4", "H-1")  # TensorFlow graph vs layer graph here; the workers count H-4
DECODE = {"input_size": 128, "detection_threshold": 0.0, "max_people": 5, "flip": False}
STEPS = 3
TF_ONLY = {
    "tf.distribute trainer": "from keras_ehrnet.train import Trainer",
    "tf.data pipeline": "from keras_ehrnet.data import make_dataset",
    "export": "from keras_ehrnet.deploy import export",
    "in-graph decoder": "import keras_ehrnet.inference.tf_decoder",
}
# JAX compiles every kernel with LLVM: at optimisation level 0 the model's compilations take
# seconds instead of minutes on the 2-core CI machine (values agree to float rounding).
JAX_ENV = {"XLA_FLAGS": "--xla_backend_optimization_level=0"}


def tf_graph_macs(model, h: int, w: int) -> int:
    """The MAC count from TensorFlow's traced graph (the counter count_macs replaced)."""
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec([1, h, w, 3], tf.float32)).graph
    total = 0
    for op in graph.get_operations():
        if op.type == "Conv2D":
            kh, kw, cin, _ = op.inputs[1].shape
            total += int(np.prod(op.outputs[0].shape)) * kh * kw * cin
        elif op.type == "DepthwiseConv2dNative":
            kh, kw, _, _ = op.inputs[1].shape
            total += int(np.prod(op.outputs[0].shape)) * kh * kw
        elif op.type == "Conv2DBackpropInput":
            kh, kw, cout, _ = op.inputs[1].shape
            total += int(np.prod(op.inputs[2].shape)) * kh * kw * cout
        elif op.type == "MatMul":
            a = op.inputs[0].shape
            total += int(np.prod(op.outputs[0].shape)) * int(a[-2] if op.get_attr("transpose_a") else a[-1])
    return total


def people_arrays(people) -> tuple[np.ndarray, np.ndarray]:
    keypoints = np.array([p.keypoints for p in people], np.float32).reshape(-1, 17, 3)
    return keypoints, np.array([p.score for p in people], np.float32)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """TensorFlow's side, and each backend's results from its subprocess."""
    tmp = tmp_path_factory.mktemp("backends")
    keras.utils.set_random_seed(0)
    model = ke.build_model(LEVEL, drop_connect_rate=0.0)
    model.save(tmp / "tf.keras")
    ann, image_dir = sample_dataset()
    dataset = make_dataset(
        ann, image_dir, input_size=SIZE, batch_size=2, training=True, shuffle=False, seed=0
    )
    images, targets = arrays_from_dataset(dataset, 1)
    np.savez(tmp / "batch.npz", images=images, **{f"t_{k}": v for k, v in targets.items()})
    image_path = sorted(image_dir.glob("*.jpg"))[0]
    import cv2

    tf_people = people_arrays(ke.Predictor(model, **DECODE).predict(cv2.imread(str(image_path))[..., ::-1]))
    tf_side = {
        "outputs": [np.asarray(t) for t in model(images, training=False)],
        "steps": train_step_losses(keras.models.load_model(tmp / "tf.keras"), images, targets, steps=STEPS),
        "people": tf_people,
        "images": images,
        "model": model,
    }
    runs = {}
    for backend in BACKENDS:
        spec = {
            "root": str(ROOT),
            "model": str(tmp / "tf.keras"),
            "batch": str(tmp / "batch.npz"),
            "saved": str(tmp / f"{backend}.keras"),
            "fit_dir": str(tmp / f"fit-{backend}"),
            "steps": STEPS,
            "fit": backend == "torch",  # model.fit + resume once (JAX would compile its step for minutes)
            "epochs": 2,
            "stop_after": 1,
            "image": str(image_path),
            "decode": DECODE,
            "levels": [LEVEL],
            "tf_only": TF_ONLY,
            "arrays": str(tmp / f"{backend}.npz"),
            "out": str(tmp / f"{backend}.json"),
        }
        (tmp / f"{backend}-spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "KERAS_BACKEND": backend, **(JAX_ENV if backend == "jax" else {})}
        proc = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "backend_worker.py"), str(tmp / f"{backend}-spec.json")],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,  # minutes on a busy 2-core machine; ~2 min on a quiet one
        )
        assert proc.returncode == 0, f"{backend} worker failed:\n{proc.stderr[-4000:]}"
        runs[backend] = (json.loads(Path(spec["out"]).read_text()), dict(np.load(spec["arrays"])), spec)
    return tf_side, runs


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_same_file_same_images_same_outputs(prepared, backend):
    tf_side, runs = prepared
    results, arrays, _ = runs[backend]
    assert results["backend"] == backend
    for name, expected in zip(("quarter", "half"), tf_side["outputs"]):
        scale = float(np.abs(expected).max())
        assert arrays[name].shape == expected.shape
        assert float(np.abs(arrays[name] - expected).max()) <= 1e-5 * scale, name


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_file_written_under_backend_loads_under_tensorflow(prepared, backend):
    tf_side, runs = prepared
    _, _, spec = runs[backend]
    reloaded = keras.models.load_model(spec["saved"])
    for got, expected in zip(reloaded(tf_side["images"], training=False), tf_side["outputs"]):
        assert float(np.abs(np.asarray(got) - expected).max()) <= 1e-5 * float(np.abs(expected).max())


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_steps_give_the_same_falling_loss(prepared, backend):
    tf_side, runs = prepared
    steps = runs[backend][0]["steps"]
    assert len(steps) == len(tf_side["steps"]) == STEPS
    # Step 1: the training-mode forward pass and the loss; later steps: gradients and updates too.
    for got, expected in zip(steps, tf_side["steps"]):
        assert abs(got - expected) <= 1e-4 * abs(expected), (got, expected)
    assert steps[-1] < steps[0]


@pytest.mark.slow
def test_fit_lowers_the_loss_and_resumes_after_an_interruption(prepared):
    tf_side, runs = prepared
    results = runs["torch"][0]
    # Stopped after epoch 1 of 2: the second call ran only epoch 2 (0-based 1).
    assert results["resumed_epochs"] == [1]
    assert results["final_exists"]
    assert results["resumed_loss"][-1] < tf_side["steps"][0]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_predictor_decodes_the_same_people(prepared, backend):
    tf_side, runs = prepared
    arrays = runs[backend][1]
    keypoints, scores = tf_side["people"]
    assert len(scores) > 0
    np.testing.assert_allclose(arrays["people_scores"], scores, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(arrays["people_keypoints"], keypoints, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_without_tensorflow_the_core_works_and_tf_parts_say_so(prepared, backend):
    results = prepared[1][backend][0]
    assert results["tensorflow_loaded"] is False
    assert results["backbone_outputs"] >= 1
    for part, message in results["tf_only_errors"].items():
        assert message is not None, f"{part} imported without TensorFlow"
        assert "needs TensorFlow" in message and "\n" not in message, message


@pytest.mark.slow
def test_count_macs_equals_the_tensorflow_graph_count_on_every_backend(prepared):
    _, runs = prepared
    for level in MAC_LEVELS:
        model = ke.build_model(level)
        size = model.config.input_size
        expected = tf_graph_macs(model, size, size)
        assert ke.count_macs(model, size) == expected
        assert ke.count_macs(model, (size, size + 64)) == tf_graph_macs(model, size, size + 64)
        for backend in BACKENDS:
            assert runs[backend][0]["macs"].get(level, expected) == expected, backend
    assert all(LEVEL in runs[backend][0]["macs"] for backend in BACKENDS)


@pytest.mark.slow
def test_gpu_benchmark_runs_on_the_cpu_and_writes_its_table(tmp_path):
    """`evaluation.benchmark gpu --device cpu` on a small input: rows, JSON and Markdown, no TF."""
    json_path, md_path = tmp_path / "gpu.json", tmp_path / "gpu.md"
    argv = ["--device", "cpu", "--groups", "torch", "--modes", "eager", "--precisions", "fp32",
            "--levels", LEVEL, "--input-size", "64", "--batches", "1", "--warmup", "0", "--runs", "2",
            "--train-batch", "1", "--train-steps", "1", "--e2e-levels", LEVEL,
            "--json", str(json_path), "--markdown", str(md_path)]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "evaluation.benchmark", "gpu", *argv], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(json_path.read_text())["rows"]
    by_what = {r["what"]: r for r in rows}
    assert set(by_what) == {"inference", "end-to-end", "train", "imports"}, rows
    for what in ("inference", "end-to-end"):
        row = by_what[what]
        assert "error" not in row, row
        assert 0 < row["median_ms"] <= row["p90_ms"]
        assert row["fps"] == pytest.approx(1000 / row["median_ms"], rel=0.01)
    assert by_what["train"]["images_per_s"] > 0
    assert by_what["imports"] == {
        "what": "imports",
        "group": "torch",
        "tensorflow": False,
        "pycocotools": False,
    }
    table = md_path.read_text()
    assert "| H-4 | 64 | 1 | ours | torch | eager | fp32 |" in table
    assert "end-to-end median ms" in table and "training images/s" in table
