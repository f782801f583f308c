"""TensorFlow for the TensorFlow-only modules, or one line saying which part needs it.

`from keras_ehrnet._tf import tf` replaces `import tensorflow as tf` in the modules that cannot
work without TensorFlow (the tf.data pipeline, the tf.distribute trainer, SavedModel/TFLite/
ONNX/TF-TRT export, the in-graph decoder). Where TensorFlow is missing, importing one of them
raises `TensorFlowRequiredError` naming the part, instead of a bare ModuleNotFoundError.
"""

from __future__ import annotations

import sys

from keras_ehrnet.backend import require_tensorflow

# The part each TensorFlow-only module belongs to (longest matching prefix wins).
PARTS = {
    "keras_ehrnet.data": "the tf.data training pipeline",
    "keras_ehrnet.train": "the tf.distribute trainer",
    "keras_ehrnet.deploy": "SavedModel/TFLite/ONNX/TF-TRT export",
    "keras_ehrnet.inference.tf_decoder": "the in-graph TensorFlow decoder",
}


def _importer() -> str:
    """The module whose import brought us here (the first frame outside the import machinery)."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("keras_ehrnet") and name != __name__:
            return name
        frame = frame.f_back
    return "this part of keras_ehrnet"


def _part(module: str) -> str:
    matches = [prefix for prefix in PARTS if module == prefix or module.startswith(prefix + ".")]
    return f"{module} ({PARTS[max(matches, key=len)]})" if matches else module


tf = require_tensorflow(_part(_importer()))
