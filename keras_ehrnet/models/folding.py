"""BatchNorm folding: an inference twin of a trained model with every BatchNorm merged into its conv.

In inference BatchNorm is a per-channel affine, y = s·x + t with s = γ/√(σ² + ε) and
t = β − s·μ, so it can be merged into the convolution before it: W' = s·W (per output
channel), b' = s·(b − μ) + β. The twin computes the same outputs (to float32 round-off)
with about half the graph nodes, which is what TensorFlow's executor pays for per op on
a CPU. TFLite and ONNX Runtime fold on their own; this brings the same to Keras,
SavedModels and TF Serving. The twin is for inference only: training it would train a
network without BatchNorm.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_ehrnet.models.model import EfficientHRNet


def fold_batchnorm(model: EfficientHRNet) -> EfficientHRNet:
    """Return a new EfficientHRNet without BatchNorm layers that computes what `model` computes."""
    if not isinstance(model, EfficientHRNet):
        raise ValueError(f"fold_batchnorm needs an EfficientHRNet, got {type(model).__name__}")
    if model.fold_batchnorm:
        return model
    twin = EfficientHRNet(
        model.level,
        num_joints=model.num_joints,
        input_size=model.input_size,
        tag_per_joint=model.tag_per_joint,
        fold_batchnorm=True,
        hr_init=model.hr_init,
        drop_connect_rate=model.drop_connect_rate,
        name=model.name,
    )
    bn_of_conv = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            producer = layer.input._keras_history.operation
            bn_of_conv[producer.name] = layer
    for layer in twin.layers:
        if not layer.weights:
            continue
        source = model.get_layer(layer.name)
        bn = bn_of_conv.get(layer.name)
        if bn is None:
            layer.set_weights(source.get_weights())
            continue
        kernel = source.kernel.numpy()
        bias = source.bias.numpy() if source.use_bias else 0.0
        gamma = bn.gamma.numpy() if bn.scale else 1.0
        beta = bn.beta.numpy() if bn.center else 0.0
        scale = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
        if isinstance(source, keras.layers.DepthwiseConv2D):
            folded = kernel * scale[None, None, :, None]
        elif isinstance(source, keras.layers.Conv2DTranspose):
            folded = kernel * scale[None, None, :, None]  # (kh, kw, out, in)
        else:
            folded = kernel * scale[None, None, None, :]
        layer.kernel.assign(folded.astype(np.float32))
        layer.bias.assign((scale * (bias - bn.moving_mean.numpy()) + beta).astype(np.float32))
    return twin
