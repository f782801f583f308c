"""Custom Keras layers of keras-ehrnet (registered, serialisable)."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="keras_ehrnet")
class NearestUpsampling2D(keras.layers.Layer):
    """Nearest-neighbour upsampling by an integer factor, as one resize op.

    Same values as PyTorch's `nn.Upsample(scale_factor=f, mode="nearest")` and
    Keras' `UpSampling2D(f)` (output pixel i reads input pixel i // f), but it
    lowers to a single resize op in TensorFlow, TFLite and ONNX instead of
    Keras' repeat (reshape/tile) chains, which cost time in every runtime.
    On JAX and PyTorch it is two `keras.ops.repeat`s (the same values by definition).
    """

    def __init__(self, factor: int = 2, **kwargs):
        super().__init__(**kwargs)
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor!r}")
        self.factor = factor

    def call(self, inputs):
        f = self.factor
        if keras.backend.backend() != "tensorflow":
            return keras.ops.repeat(keras.ops.repeat(inputs, f, axis=1), f, axis=2)
        import tensorflow as tf

        h, w = inputs.shape[1], inputs.shape[2]
        if h is not None and w is not None:
            size = (h * f, w * f)
        else:
            size = tf.shape(inputs)[1:3] * f
        # half_pixel_centers (TF2's default): floor((i + 0.5) / f) == i // f for integer f.
        return tf.image.resize(inputs, size, method="nearest")

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        f = self.factor
        return (b, None if h is None else h * f, None if w is None else w * f, c)

    def get_config(self) -> dict:
        return {**super().get_config(), "factor": self.factor}
