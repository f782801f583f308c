"""Multiply-add counting for any Keras model, from its traced TensorFlow graph."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# Op types counted, and how: MACs = output elements × reduction length.
_CONV_OPS = ("Conv2D", "DepthwiseConv2dNative", "Conv2DBackpropInput", "MatMul", "BatchMatMulV2")


def count_macs(model, input_size: int | tuple[int, int], *, by_kind: bool = False):
    """Multiply-adds of convolutions, depthwise and transposed convolutions and dense layers.

    Counted at batch 1 for an input of `input_size` (int or (H, W)), the way the
    reference counts them: a conv's output elements × k·k·C_in/groups; a transposed
    conv's input elements × k·k·C_out. With `by_kind=True` returns a dict with
    "conv2d", "conv2d_depthwise", "conv_transpose2d", "dense" and "total".
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    spec = tf.TensorSpec([1, h, w, 3], tf.float32)
    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(spec).graph
    kinds = {"conv2d": 0, "conv2d_depthwise": 0, "conv_transpose2d": 0, "dense": 0}
    for op in graph.get_operations():
        if op.type not in _CONV_OPS:
            continue
        out = op.outputs[0].shape
        if op.type == "Conv2D":
            kh, kw, cin, _ = op.inputs[1].shape
            kinds["conv2d"] += int(np.prod(out)) * kh * kw * cin
        elif op.type == "DepthwiseConv2dNative":
            kh, kw, _, _ = op.inputs[1].shape
            kinds["conv2d_depthwise"] += int(np.prod(out)) * kh * kw
        elif op.type == "Conv2DBackpropInput":
            kh, kw, cout, _ = op.inputs[1].shape
            x = op.inputs[2].shape  # the transposed conv's input
            kinds["conv_transpose2d"] += int(np.prod(x)) * kh * kw * cout
        else:
            a, b = op.inputs[0].shape, op.inputs[1].shape
            transpose_a = op.get_attr("transpose_a") if op.type == "MatMul" else op.get_attr("adj_x")
            k = a[-2] if transpose_a else a[-1]
            kinds["dense"] += int(np.prod(out)) * int(k)
            del b
    kinds["total"] = sum(kinds.values())
    return kinds if by_kind else kinds["total"]
