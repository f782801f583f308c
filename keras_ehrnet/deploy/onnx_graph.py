"""Exact clean-ups of the ONNX graph tf2onnx writes, so ONNX Runtime runs it as fast as a PyTorch export.

Measured op by op with ONNX Runtime's profiler (BENCHMARKS.md, "Our ONNX file against the
reference's"), tf2onnx's graph of EfficientHRNet differs from the authors' PyTorch export in
five places that cost time on a CPU:

- every nearest-neighbour Resize carries the deprecated `tf_half_pixel_for_nn` coordinate
  mode. ONNX Runtime's NCHWc layout pass only takes `asymmetric` nearest Resizes, so each of
  ours was run in plain NCHW with a layout reorder before and after it. For an integer scale s
  and nearest_mode floor the two modes pick the same source pixel, floor((x + ½)/s) = floor(x/s)
  for every integer x, so rewriting the attribute is exact (s is read from constant scales, or
  from sizes computed as the input's own shape times integer constants, in a dynamic graph);
- each squeeze-and-excitation branch reshapes [N, C, 1, 1] to [-1, C, 1, 1] twice: no-ops
  that still force a reorder out of the NCHWc layout;
- the BatchNorm after the final transposed convolution stays a Mul and an Add at half
  resolution (ONNX Runtime folds such pairs into Conv, not into ConvTranspose);
- the input normalisation (×1/255σ, −μ/σ) runs before the NHWC→NCHW transpose, where ONNX
  Runtime broadcasts its 3-vectors pixel by pixel (10 ms of 220 at H-4 on one thread); after
  the transpose the same arithmetic runs plane by plane;
- with a dynamic batch, shape inference loses the batch axis after each Resize, and ONNX
  Runtime's NCHWc pass then leaves 19 residual Adds (and their ReLUs) unfused at H-4.

Every rewrite keeps the arithmetic (the BatchNorm fold changes float rounding only, ≤ 1e-5).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np


def _consumers(graph: Any) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_str_attr(node: Any, name: str, value: str) -> None:
    from onnx import helper

    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


_SHAPE_PLUMBING = ("Cast", "Slice", "Gather", "Squeeze", "Unsqueeze", "Identity")


def _from_shape_of(name: str, data: str, producers: dict) -> bool:
    """Whether `name` is (a slice of) Shape(data), through casts, slices and gathers only."""
    node = producers.get(name)
    while node is not None and node.op_type in _SHAPE_PLUMBING:
        node = producers.get(node.input[0])
    return node is not None and node.op_type == "Shape" and node.input[0] == data


def _sizes_are_integer_multiples(resize: Any, producers: dict, inits: dict[str, np.ndarray]) -> bool:
    """A dynamic Resize's `sizes` = Concat of Shape(x) pieces, some times integer constants ≥ 1."""
    concat = producers.get(resize.input[3])
    if concat is None or concat.op_type != "Concat":
        return False
    data = resize.input[0]
    for part in concat.input:
        if _from_shape_of(part, data, producers):
            continue
        node = producers.get(part)
        while node is not None and node.op_type == "Cast":
            node = producers.get(node.input[0])
        if node is None or node.op_type != "Mul":
            return False
        consts = [inits[i] for i in node.input if i in inits]
        others = [i for i in node.input if i not in inits]
        if len(consts) != 1 or len(others) != 1 or not _from_shape_of(others[0], data, producers):
            return False
        k = consts[0]
        if k.size == 0 or np.any(k < 1) or np.any(k != np.round(k)):
            return False
    return True


