"""The compact EfficientNet backbone (B0, B-1 … B-4, any φ) and its classifier."""

from __future__ import annotations

import os

import keras
from keras import layers

from keras_ehrnet.models import blocks
from keras_ehrnet.models.scaling import (
    ENDPOINT_STAGES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EHRNetConfig,
    LevelLike,
    get_config,
)
from keras_ehrnet.weights.pretrained import load_backbone_weights, resolve_backbone_weights


def pixel_normalization(name: str = "normalize") -> layers.Layer:
    """RGB in [0, 255] → (x / 255 − mean) / std, in the graph, as one affine op."""
    return layers.Rescaling(
        scale=[1.0 / (255.0 * s) for s in IMAGENET_STD],
        offset=[-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)],
        name=name,
    )


def efficientnet_features(x, config: EHRNetConfig, opts: blocks.BlockOptions | None = None) -> list:
    """Stem and MBConv stages. Returns the stride 4/8/16/32 endpoints.

    Blocks are numbered like the reference's `features` list (stem = 0); the
    endpoints are the outputs of the 24-, 40-, 112- and 320-channel stages
    (before scaling), wherever those stages end at this depth. `opts`: the
    builders' options (default: the config's BatchNorm settings, not folded).
    """
    opts = opts or blocks.BlockOptions.from_config(config)
    x = blocks.conv_bn(
        x,
        config.stem_channels,
        3,
        "stem",
        opts,
        stride=2,
        pad=blocks.torch_style_pad(3, 2),
        activation="swish",
        kernel_initializer=blocks.he_fan_out(),
    )
    in_channels = config.stem_channels
    index = 1
    endpoints = []
    for stage_id, stage in enumerate(config.backbone_stages):
        for r in range(stage.repeats):
            x = blocks.mbconv_block(
                x,
                in_channels,
                stage.channels,
                expand_ratio=stage.expand_ratio,
                kernel_size=stage.kernel,
                stride=stage.stride if r == 0 else 1,
                drop_connect_rate=config.drop_connect_rate,
                se_ratio=config.se_ratio,
                name=f"block{index}",
                opts=opts,
            )
            in_channels = stage.channels
            index += 1
        if stage_id in ENDPOINT_STAGES:
            endpoints.append(x)
    return endpoints


def build_backbone(
    level_or_phi: LevelLike = "H0",
    weights: str | os.PathLike | None = None,
    *,
    input_size: int | tuple[int, int] | None = None,
) -> keras.Model:
    """The backbone alone: RGB pixels in [0, 255] → the stride 4, 8, 16 and 32 endpoints, in order.

    Layer names are those of `build_model`, so weights move between the two by name.
    `weights`: None (random, as `build_model`), "imagenet" (H0: Keras' EfficientNetB0 ImageNet
    weights, downloaded and cached by Keras) or a file (see `keras_ehrnet.weights.pretrained`); what was
    loaded is printed.
    """
    config = get_config(level_or_phi)
    if weights is not None:
        weights = resolve_backbone_weights(config, weights)  # fail fast, before building
    inputs = keras.Input(_input_shape(input_size, multiple=32), name="image")
    x = pixel_normalization()(inputs)
    endpoints = efficientnet_features(x, config)
    model = keras.Model(
        inputs, endpoints, name=f"efficientnet_backbone_{config.backbone_name}".replace("-", "m")
    )
    if weights is not None:
        print(load_backbone_weights(model, weights, config).summary())
    return model


def build_backbone_classifier(
    level: LevelLike = "B0",
    num_classes: int = 1000,
    input_size: int | tuple[int, int] | None = None,
    *,
    dropout_rate: float = 0.2,
) -> keras.Model:
    """Compact EfficientNet classifier for ImageNet/CIFAR pretraining (paper §4.1).

    `level` is "B0", "B-1" … "B-4" (or "H…" / φ: the same scaling). The feature
    layers have the same names as in `build_model`, so pretrained weights
    transfer by name. Input: RGB float32 in [0, 255]; output: logits.
    """
    config = get_config(level)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer ≥ 1, got {num_classes!r}.")
    shape = _input_shape(input_size, multiple=1)
    inputs = keras.Input(shape, name="image")
    x = pixel_normalization()(inputs)
    opts = blocks.BlockOptions.from_config(config)
    x = efficientnet_features(x, config, opts)[-1]
    x = blocks.conv_bn(
        x, config.head_channels, 1, "head", opts, activation="swish", kernel_initializer=blocks.he_fan_out()
    )
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(dropout_rate, name="head_dropout")(x)
    limit = 1.0 / num_classes**0.5
    x = layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.RandomUniform(-limit, limit),
        name="predictions",
    )(x)
    name = config.backbone_name
    return keras.Model(inputs, x, name=f"compact_efficientnet_{name}".replace("-", "m"))


def _input_shape(input_size, multiple: int) -> tuple:
    """(H, W, 3) from None, an int or (H, W); sizes must divide by `multiple`."""
    if input_size is None:
        return (None, None, 3)
    if isinstance(input_size, (int,)) and not isinstance(input_size, bool):
        hw = (input_size, input_size)
    elif isinstance(input_size, (tuple, list)) and len(input_size) == 2:
        hw = tuple(input_size)
    else:
        raise ValueError(f"input_size must be None, an int or (height, width), got {input_size!r}.")
    for v in hw:
        if isinstance(v, bool) or not isinstance(v, int) or v < multiple or v % multiple:
            raise ValueError(
                f"input_size {input_size!r}: each side must be a positive integer divisible by "
                f"{multiple} (got {v!r})."
            )
    return (hw[0], hw[1], 3)
