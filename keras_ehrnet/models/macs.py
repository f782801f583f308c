"""Multiply-add counting for any Keras model, from its layer graph (any Keras backend)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

KINDS = ("conv2d", "conv2d_depthwise", "conv_transpose2d", "dense")


def _is_graph(op) -> bool:
    """A functional model (or any Keras Function): a graph of layers to walk through."""
    return hasattr(op, "_run_through_graph") and hasattr(op, "_nodes_by_depth")


def _walk_specs(graph, inputs, record: Callable) -> Any:
    """Run the layer graph on symbolic tensors; `record(layer, inputs, output)` at every layer call."""

    def operation_fn(op):
        def call(*args, **kwargs):
            if _is_graph(op):
                return _walk_specs(op, args[0], record)
            kwargs.pop("training", None)
            out = op.compute_output_spec(*args, **kwargs)
            record(op, args, out)
            return out

        return call

    return graph._run_through_graph(inputs, operation_fn=operation_fn)


def _layer_macs(layer, in_shape: tuple, out_shape: tuple) -> tuple[str, int] | None:
    """(kind, MACs) of one call of a counted layer, None for the others."""
    out = int(np.prod(out_shape))
    # Subclasses first: DepthwiseConv2D and Conv2DTranspose are not Conv2D subclasses in Keras 3,
    # but test them before Conv2D anyway so that the order never matters.
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return "conv2d_depthwise", out * kh * kw
    if isinstance(layer, keras.layers.Conv2DTranspose):
        kh, kw = layer.kernel_size
        return "conv_transpose2d", int(np.prod(in_shape)) * kh * kw * layer.filters
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        return "conv2d", out * kh * kw * (in_shape[-1] // layer.groups)
    if isinstance(layer, keras.layers.Dense):
        return "dense", out * int(in_shape[-1])
    return None


def count_macs(model, input_size: int | tuple[int, int], *, by_kind: bool = False):
    """Multiply-adds of convolutions, depthwise and transposed convolutions and dense layers.

    Counted at batch 1 for an input of `input_size` (int or (H, W)), the way the
    reference counts them: a conv's output elements × k·k·C_in/groups; a transposed
    conv's input elements × k·k·C_out. With `by_kind=True` returns a dict with
    "conv2d", "conv2d_depthwise", "conv_transpose2d", "dense" and "total".
    The shapes come from walking the Keras layer graph on symbolic tensors (no backend graph
    is traced, so it works on TensorFlow, JAX and PyTorch alike); it equals the count from
    TensorFlow's traced graph for every level (tests/test_backends.py).
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    kinds = dict.fromkeys(KINDS, 0)

    def record(layer, args, out) -> None:
        inputs = keras.tree.flatten(args)
        counted = _layer_macs(layer, tuple(inputs[0].shape), tuple(keras.tree.flatten(out)[0].shape))
        if counted:
            kinds[counted[0]] += counted[1]

    _walk_specs(model, keras.KerasTensor((1, h, w, 3), dtype="float32"), record)
    kinds["total"] = sum(kinds.values())
    return kinds if by_kind else kinds["total"]
