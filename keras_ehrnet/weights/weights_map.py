"""One-to-one map between Keras weights and the released PyTorch state_dict.

Keras layer names (see `blocks`, `backbone`, `model`) translate to PyTorch
module paths by the rules below; layouts convert as

* Conv2d            [out, in, kh, kw]  → Conv2D kernel (kh, kw, in, out)
* depthwise Conv2d  [C, 1, kh, kw]     → DepthwiseConv2D kernel (kh, kw, C, 1)
* ConvTranspose2d   [in, out, kh, kw]  → Conv2DTranspose kernel (kh, kw, out, in)
* Linear            [out, in]          → Dense kernel (in, out)
* BatchNorm2d weight/bias/running_mean/running_var → gamma/beta/moving_mean/moving_variance
  (num_batches_tracked has no Keras counterpart and is only checked for presence).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import keras
import numpy as np

# Keras layer-name patterns → PyTorch module path (format strings over the groups).
_HR_RULES: list[tuple[str, str]] = [
    (r"stem_(conv|bn)", "features.0.{bn01}"),
    (r"trans(\d)_branch(\d)_(conv|bn)", "trans{0}_branch{1}.{bn01}"),
    (
        r"stage(\d)_module(\d+)_branch(\d+)_block(\d+)_(\d)_(conv|bn)",
        "stage{0}.{1}.branches.{2}.{3}.{convbn}{4}",
    ),
    (
        r"stage(\d)_module(\d+)_fuse(\d+)_(\d+)_down(\d+)_(conv|bn)",
        "stage{0}.{1}.fuse_layers.{2}.{3}.{4}.{bn01}",
    ),
    (r"stage(\d)_module(\d+)_fuse(\d+)_(\d+)_(conv|bn)", "stage{0}.{1}.fuse_layers.{2}.{3}.{bn01}"),
    (r"final_quarter", "final_layers.0"),
    (r"final_half", "final_layers.1"),
    (r"deconv_(conv|bn)", "deconv_layers.0.0.{bn01}"),
    (r"deconv_block(\d+)_(\d)_(conv|bn)", "deconv_layers.0.{plus1}.0.{convbn}{1}"),
    (r"predictions", "classifier.1"),
]

_BN_FIELDS = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


@dataclasses.dataclass(frozen=True)
class WeightPair:
    """A Keras variable, its PyTorch key and the layout change between them."""

    variable: keras.Variable
    torch_key: str
    to_keras: Callable[[np.ndarray], np.ndarray]
    to_torch_shape: Callable[[tuple], tuple]

    @property
    def keras_path(self) -> str:
        return self.variable.path


def _module_path(layer_name: str, layer_names: set[str], num_blocks: int) -> str | None:
    """PyTorch module path for a Keras layer, or None for weightless layers."""
    m = re.fullmatch(
        r"block(\d+)_(expand_conv|expand_bn|dwconv|dw_bn|se_reduce|se_expand|project_conv|project_bn)",
        layer_name,
    )
    if m:
        i, part = int(m.group(1)), m.group(2)
        e = 1 if f"block{i}_expand_conv" in layer_names else 0
        where = {
            "expand_conv": "conv.0.1",
            "expand_bn": "conv.0.2",
            "dwconv": f"conv.{e}.1",
            "dw_bn": f"conv.{e}.2",
            "se_reduce": f"conv.{e + 1}.se.1",
            "se_expand": f"conv.{e + 1}.se.3",
            "project_conv": f"conv.{e + 2}",
            "project_bn": f"conv.{e + 3}",
        }[part]
        return f"features.{i}.{where}"
    m = re.fullmatch(r"head_(conv|bn)", layer_name)
    if m:
        return f"features.{num_blocks}.{1 if m.group(1) == 'conv' else 2}"
    for pattern, template in _HR_RULES:
        m = re.fullmatch(pattern, layer_name)
        if m:
            g = m.groups()
            kind = g[-1] if g and g[-1] in ("conv", "bn") else None
            extra = {
                "bn01": {"conv": "0", "bn": "1"}.get(kind, ""),
                "convbn": kind or "",
                "plus1": str(int(g[0]) + 1) if g and g[0].isdigit() else "",
            }
            if template.startswith("features.0"):
                extra["bn01"] = {"conv": "1", "bn": "2"}[kind]
            return template.format(*g, **extra)
    return None


def weight_pairs(model: keras.Model) -> list[WeightPair]:
    """Every Keras weight of an EfficientHRNet or compact-EfficientNet model, paired.

    Raises ValueError for a weighted layer no rule covers (a naming bug).
    """
    names = {layer.name for layer in model.layers}
    num_blocks = 1 + max((int(m.group(1)) for n in names if (m := re.match(r"block(\d+)_", n))), default=0)
    pairs: list[WeightPair] = []
    for layer in model.layers:
        if not layer.weights:
            continue
        path = _module_path(layer.name, names, num_blocks)
        if path is None:
            raise ValueError(f"No PyTorch counterpart rule for Keras layer {layer.name!r}.")
        if isinstance(layer, keras.layers.BatchNormalization):
            for var in layer.weights:
                pairs.append(WeightPair(var, f"{path}.{_BN_FIELDS[var.name]}", _identity, _identity))
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            pairs.append(WeightPair(layer.kernel, f"{path}.weight", _dw_to_keras, _dw_to_torch_shape))
            if layer.use_bias:
                pairs.append(WeightPair(layer.bias, f"{path}.bias", _identity, _identity))
        elif isinstance(layer, (keras.layers.Conv2DTranspose, keras.layers.Conv2D)):
            pairs.append(WeightPair(layer.kernel, f"{path}.weight", _oihw_to_keras, _conv_to_torch_shape))
            if layer.use_bias:
                pairs.append(WeightPair(layer.bias, f"{path}.bias", _identity, _identity))
        elif isinstance(layer, keras.layers.Dense):
            pairs.append(WeightPair(layer.kernel, f"{path}.weight", _dense_to_keras, _dense_to_torch_shape))
            pairs.append(WeightPair(layer.bias, f"{path}.bias", _identity, _identity))
        else:
            raise ValueError(f"Unexpected weighted layer {layer.name!r} ({type(layer).__name__}).")
    return pairs


def batchnorm_counter_keys(model: keras.Model) -> list[str]:
    """The PyTorch `num_batches_tracked` keys that belong to the model's BatchNorms."""
    return [
        p.torch_key.rsplit(".", 1)[0] + ".num_batches_tracked"
        for p in weight_pairs(model)
        if p.torch_key.endswith(".running_mean")
    ]


def _identity(x):
    return x


def _oihw_to_keras(w: np.ndarray) -> np.ndarray:
    # Conv2d [out, in, kh, kw] → (kh, kw, in, out); ConvTranspose2d [in, out, kh, kw] → (kh, kw, out, in).
    return np.transpose(w, (2, 3, 1, 0))


def _conv_to_torch_shape(shape: tuple) -> tuple:
    kh, kw, a, b = shape
    return (b, a, kh, kw)


def _dw_to_keras(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 0, 1))


def _dw_to_torch_shape(shape: tuple) -> tuple:
    kh, kw, c, m = shape
    return (c * m, 1, kh, kw)


def _dense_to_keras(w: np.ndarray) -> np.ndarray:
    return np.transpose(w)


def _dense_to_torch_shape(shape: tuple) -> tuple:
    return (shape[1], shape[0])
