"""What differs between Keras backends, in one place.

The model, losses, decoding and the Predictor run on any Keras 3 backend (TensorFlow, JAX,
PyTorch). Only some parts need TensorFlow itself (the tf.data pipeline, the tf.distribute
trainer, SavedModel/TFLite/TF-TRT export, the in-graph decoder); they call `require_tensorflow`
so that a missing TensorFlow gives one line naming the part instead of an import traceback.
`inference_fn` is the compiled forward pass for whichever backend is active.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np


class TensorFlowRequiredError(ImportError):
    """A TensorFlow-only part was used where TensorFlow cannot be imported."""


def require_tensorflow(what: str) -> Any:
    """The `tensorflow` module, or TensorFlowRequiredError saying that `what` needs it."""
    try:
        import tensorflow as tf
    except ImportError:
        raise TensorFlowRequiredError(
            f"{what} needs TensorFlow (pip install tensorflow); the model, losses, decoding, "
            f"Predictor and keras_ehrnet.train.fit run without it (KERAS_BACKEND={keras.backend.backend()})"
        ) from None
    return tf


def backend_name() -> str:
    """The active Keras backend: "tensorflow", "jax" or "torch"."""
    return keras.backend.backend()


def inference_fn(model: Any) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
    """images → outputs as NumPy arrays, compiled for the active backend.

    TensorFlow: one tf.function (retraced only for new shapes); JAX: `jax.jit` of the
    model's stateless call; PyTorch: eager under `torch.no_grad` (torch.compile is left to
    the benchmark, which measures whether it helps).
    """
    backend = backend_name()
    if backend == "tensorflow":
        tf = require_tensorflow("the TensorFlow backend")
        fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        return lambda x: tuple(np.asarray(t) for t in fn(x))
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        fixed = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def run(trainable, fixed, x):
            out, _ = model.stateless_call(trainable, fixed, x, training=False)
            return out

        return lambda x: tuple(np.asarray(t) for t in run(trainable, fixed, np.asarray(x)))
    if backend == "torch":
        import torch

        def run_torch(x):
            with torch.no_grad():
                out = model(keras.ops.convert_to_tensor(np.asarray(x)), training=False)
            return tuple(keras.ops.convert_to_numpy(t) for t in out)

        return run_torch
    return lambda x: tuple(keras.ops.convert_to_numpy(t) for t in model(x, training=False))
