"""EfficientHRNet as a Keras 3 functional model."""

from __future__ import annotations

import os
from pathlib import Path

import keras
from keras import layers

from keras_ehrnet.fileio import check_keras_archive, one_line
from keras_ehrnet.models import blocks
from keras_ehrnet.models.backbone import _input_shape, efficientnet_features, pixel_normalization
from keras_ehrnet.models.scaling import DROP_CONNECT_RATE, OUTPUT_NAMES, EHRNetConfig, LevelLike, get_config
from keras_ehrnet.weights.pretrained import load_backbone_weights, resolve_backbone_weights


def _build_graph(config: EHRNetConfig, input_size, opts: blocks.BlockOptions):
    inputs = keras.Input(_input_shape(input_size, multiple=32), name="image")
    x = pixel_normalization()(inputs)
    c4, c8, c16, c32 = efficientnet_features(x, config, opts)
    w = config.hr_widths
    m2, m3, m4 = config.modules_per_stage
    nb = config.blocks_per_branch

    xs = [
        blocks.transition(c4, w[0], "trans1_branch1", opts),
        blocks.transition(c8, w[1], "trans1_branch2", opts),
    ]
    for m in range(m2):
        xs = blocks.hr_module(xs, w[:2], nb, f"stage2_module{m}", opts)
    xs = [blocks.transition(t, w[b], f"trans2_branch{b + 1}", opts) for b, t in enumerate(xs)]
    xs.append(blocks.transition(c16, w[2], "trans2_branch3", opts))
    for m in range(m3):
        xs = blocks.hr_module(xs, w[:3], nb, f"stage3_module{m}", opts)
    xs = [blocks.transition(t, w[b], f"trans3_branch{b + 1}", opts) for b, t in enumerate(xs)]
    xs.append(blocks.transition(c32, w[3], "trans3_branch4", opts))
    for m in range(m4):
        xs = blocks.hr_module(xs, w, nb, f"stage4_module{m}", opts, multi_scale_output=m < m4 - 1)
    features = xs[0]

    j = config.num_joints
    quarter = layers.Conv2D(
        j + config.tag_channels,
        1,
        kernel_initializer=blocks.small_normal(),
        name="final_quarter",
    )(features)
    x = layers.Concatenate(name="deconv_concat")([features, quarter])
    x = layers.Conv2DTranspose(
        config.deconv_width,
        4,
        strides=2,
        padding="same",
        use_bias=opts.conv_bias(False),
        kernel_initializer=opts.hr_kernel_initializer(),
        name="deconv_conv",
    )(x)
    x = opts.batch_norm(x, "deconv_bn")
    x = layers.Activation("relu", name="deconv_relu")(x)
    for k in range(config.deconv_blocks):
        x = blocks.basic_block(x, config.deconv_width, f"deconv_block{k}", opts)
    half = layers.Conv2D(j, 1, kernel_initializer=blocks.small_normal(), name="final_half")(x)
    # Float32 outputs whatever the compute dtype (mixed precision).
    quarter = layers.Activation("linear", dtype="float32", name=OUTPUT_NAMES[0])(quarter)
    half = layers.Activation("linear", dtype="float32", name=OUTPUT_NAMES[1])(half)
    return inputs, [quarter, half]


