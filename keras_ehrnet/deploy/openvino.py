"""OpenVINO on the CPU: our ONNX file converted to OpenVINO IR (model.xml + model.bin), and its runner.

    from keras_ehrnet.deploy.openvino import export_openvino
    export_openvino("model.onnx", "model_openvino.xml")      # fp32 weights, no compression
    runner = keras_ehrnet.deploy.runtimes.load_runner("model_openvino.xml")   # OpenVINORunner

OpenVINO is optional (`pip install openvino`, about 60 MB). Conversion reads our ONNX file
(keras_ehrnet.deploy.onnx) rather than the SavedModel: one graph, already cleaned up for CPU
runtimes. The runner (`OpenVINORunner` in keras_ehrnet.deploy.runtimes) compiles for the CPU with `INFERENCE_NUM_THREADS` and f32 inference
precision (OpenVINO would otherwise pick bf16 on CPUs with AMX, and its outputs would drift
from the model's by about 1e-2). It imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from keras_ehrnet.deploy.artefact import RuntimeUnavailableError
from keras_ehrnet.fileio import atomic_path

METADATA_SECTION = "keras_ehrnet"


def import_openvino() -> Any:
    """The openvino module, or RuntimeUnavailableError saying how to install it."""
    try:
        import openvino as ov
    except ImportError:
        raise RuntimeUnavailableError(
            "OpenVINO is not installed: pip install openvino (CPU only, about 60 MB)"
        ) from None
    return ov


def export_openvino(onnx_path: str | Path, out: str | Path) -> Path:
    """Convert our .onnx file to OpenVINO IR at `out` (.xml, with its .bin beside); fp32 weights kept."""
    ov = import_openvino()
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
