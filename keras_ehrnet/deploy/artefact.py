"""What every exported artefact shares: its input name, where its metadata lives, how its file is recognised.

Exporters write these and runtimes read them, so both import them from here (below both).
The output names are the model's own (`keras_ehrnet.models.scaling.OUTPUT_NAMES`).
"""

from __future__ import annotations

from pathlib import Path

INPUT_NAME = "image"
# Metadata file kept beside a SavedModel's graph (the TF Serving place for extra files).
SAVEDMODEL_METADATA = Path("assets.extra") / "keras_ehrnet.json"
TFLITE_MAGIC = b"TFL3"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


class RuntimeUnavailableError(RuntimeError):
    """A runtime or converter this artefact needs is not installed or not built in (e.g. TensorRT)."""


def engine_metadata_path(engine: str | Path) -> Path:
    """The JSON kept beside a TensorRT engine (precision, sizes, the ONNX it came from)."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")