@keras.saving.register_keras_serializable(package="keras_ehrnet")
class EfficientHRNet(keras.Model):
    """EfficientHRNet H0 … H-4 (or any φ): RGB pixels in [0, 255] → heatmaps and tags.

    Outputs, in order: `quarter` (B, H/4, W/4, J heatmaps then J tags) and
    `half` (B, H/2, W/2, J heatmaps). `config` holds every size.

    `fold_batchnorm=True` builds the inference twin without BatchNorm layers (see
    `keras_ehrnet.models.folding.fold_batchnorm`, which fills it from a trained model).
    `drop_connect_rate` is the backbone's stochastic depth in training (the released 0.2 by
    default; 0 leaves the Dropout layers out, e.g. to overfit a small set). Inference ignores it.
    """

    def __init__(
        self,
        level: LevelLike = "H0",
        *,
        num_joints: int = 17,
        input_size: int | tuple[int, int] | None = None,
        tag_per_joint: bool = True,
        fold_batchnorm: bool = False,
        hr_init: str = "released",
        drop_connect_rate: float = DROP_CONNECT_RATE,
        **kwargs,
    ):
        config = get_config(
            level, num_joints=num_joints, tag_per_joint=tag_per_joint, drop_connect_rate=drop_connect_rate
        )
        opts = blocks.BlockOptions.from_config(config, hr_init=hr_init, fold_batchnorm=fold_batchnorm)
        inputs, outputs = _build_graph(config, input_size, opts)
        kwargs.setdefault("name", f"efficienthrnet_{config.name}")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.level = level if not isinstance(level, str) else config.name
        self.num_joints = num_joints
        self.input_size = tuple(input_size) if isinstance(input_size, (list, tuple)) else input_size
        self.tag_per_joint = tag_per_joint
        self.fold_batchnorm = bool(fold_batchnorm)
        self.hr_init = hr_init
        self.drop_connect_rate = config.drop_connect_rate
        self.config = config

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "level": self.level,
            "num_joints": self.num_joints,
            "input_size": self.input_size,
            "tag_per_joint": self.tag_per_joint,
            "fold_batchnorm": self.fold_batchnorm,
            "hr_init": self.hr_init,
            "drop_connect_rate": self.drop_connect_rate,
        }

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> EfficientHRNet:
        config = dict(config)
        if isinstance(config.get("input_size"), list):
            config["input_size"] = tuple(config["input_size"])
        return cls(**config)


def build_model(
    level: LevelLike = "H0",
    *,
    num_joints: int = 17,
    input_size: int | tuple[int, int] | None = None,
    tag_per_joint: bool = True,
    hr_init: str = "released",
    drop_connect_rate: float = DROP_CONNECT_RATE,
    backbone_weights: str | os.PathLike | None = None,
) -> EfficientHRNet:
    """Build EfficientHRNet for a level ("H0", "H-1" … "H-4") or a compound coefficient φ.

    `input_size=None` accepts any height and width divisible by 32; the level's
    native resolution R = 512 + 32φ is `model.config.input_size`. Weights are
    randomly initialised as in the released code; nothing is downloaded unless
    `backbone_weights="imagenet"`.
    `hr_init="he"` initialises the HR part's conv + BatchNorm pairs like the backbone's
    (He) instead of N(0, 0.001): faster training from scratch (see `blocks.BlockOptions`).
    `drop_connect_rate` sets the backbone's stochastic depth in training (released: 0.2).
    `backbone_weights`: "imagenet" (H0: Keras' EfficientNetB0, downloaded and cached by Keras)
    or a file (Keras' EfficientNetB0 weights for H0, the authors' compact B0 … B-4 `.pth` for
    any level) to start the backbone from ImageNet; the rest keeps its initialisation and a
    one-line report says what was loaded (see `keras_ehrnet.weights.pretrained`). With a pretrained
    backbone the released `hr_init` is the authors' recipe.
    """
    if backbone_weights is not None:
        backbone_weights = resolve_backbone_weights(get_config(level), backbone_weights)
    model = EfficientHRNet(
        level,
        num_joints=num_joints,
        input_size=input_size,
        tag_per_joint=tag_per_joint,
        hr_init=hr_init,
        drop_connect_rate=drop_connect_rate,
    )
    if backbone_weights is not None:
        print(load_backbone_weights(model, backbone_weights, model.config).summary())
    return model


def load_keras_model(path: str | os.PathLike) -> keras.Model:
    """A `.keras` file → its model, uncompiled; the package's layers are registered by this module.

    A file that is not a Keras model archive gets `check_keras_archive`'s one-line ValueError
    (where Keras would say "File not found"); one Keras cannot load, a ValueError naming it.
    """
    path = Path(path)
    check_keras_archive(path)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:
        raise ValueError(f"{path}: cannot load the Keras model: {one_line(err)}") from err
