"""Small composable builders for the blocks of EfficientHRNet.

Each builder takes a symbolic tensor and a name prefix and returns the output
tensor. Layer names are stable: the weight importer (`weights_map`) relies on
them to pair every Keras weight with a tensor of the released PyTorch model.

Sizes come from the config (`EHRNetConfig`) and everything else a builder needs, BatchNorm
settings included, from a `BlockOptions` passed to it. Numerics follow the released code
(the config's BatchNorm ε = 1e-5 and PyTorch momentum 0.1, Keras 0.9); stride-2 convolutions pad explicitly, exactly as PyTorch does
(Keras "same" would pad bottom/right only); nearest-neighbour upsampling;
the 4×4 stride-2 transposed convolution with PyTorch padding 1 is Keras "same".
"""

from __future__ import annotations

import dataclasses

import keras
from keras import layers

from keras_ehrnet.models.layers import NearestUpsampling2D
from keras_ehrnet.models.scaling import HR_INITS, EHRNetConfig


def he_fan_out() -> keras.initializers.Initializer:
    """PyTorch's kaiming_normal_(mode="fan_out") for a regular convolution."""
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def he_fan_out_depthwise() -> keras.initializers.Initializer:
    """PyTorch's fan-out of a depthwise kernel [C, 1, k, k] is C·k·k, which is
    Keras' fan-in of the (k, k, C, 1) depthwise kernel."""
    return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")


def small_normal() -> keras.initializers.Initializer:
    """Normal(0, 0.001): the released code's init of the HR part and heads."""
    return keras.initializers.RandomNormal(stddev=0.001)


@dataclasses.dataclass(frozen=True)
class BlockOptions:
    """What every builder needs besides sizes, passed to it explicitly.

    `bn_epsilon`/`bn_momentum`: the config's BatchNorm settings (`from_config`).
    `hr_init`: initialisation of the convolutions followed by BatchNorm in the HR part and
    deconv. "released": N(0, 0.001), as the released code (which trains from an ImageNet
    backbone). "he": He fan-out, as the backbone. With BatchNorm after the conv the output
    ignores the kernel's scale, so Adam's steps of ~lr are relative changes of ~lr/|w|: 100 %
    per step for |w| ≈ 0.001, which makes training from scratch erratic until the norms grow.
    `fold_batchnorm`: build the inference twin, no BatchNorm layers and a bias on every conv
    that fed one (`keras_ehrnet.models.folding.fold_batchnorm` fills it with folded weights).
    """

    bn_epsilon: float
    bn_momentum: float
    hr_init: str = "released"
    fold_batchnorm: bool = False

    def __post_init__(self):
        if self.hr_init not in HR_INITS:
            raise ValueError(f"hr_init must be one of {HR_INITS}, got {self.hr_init!r}")

    @classmethod
    def from_config(
        cls, config: EHRNetConfig, *, hr_init: str = "released", fold_batchnorm: bool = False
    ) -> BlockOptions:
        return cls(config.bn_epsilon, config.bn_momentum, hr_init, bool(fold_batchnorm))

    def hr_kernel_initializer(self) -> keras.initializers.Initializer:
        """The kernel initializer of a conv + BatchNorm outside the backbone (see `hr_init`)."""
        return he_fan_out() if self.hr_init == "he" else small_normal()

    def conv_bias(self, use_bias: bool) -> bool:
        """A conv followed by BatchNorm needs a bias once the BatchNorm is folded into it."""
        return use_bias or self.fold_batchnorm

    def batch_norm(self, x, name: str):
        """BatchNorm with the config's settings, or nothing in the folded twin."""
        if self.fold_batchnorm:
            return x
        return layers.BatchNormalization(epsilon=self.bn_epsilon, momentum=self.bn_momentum, name=name)(x)