def _integer_nearest_resizes(graph: Any, inits: dict[str, np.ndarray]) -> int:
    """`tf_half_pixel_for_nn` → `asymmetric` on nearest/floor Resizes by integer factors ≥ 1.

    The factor is read from constant `scales`, or, in a graph of dynamic size, from `sizes`
    computed as the input's own shape times integer constants.
    """
    producers = {o: n for n in graph.node for o in n.output}
    done = 0
    for node in graph.node:
        if node.op_type != "Resize" or len(node.input) < 3:
            continue
        mode = _attr(node, "coordinate_transformation_mode", b"half_pixel")
        if mode != b"tf_half_pixel_for_nn" or _attr(node, "mode", b"nearest") != b"nearest":
            continue
        if _attr(node, "nearest_mode", b"round_prefer_floor") != b"floor":
            continue
        scales = inits.get(node.input[2])
        if scales is not None and scales.size:
            if np.any(scales < 1) or np.any(scales != np.round(scales)):
                continue
        elif len(node.input) < 4 or not _sizes_are_integer_multiples(node, producers, inits):
            continue
        _set_str_attr(node, "coordinate_transformation_mode", "asymmetric")
        node.input[1] = ""  # roi is only read by tf_crop_and_resize
        done += 1
    return done


def _noop_reshapes(model: Any, inits: dict[str, np.ndarray]) -> int:
    """Drop Reshapes whose input already has the target shape (batch may be symbolic)."""
    import onnx

    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    drop = []
    for node in graph.node:
        if node.op_type != "Reshape" or node.output[0] in outputs:
            continue
        target = inits.get(node.input[1])
        shape = shapes.get(node.input[0])
        if target is None or shape is None or len(shape) != target.size:
            continue
        # -1 may only stand for the (symbolic) batch axis; every other axis must match exactly.
        same = all(
            (t == -1 and i == 0) or (s is not None and int(t) == s)
            for i, (t, s) in enumerate(zip(target, shape))
        )
        if same and list(target).count(-1) <= 1:
            rename[node.output[0]] = node.input[0]
            drop.append(node)
    for node in drop:
        graph.node.remove(node)
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
    return len(drop)


def _fold_affine_into_conv(graph: Any, inits: dict[str, np.ndarray]) -> int:
    """Conv or ConvTranspose → Mul(per-channel) → Add(per-channel) becomes one conv with bias.

    tf2onnx leaves a BatchNorm after a depthwise (grouped) convolution, and the affine after the
    transposed convolution, as Mul and Add over the layer's whole output: ONNX Runtime folds
    them when it loads the file, other runtimes (OpenVINO) may not. Exact up to float32 rounding."""
    from onnx import numpy_helper

    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    init_protos = {i.name: i for i in graph.initializer}
    uses = Counter(name for node in graph.node for name in node.input)
    done = 0
    for conv in [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]:
        transpose = conv.op_type == "ConvTranspose"
        if (transpose and int(_attr(conv, "group", 1)) != 1) or conv.input[1] not in inits:
            continue
        if uses[conv.input[1]] != 1 or (len(conv.input) > 2 and conv.input[2] and uses[conv.input[2]] != 1):
            continue  # a weight another node shares stays as it is
        chain = []
        out = conv.output[0]
        for op in ("Mul", "Add"):
            users = consumers.get(out, [])
            if len(users) != 1 or users[0].op_type != op or out in outputs:
                break
            user = users[0]
            other = [i for i in user.input if i != out]
            if len(other) != 1 or other[0] not in inits:
                break
            chain.append((user, inits[other[0]]))
            out = user.output[0]
        if not chain:
            continue
        # Conv weights are [C_out, C_in/group, kh, kw], ConvTranspose weights [C_in, C_out, kh, kw]
        weight = inits[conv.input[1]].astype(np.float64)
        axis = 1 if transpose else 0
        c_out = weight.shape[axis]
        bias = (
            inits[conv.input[2]].astype(np.float64)
            if len(conv.input) > 2 and conv.input[2]
            else np.zeros(c_out)
        )
        # per output channel in NCHW, or one number; a [C] constant would broadcast over the width
        channel_shapes = {(c_out, 1, 1), (1, c_out, 1, 1)}
        if any(tuple(value.shape) not in channel_shapes and value.size != 1 for _, value in chain):
            continue
        scale_shape = (1, -1, 1, 1) if transpose else (-1, 1, 1, 1)
        for user, value in chain:
            v = np.broadcast_to(value.astype(np.float64).reshape(-1), (c_out,))
            if user.op_type == "Mul":
                weight = weight * v.reshape(scale_shape)
                bias = bias * v
            else:
                bias = bias + v
        w_name, b_name = conv.input[1], f"{conv.name}__folded_bias"
        init_protos[w_name].CopyFrom(numpy_helper.from_array(weight.astype(np.float32), w_name))
        inits[w_name] = weight.astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(bias.astype(np.float32), b_name))
        if len(conv.input) > 2:
            conv.input[2] = b_name
        else:
            conv.input.append(b_name)
        last = chain[-1][0].output[0]
        for user, _ in chain:
            graph.node.remove(user)
        conv.output[0] = last
        done += 1
    return done


