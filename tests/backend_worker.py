"""Runs in a subprocess under KERAS_BACKEND=jax or torch with TensorFlow made unimportable.

`python tests/backend_worker.py SPEC.json` reads what tests/test_backends.py prepared under
TensorFlow (a .keras file, a batch of real sample images with their training targets, TF's
MAC counts), does every check of the backend-neutral package in this one process (imports,
building, loading, inference, the losses and one training step, fit with resume, decoding and
the Predictor, count_macs, the one-line TensorFlow-required error) and writes the results to
SPEC's "out" file for the parent test to compare against TensorFlow.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import json
import sys
import time
from pathlib import Path


class RefuseTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """An import hook: `import tensorflow` (and any tensorflow.*) fails as if it were not installed.

    It answers find_spec with a spec whose loader refuses, so code that only asks whether
    TensorFlow exists (importlib.util.find_spec, as torch._dynamo does) keeps working.
    """

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "tensorflow":
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r} (refused by the test hook)", name=spec.name)

    def exec_module(self, module):  # never reached: create_module refuses
        raise ModuleNotFoundError(module.__name__)


def main(spec_path: str) -> None:
    sys.meta_path.insert(0, RefuseTensorFlow())
    start = time.perf_counter()

    def stage(name: str) -> None:  # seconds per check on stderr: the parent shows them on failure
        print(f"{time.perf_counter() - start:7.1f} s  {name}", file=sys.stderr, flush=True)

    spec = json.loads(Path(spec_path).read_text())
    sys.path.insert(0, spec["root"])

    import keras
    import numpy as np

    import keras_ehrnet as ke
    from keras_ehrnet.backend import TensorFlowRequiredError
    from keras_ehrnet.train.fit import fit, train_step_losses

    results: dict = {"backend": keras.backend.backend()}
    arrays: dict[str, np.ndarray] = {}
    batch = np.load(spec["batch"])
    images = batch["images"]
    targets = {k[len("t_") :]: batch[k] for k in batch.files if k.startswith("t_")}

    # Loading the TensorFlow-written file, inference on real images.
    model = keras.models.load_model(spec["model"])
    quarter, half = (keras.ops.convert_to_numpy(t) for t in model(images, training=False))
    arrays["quarter"], arrays["half"] = quarter, half

    stage("inference")

    # The same file written back under this backend (the parent reads it under TensorFlow).
    model.save(spec["saved"])

    stage("saved")

    # The training loss over a few SGD steps from the file's weights.
    steps = spec["steps"]
    results["steps"] = train_step_losses(keras.models.load_model(spec["model"]), images, targets, steps=steps)

    stage("two steps")

    # model.fit with the project's loss, interrupted and resumed (where the spec asks: on JAX each
    # fit compiles a train step for minutes on a 2-core machine; the callback is Keras' own).
    if spec["fit"]:

        class StopAfter(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch + 1 == spec["stop_after"]:
                    raise KeyboardInterrupt

        net = keras.models.load_model(spec["model"])
        run = {"epochs": spec["epochs"], "batch_size": len(images), "out_dir": spec["fit_dir"], "verbose": 0}
        with contextlib.suppress(KeyboardInterrupt):
            fit(net, (images, targets), callbacks=[StopAfter()], **run)
        resumed = fit(net, (images, targets), **run)
        results["resumed_epochs"] = list(resumed.epoch)
        results["resumed_loss"] = resumed.history["loss"]
        results["final_exists"] = (Path(spec["fit_dir"]) / "final.keras").is_file()

    stage("fit + resume")

    # Decoding and the Predictor on a real image.
    import cv2

    image = cv2.imread(spec["image"])[..., ::-1]
    predictor = ke.Predictor(model, **spec["decode"])
    people = predictor.predict(image)
    arrays["people_keypoints"] = np.array([p.keypoints for p in people], np.float32).reshape(-1, 17, 3)
    arrays["people_scores"] = np.array([p.score for p in people], np.float32)

    stage("predictor")

    # Building every level's model and backbone, and counting their MACs.
    results["macs"] = {}
    for level in spec["levels"]:
        built = ke.build_model(level)
        results["macs"][level] = ke.count_macs(built, built.config.input_size)
    results["backbone_outputs"] = len(ke.build_backbone(spec["levels"][0]).outputs)

    stage("build + macs")

    # TensorFlow-only parts say so in one line.
    errors = {}
    for name, use in spec["tf_only"].items():
        try:
            exec(use, {})
            errors[name] = None
        except TensorFlowRequiredError as err:
            errors[name] = str(err)
    results["tf_only_errors"] = errors
    results["tensorflow_loaded"] = any(m.split(".")[0] == "tensorflow" for m in sys.modules)

    np.savez(spec["arrays"], **arrays)
    Path(spec["out"]).write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