def torch_style_pad(kernel_size: int, stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding of the backbone's ZeroPad2d: p = k - s split as (p // 2, p - p // 2)."""
    p = max(kernel_size - stride, 0)
    return ((p // 2, p - p // 2), (p // 2, p - p // 2))


def conv_bn(
    x,
    filters: int,
    kernel_size: int,
    name: str,
    opts: BlockOptions,
    *,
    stride: int = 1,
    activation: str | None = "relu",
    use_bias: bool = False,
    pad: tuple[tuple[int, int], tuple[int, int]] | None = None,
    kernel_initializer=None,
):
    """Convolution + BatchNorm (+ activation).

    With `pad` given the convolution is "valid" after an explicit ZeroPadding2D,
    which is how PyTorch pads; otherwise stride 1 uses "same" (symmetric for odd
    kernels) and only k=1 is allowed with stride > 1.
    """
    if pad is not None:
        if any(pad[0]) or any(pad[1]):
            x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        if stride != 1 and kernel_size != 1:
            raise ValueError(f"{name}: a strided {kernel_size}x{kernel_size} conv needs explicit padding")
        padding = "same"
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=stride,
        padding=padding,
        use_bias=opts.conv_bias(use_bias),
        kernel_initializer=kernel_initializer or opts.hr_kernel_initializer(),
        bias_initializer="zeros",
        name=f"{name}_conv",
    )(x)
    x = opts.batch_norm(x, f"{name}_bn")
    if activation:
        x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


# --------------------------------------------------------------------------- backbone


def mbconv_block(
    x,
    in_channels: int,
    out_channels: int,
    *,
    expand_ratio: int,
    kernel_size: int,
    stride: int,
    drop_connect_rate: float,
    se_ratio: float,
    name: str,
    opts: BlockOptions,
):
    """EfficientNet MBConv: [1×1 expand] → k×k depthwise → squeeze-excite → 1×1 project.

    Swish everywhere, squeeze width int(in_channels · se_ratio) (the config's 0.25), identity
    shortcut with drop-connect when shapes allow, as in the released code.
    """
    hidden = in_channels * expand_ratio
    inputs = x
    if hidden != in_channels:
        x = layers.Conv2D(
            hidden,
            1,
            use_bias=opts.conv_bias(False),
            kernel_initializer=he_fan_out(),
            name=f"{name}_expand_conv",
        )(x)
        x = opts.batch_norm(x, f"{name}_expand_bn")
        x = layers.Activation("swish", name=f"{name}_expand_swish")(x)
    if stride == 1:
        padding = "same"  # symmetric for odd kernels, like ZeroPad2d((k-1)//2)
    else:
        x = layers.ZeroPadding2D(torch_style_pad(kernel_size, stride), name=f"{name}_dw_pad")(x)
        padding = "valid"
    x = layers.DepthwiseConv2D(
        kernel_size,
        strides=stride,
        padding=padding,
        use_bias=opts.conv_bias(False),
        depthwise_initializer=he_fan_out_depthwise(),
        name=f"{name}_dwconv",
    )(x)
    x = opts.batch_norm(x, f"{name}_dw_bn")
    x = layers.Activation("swish", name=f"{name}_dw_swish")(x)
    x = squeeze_excite(x, hidden, max(1, int(in_channels * se_ratio)), name=f"{name}_se")
    x = layers.Conv2D(
        out_channels,
        1,
        use_bias=opts.conv_bias(False),
        kernel_initializer=he_fan_out(),
        name=f"{name}_project_conv",
    )(x)
    x = opts.batch_norm(x, f"{name}_project_bn")
    if in_channels == out_channels and stride == 1:
        if drop_connect_rate > 0:
            x = layers.Dropout(drop_connect_rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(x)
        x = layers.Add(name=f"{name}_add")([inputs, x])
    return x


def squeeze_excite(x, channels: int, squeeze: int, name: str):
    """Squeeze-excite with swish in the bottleneck and a sigmoid gate."""
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    s = layers.Conv2D(squeeze, 1, activation="swish", kernel_initializer=he_fan_out(), name=f"{name}_reduce")(
        s
    )
    s = layers.Conv2D(
        channels, 1, activation="sigmoid", kernel_initializer=he_fan_out(), name=f"{name}_expand"
    )(s)
    return layers.Multiply(name=f"{name}_excite")([x, s])


# --------------------------------------------------------------------------- HR network


def basic_block(x, width: int, name: str, opts: BlockOptions):
    """ResNet basic block: 3×3 conv-BN-ReLU, 3×3 conv-BN, identity add, ReLU."""
    y = conv_bn(x, width, 3, f"{name}_1", opts, activation="relu")
    y = conv_bn(y, width, 3, f"{name}_2", opts, activation=None)
    y = layers.Add(name=f"{name}_add")([x, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def transition(x, width: int, name: str, opts: BlockOptions):
    """3×3 conv (with bias) + BN + ReLU that feeds a branch of the next stage."""
    return conv_bn(x, width, 3, name, opts, activation="relu", use_bias=True)


def hr_module(
    xs: list,
    widths: tuple[int, ...] | list[int],
    blocks_per_branch: int,
    name: str,
    opts: BlockOptions,
    *,
    multi_scale_output: bool = True,
) -> list:
    """One high-resolution module: parallel branches of basic blocks, then fusion.

    Output i sums every branch j brought to branch i's resolution and width:
    1×1 conv + BN + nearest upsampling from lower resolutions, chains of 3×3
    stride-2 conv + BN (ReLU between) from higher ones. With
    `multi_scale_output=False` only the highest-resolution output is formed.
    """
    n = len(xs)
    branches = []
    for b, x in enumerate(xs):
        for k in range(blocks_per_branch):
            x = basic_block(x, widths[b], f"{name}_branch{b}_block{k}", opts)
        branches.append(x)
    if n == 1:
        return branches
    outputs = []
    for i in range(n if multi_scale_output else 1):
        terms = []
        for j in range(n):
            if j == i:
                terms.append(branches[j])
            elif j > i:
                y = conv_bn(branches[j], widths[i], 1, f"{name}_fuse{i}_{j}", opts, activation=None)
                f = 2 ** (j - i)
                y = NearestUpsampling2D(f, name=f"{name}_fuse{i}_{j}_up")(y)
                terms.append(y)
            else:
                y = branches[j]
                steps = i - j
                for k in range(steps):
                    last = k == steps - 1
                    y = conv_bn(
                        y,
                        widths[i] if last else widths[j],
                        3,
                        f"{name}_fuse{i}_{j}_down{k}",
                        opts,
                        stride=2,
                        pad=((1, 1), (1, 1)),
                        activation=None if last else "relu",
                    )
                terms.append(y)
        y = layers.Add(name=f"{name}_fuse{i}_add")(terms)
        outputs.append(layers.Activation("relu", name=f"{name}_fuse{i}_relu")(y))
    return outputs
