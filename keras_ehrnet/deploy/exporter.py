"""The one export entry point: `export(model, format, out, precision=...)` and its option checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keras_ehrnet.deploy.common import (
    DEFAULT_CALIBRATION_IMAGES,
    list_images,
    resolve_size,
)
from keras_ehrnet.fileio import check_writable
from keras_ehrnet.inference.decoding import DecodeConfig
from keras_ehrnet.models.model import load_keras_model

FORMATS = ("savedmodel", "tflite", "onnx", "tftrt", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")
SUPPORTED_PRECISIONS: dict[str, tuple[str, ...]] = {
    "savedmodel": ("fp32",),
    "tflite": ("fp32", "fp16", "int8-dynamic", "int8"),
    "onnx": ("fp32",),
    "tftrt": ("fp32", "fp16", "int8"),
    "tensorrt": ("fp32", "fp16", "int8"),
}
# Formats whose artefact is exported at one input size.
FIXED_SIZE_FORMATS = ("tflite", "tftrt", "tensorrt")
# Formats whose artefact is a folder.
DIRECTORY_FORMATS = ("savedmodel", "tftrt")
_ADVICE = {
    "savedmodel": "for fp16/int8 use --format tflite, tftrt or tensorrt",
    "onnx": "for fp16/int8 on Jetson build a TensorRT engine from the fp32 ONNX (--format tensorrt, or trtexec --fp16/--int8)",
}


def check_options(format: str, precision: str, *, with_decoder: bool = False) -> None:
    """Refuse impossible format/precision/decoder combinations with a message that says what works."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}: expected one of {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    allowed = SUPPORTED_PRECISIONS[format]
    if precision not in allowed:
        advice = _ADVICE.get(format, "")
        raise ValueError(
            f"format {format} does not support precision {precision} (it supports {', '.join(allowed)})"
            + (f"; {advice}" if advice else "")
        )
    if with_decoder and format != "savedmodel":
        raise ValueError(
            f"--with-decoder is only for the SavedModel (TF ops in the graph); format {format} exports the network, "
            "decode its outputs with keras_ehrnet.inference.decoding"
        )


def default_output_path(format: str, precision: str, stem: str) -> Path:
    """A file name that says what the artefact is, e.g. model_fp16.tflite, model.onnx, model_savedmodel/."""
    suffix = {
        "savedmodel": "_savedmodel",
        "tflite": ".tflite",
        "onnx": ".onnx",
        "tftrt": "_tftrt",
        "tensorrt": ".engine",
    }
    tag = "" if precision == "fp32" and format in ("savedmodel", "onnx") else f"_{precision}"
    return Path(f"{stem}{tag}{suffix[format]}")


def _load_model(model: Any) -> Any:
    import keras

    if isinstance(model, keras.Model):
        return model
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"Keras model not found: {path}")
    if path.suffix != ".keras":
        raise ValueError(f"expected a .keras model file (saved with model.save), got {path}")
    return load_keras_model(path)


def export(
    model: Any,
    format: str,
    out: str | Path,
    *,
    precision: str = "fp32",
    input_size: int | tuple[int, int] | None = None,
    calibration_images: str | Path | None = None,
    num_calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    float_heads: bool = False,
    with_decoder: bool = False,
    decoder_config: DecodeConfig | None = None,
    opset: int = 17,
    max_batch: int = 1,
    progress: bool = True,
) -> Path:
    """Export `model` (keras.Model or .keras path) to `format` at `out`; returns the artefact's path.

    `input_size` (R or (H, W), multiples of 32) fixes the input size; without
    it the SavedModel and ONNX keep H and W dynamic and the fixed-size formats
    use the level's native resolution. `calibration_images` is a folder of real
    images (int8); `float_heads` keeps TFLite int8's two output convolutions in float.
    `with_decoder` adds the in-graph pose decoder (SavedModel).
    Raises ValueError for impossible combinations and RuntimeUnavailableError
    where the runtime (TF-TRT, TensorRT) is missing, naming the alternative.
    """
    check_options(format, precision, with_decoder=with_decoder)
    if float_heads and (format, precision) != ("tflite", "int8"):
        raise ValueError(f"float heads apply to TFLite int8 only, not {format} {precision}")
    # an output that cannot be written fails now, not after the conversion
    check_writable(out, kind="dir" if format in DIRECTORY_FORMATS else "file", what="--out")
    if format == "tftrt":
        from keras_ehrnet.deploy.tftrt import require_tftrt

        require_tftrt()  # before any slow work
    if calibration_images is not None:
        list_images(calibration_images)  # a missing or empty folder fails before any slow work
    model = _load_model(model)
    size = resolve_size(model, input_size, fixed=format in FIXED_SIZE_FORMATS)
    out = Path(out)
    if format == "savedmodel":
        from keras_ehrnet.deploy.savedmodel import export_savedmodel

        return export_savedmodel(model, out, size, with_decoder=with_decoder, decoder_config=decoder_config)
    if format == "tflite":
        from keras_ehrnet.deploy.tflite import export_tflite

        return export_tflite(
            model,
            out,
            size,
            precision,
            calibration_dir=calibration_images,
            num_calibration_images=num_calibration_images,
            float_heads=float_heads,
            progress=progress,
        )
    if format == "onnx":
        from keras_ehrnet.deploy.onnx import export_onnx

        return export_onnx(model, out, size, opset=opset)
    if format == "tftrt":
        from keras_ehrnet.deploy.tftrt import export_tftrt

        return export_tftrt(
            model,
            out,
            size,
            precision,
            calibration_dir=calibration_images,
            num_calibration_images=num_calibration_images,
            progress=progress,
        )
    from keras_ehrnet.deploy.tensorrt import export_tensorrt

    return export_tensorrt(
        model,
        out,
        size,
        precision,
        calibration_dir=calibration_images,
        num_calibration_images=num_calibration_images,
        max_batch=max_batch,
        progress=progress,
    )