def _normalise_after_transpose(graph: Any, inits: dict[str, np.ndarray]) -> int:
    """input → Mul(c[3]) → Add(c[3]) → Transpose(NHWC→NCHW) becomes Transpose → Mul → Add in NCHW.

    ONNX Runtime broadcasts a 3-vector over the last axis element by element but a
    [1, 3, 1, 1] constant over whole channel planes, several times faster at full resolution;
    the arithmetic per pixel is the same.
    """
    from onnx import numpy_helper

    consumers = _consumers(graph)
    done = 0
    for inp in graph.input:
        chain = []
        name = inp.name
        for op in ("Mul", "Add", "Transpose"):
            users = consumers.get(name, [])
            if len(users) != 1 or users[0].op_type != op:
                break
            chain.append(users[0])
            name = users[0].output[0]
        if len(chain) != 3 or list(_attr(chain[2], "perm", [])) != [0, 3, 1, 2]:
            continue
        mul, add, transpose = chain
        consts = []
        for node, prev in ((mul, inp.name), (add, mul.output[0])):
            other = [i for i in node.input if i != prev]
            if len(other) != 1 or other[0] not in inits or inits[other[0]].size != 3:
                break
            consts.append(other[0])
        if len(consts) != 2:
            continue
        for const in consts:
            value = inits[const].reshape(1, 3, 1, 1)
            new = f"{const}__nchw"
            graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), new))
            for node in (mul, add):
                node.input[:] = [new if i == const else i for i in node.input]
        out = transpose.output[0]
        transpose.input[0] = inp.name
        transpose.output[0] = f"{inp.name}__nchw"
        mul.input[:] = [transpose.output[0] if i == inp.name else i for i in mul.input]
        add.output[0] = out
        # keep the node list topologically sorted: Transpose, Mul, Add
        for node in (transpose, mul, add):
            graph.node.remove(node)
        for k, node in enumerate((transpose, mul, add)):
            graph.node.insert(k, node)
        done += 1
    return done


def _name_batch_axis(model: Any) -> int:
    """Record every 4-D intermediate's shape with its leading axis named `batch`.

    ONNX shape inference gives each Resize output a fresh unknown batch dimension; ONNX
    Runtime then cannot prove that the two inputs of a residual Add have the same shape and
    leaves the Add (and the ReLU after it) outside the convolution. Every 4-D tensor of this
    network is batch-first, so naming that axis as the input's restores the fusion.
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    del model.graph.value_info[:]
    named = 0
    for value in inferred.graph.value_info:
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
            named += 1
        model.graph.value_info.append(value)
    return named


def _drop_unused_initializers(graph: Any) -> None:
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def simplify_onnx(model: Any) -> dict[str, int]:
    """Apply the exact rewrites above to an onnx ModelProto in place; returns what was changed."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    changes = Counter()
    changes["resize_asymmetric"] = _integer_nearest_resizes(model.graph, inits)
    changes["noop_reshape"] = _noop_reshapes(model, inits)
    changes["conv_affine_fold"] = _fold_affine_into_conv(model.graph, inits)
    changes["normalise_in_nchw"] = _normalise_after_transpose(model.graph, inits)
    _drop_unused_initializers(model.graph)
    changes["batch_axis_named"] = _name_batch_axis(model)
    return dict(changes)
