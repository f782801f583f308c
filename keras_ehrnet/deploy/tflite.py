"""TFLite / LiteRT flatbuffers in fp32, fp16, dynamic-range int8 and full-integer int8.

Converted from a SavedModel written by Keras' ExportArchive (the documented
Keras 3 route: converting a Keras 3 model's concrete function directly leaves
its variables unfrozen, and XNNPACK then silently returns NaN). Only builtin
ops: the file runs on any LiteRT runtime without the Flex delegate.

- fp32: float weights and activations;
- fp16: float16 weights (dequantised at load; half the size), float32 compute on CPU;
- int8-dynamic: int8 weights, float activations (no calibration);
- int8: full integer: int8 weights and activations, int8 input (pixels with
  the input tensor's scale and zero point) and int8 outputs; activation
  ranges are calibrated on real images. `float_heads=True` keeps the two 1×1
  output convolutions in float (float input and outputs, quantised inside): the quarter output holds heatmaps
  (0…1) and tags (a wider range) under one int8 scale, which coarsens the heatmap
  values the decoder refines joints from; on the quickstart model this halves
  int8's AP loss (BENCHMARKS §9.5).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from keras_ehrnet._tf import tf
from keras_ehrnet.deploy.common import DEFAULT_CALIBRATION_IMAGES, calibration_images
from keras_ehrnet.deploy.savedmodel import export_savedmodel
from keras_ehrnet.fileio import atomic_write_bytes

TFLITE_PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8")


def configure_converter(
    converter: Any,
    precision: str,
    representative: Any = None,
) -> Any:
    """Set a TFLiteConverter up for one precision (builtin ops only)."""
    if precision not in TFLITE_PRECISIONS:
        raise ValueError(f"TFLite precision must be one of {TFLITE_PRECISIONS}, got {precision!r}")
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision == "fp32":
        return converter
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        if representative is None:
            raise ValueError("full-integer int8 needs a representative dataset (calibration images)")
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter


def representative_dataset(
    calibration_dir: str | Path,
    size: tuple[int, int],
    count: int = DEFAULT_CALIBRATION_IMAGES,
    progress: bool = True,
) -> Callable[[], Iterator[list[np.ndarray]]]:
    """A TFLite representative dataset: real images letterboxed to `size` (read once, up front)."""
    images = list(calibration_images(calibration_dir, size, count, progress=progress))

    def generate():
        for image in images:
            yield [image[None].astype(np.float32)]

    return generate


def tflite_from_savedmodel(
    saved_model_dir: str | Path,
    out: str | Path,
    precision: str = "fp32",
    *,
    representative: Callable | None = None,
    signature: str = "serving_float",
) -> Path:
    """Convert one float32-input signature of a SavedModel (ours: `serving_float`) to a .tflite file.

    The signature must have a fixed height and width.
    """
    import tensorflow as tf

    saved_model_dir = Path(saved_model_dir)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[signature])
    configure_converter(converter, precision, representative)
    flatbuffer = converter.convert()
    return atomic_write_bytes(out, flatbuffer)


def export_tflite(
    model: Any,
    out: str | Path,
    size: tuple[int, int],
    precision: str = "fp32",
    *,
    calibration_dir: str | Path | None = None,
    num_calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    float_heads: bool = False,
    progress: bool = True,
) -> Path:
    """Write a .tflite file taking float32 (int8 for full-integer) RGB pixels [B, H, W, 3] at `size`.

    `float_heads` (int8 only): the two output convolutions stay in float, the rest int8."""
    if precision not in TFLITE_PRECISIONS:
        raise ValueError(f"TFLite precision must be one of {TFLITE_PRECISIONS}, got {precision!r}")
    if float_heads and precision != "int8":
        raise ValueError(f"float_heads applies to full-integer int8 only, not {precision}")
    representative = None
    if precision == "int8":
        if calibration_dir is None:
            raise ValueError(
                "TFLite full-integer int8 needs real calibration images: pass calibration_images / "
                "--calibration-images DIR (or use int8-dynamic, which needs none)"
            )
        # Read (and check) the images before the slow conversion starts.
        representative = representative_dataset(calibration_dir, size, num_calibration_images, progress)
    with tempfile.TemporaryDirectory(prefix="ehrnet-tflite-") as tmp:
        export_savedmodel(model, tmp, size, float_default=True)
        if float_heads:
            return atomic_write_bytes(out, int8_with_float_heads(tmp, representative))
        return tflite_from_savedmodel(
            tmp, out, precision, representative=representative, signature="serving_default"
        )


def int8_with_float_heads(
    saved_model_dir: str | Path, representative: Callable, signature: str = "serving_default"
) -> bytes:
    """Full-integer int8 with the model's output convolutions left in float, as a flatbuffer.

    TFLite names the tensors that the output convolutions write after the signature's outputs,
    so they are found by output index in a float conversion and kept in float through the
    QuantizationDebugger's deny list (TFLite's documented route to selective quantisation)."""
    import tensorflow as tf

    def converter() -> Any:
        return tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[signature])

    float_model = tf.lite.Interpreter(model_content=configure_converter(converter(), "fp32").convert())
    heads = [d["name"] for d in float_model.get_output_details()]
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=heads)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=configure_converter(converter(), "int8", representative),
        debug_dataset=representative,
        debug_options=options,
    )
    return debugger.get_nondebug_quantized_model()
