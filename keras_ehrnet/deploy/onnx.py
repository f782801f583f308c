"""ONNX through tf2onnx (Keras' `model.export(format="onnx")`), with an explicit input signature.

The graph takes `image` float32 [batch, H, W, 3] RGB 0..255 (NHWC, dynamic
batch; H and W dynamic too unless a size is given) and returns `quarter` and
`half`, named so in the file. Default opset 17 (what TensorRT 8.5+ on JetPack
5/6 and every current ONNX Runtime read).
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

from keras_ehrnet._tf import tf
from keras_ehrnet.deploy.artefact import INPUT_NAME
from keras_ehrnet.deploy.common import model_metadata
from keras_ehrnet.fileio import atomic_path
from keras_ehrnet.models.scaling import OUTPUT_NAMES

DEFAULT_OPSET = 17
MIN_OPSET = 17


def _rename(model_proto: Any, names: dict[str, str]) -> None:
    """Rename graph tensors (outputs) everywhere they occur."""
    graph = model_proto.graph
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    for value in list(graph.output) + list(graph.value_info):
        value.name = names.get(value.name, value.name)


def _name_dynamic_dims(model_proto: Any) -> None:
    """Give the free dimensions readable names: batch, height, width (and derived ones)."""
    labels = ("batch", "height", "width")
    for value in list(model_proto.graph.input) + list(model_proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        prefix = "" if value.name == INPUT_NAME else f"{value.name}_"
        for axis, dim in enumerate(dims[:3]):
            if not dim.HasField("dim_value"):
                dim.dim_param = labels[axis] if axis == 0 else prefix + labels[axis]


def export_onnx(
    model: Any,
    out: str | Path,
    size: tuple[int, int] | None,
    *,
    opset: int = DEFAULT_OPSET,
    metadata: dict | None = None,
) -> Path:
    """Write an .onnx file: `image` float32 [batch, H, W, 3] → `quarter`, `half`; checked with onnx.checker."""
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"ONNX opset must be at least {MIN_OPSET}, got {opset}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    h, w = size if size is not None else (None, None)
    signature = [tf.TensorSpec([None, h, w, 3], tf.float32, name=INPUT_NAME)]
    with tempfile.TemporaryDirectory(prefix="ehrnet-onnx-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", category=FutureWarning
            )  # np.object probe in Keras' tf2onnx patch
            model.export(
                str(raw), format="onnx", input_signature=signature, opset_version=opset, verbose=False
            )
        proto = onnx.load(str(raw))
    produced = [o.name for o in proto.graph.output]
    if len(produced) != 2:
        raise RuntimeError(f"tf2onnx produced {len(produced)} outputs, expected 2 (quarter, half)")
    _rename(proto, dict(zip(produced, OUTPUT_NAMES)))
    _name_dynamic_dims(proto)
    from keras_ehrnet.deploy.onnx_graph import simplify_onnx

    simplify_onnx(proto)  # exact rewrites that let ONNX Runtime fuse as it does the PyTorch export
    meta = model_metadata(model, format="onnx", input_size=list(size) if size else None, opset=opset)
    meta.update(metadata or {})
    meta.setdefault("runner_name", "onnx")
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(proto)
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    return out
