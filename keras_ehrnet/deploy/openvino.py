"""OpenVINO on the CPU: our ONNX file converted to OpenVINO IR (model.xml + model.bin), and its runner.

    from keras_ehrnet.deploy.openvino import export_openvino
    export_openvino("model.onnx", "model_openvino.xml")      # fp32 weights, no compression
    runner = keras_ehrnet.deploy.runtimes.load_runner("model_openvino.xml")

OpenVINO is optional (`pip install openvino`, about 60 MB). Conversion reads our ONNX file
(keras_ehrnet.deploy.onnx) rather than the SavedModel: one graph, already cleaned up for CPU
runtimes. The runner compiles for the CPU with `INFERENCE_NUM_THREADS` and f32 inference
precision (OpenVINO would otherwise pick bf16 on CPUs with AMX, and its outputs would drift
from the model's by about 1e-2). It imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from keras_ehrnet.deploy.artefact import RuntimeUnavailableError
from keras_ehrnet.deploy.runtimes import Runner, order_outputs
from keras_ehrnet.models.scaling import OUTPUT_NAMES
from keras_ehrnet.threads import available_cores

METADATA_SECTION = "keras_ehrnet"


def _openvino() -> Any:
    try:
        import openvino as ov
    except ImportError:
        raise RuntimeUnavailableError(
            "OpenVINO is not installed: pip install openvino (CPU only, about 60 MB)"
        ) from None
    return ov


def export_openvino(onnx_path: str | Path, out: str | Path) -> Path:
    """Convert our .onnx file to OpenVINO IR at `out` (.xml, with its .bin beside); fp32 weights kept."""
    from keras_ehrnet.fileio import atomic_path

    ov = _openvino()
    onnx_path, out = Path(onnx_path), Path(out)
    if out.suffix != ".xml":
        raise ValueError(f"OpenVINO IR is written as a .xml file (with its .bin beside); got {out}")
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {onnx_path}")
    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    model = ov.convert_model(str(onnx_path))
    metadata["runner_name"] = "openvino"
    model.set_rt_info(json.dumps(metadata), [METADATA_SECTION, "metadata"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out.with_suffix(".bin")) as tmp_bin, atomic_path(out) as tmp_xml:
        # save_model names the .bin after the .xml: save under the temporary name, then move both
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        Path(tmp_xml).with_suffix(".bin").replace(tmp_bin)
    return out


class OpenVINORunner(Runner):
    """An OpenVINO IR (.xml) or ONNX file compiled for the CPU at `num_threads` threads, fp32."""

    def __init__(self, path: Path, *, num_threads: int | None = None):
        ov = _openvino()
        self.path = Path(path)
        self.num_threads = num_threads or available_cores()
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as err:  # OpenVINO raises its own RuntimeError subclasses
            from keras_ehrnet.fileio import one_line

            raise ValueError(f"{self.path} is not a valid OpenVINO/ONNX model: {one_line(err)}") from None
        if len(model.inputs) != 1 or len(model.outputs) != 2:
            raise ValueError(
                f"{self.path} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                "expected 1 image batch and 2 (quarter, half)"
            )
        self.metadata = self._metadata(model)
        self.name = "openvino"
        shape = model.inputs[0].get_partial_shape()
        h, w = shape[1], shape[2]
        self.fixed_input_size = (h.get_length(), w.get_length()) if h.is_static and w.is_static else None
        channels = [o.get_partial_shape()[-1] for o in model.outputs]
        static = [c.get_length() for c in channels if c.is_static]
        self.num_joints = min(static) if static else None
        self._output_names = [o.get_any_name() for o in model.outputs]
        config = {"INFERENCE_NUM_THREADS": self.num_threads, "INFERENCE_PRECISION_HINT": "f32"}
        self._compiled = core.compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()

    @staticmethod
    def _metadata(model: Any) -> dict:
        try:
            return json.loads(str(model.get_rt_info([METADATA_SECTION, "metadata"]).astype(str)))
        except Exception:  # no keras_ehrnet section: an IR converted elsewhere, or an ONNX file
            return {}

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self._request.infer({0: images})
        outs = [result[o] for o in self._compiled.outputs]
        names = self._output_names
        if all(n in names for n in OUTPUT_NAMES):
            return tuple(np.asarray(outs[names.index(n)]) for n in OUTPUT_NAMES)
        return order_outputs([np.asarray(o) for o in outs])
