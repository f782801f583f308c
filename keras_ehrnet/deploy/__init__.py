"""Deploying EfficientHRNet: export it for deployment: SavedModel (TF Serving), TFLite/LiteRT, ONNX, TF-TRT, TensorRT.

`export(model, format, out, precision=...)` is the one entry point (and what
`python -m conversion` calls). Every artefact takes the Keras model's input
(RGB pixels 0..255, NHWC; uint8 for the SavedModel's default signature) and
returns its two outputs `quarter` and `half`; `keras_ehrnet.deploy.runtimes.load_runner`
runs any of them. Formats and precisions:

| format     | precisions                        | input size                   |
|------------|-----------------------------------|------------------------------|
| savedmodel | fp32 (+ decoder signatures)       | dynamic unless given         |
| tflite     | fp32, fp16, int8-dynamic, int8    | fixed (default: native R)    |
| onnx       | fp32                              | dynamic unless given         |
| tftrt      | fp32, fp16, int8                  | fixed (TensorRT TF builds)   |
| tensorrt   | fp32, fp16, int8                  | fixed (TensorRT Python API)  |

int8 means full-integer with calibration on real images (`calibration_images`);
int8-dynamic (TFLite only) quantises the weights and needs no images.

The exporters and their shared helpers need TensorFlow; they are imported on first use (PEP 562),
so `load_runner` (and the Predictor on a Keras model) works on JAX or PyTorch without it.
"""

import importlib

from keras_ehrnet.deploy.artefact import RuntimeUnavailableError
from keras_ehrnet.deploy.runtimes import load_runner

_LAZY = {
    **dict.fromkeys(
        (
            "DEFAULT_CALIBRATION_IMAGES",
            "calibration_images",
            "collect_skipped",
            "letterbox",
            "letterbox_tf",
            "list_images",
            "read_image",
        ),
        "common",
    ),
    **dict.fromkeys(
        (
            "DIRECTORY_FORMATS",
            "FORMATS",
            "PRECISIONS",
            "SUPPORTED_PRECISIONS",
            "check_options",
            "default_output_path",
            "export",
        ),
        "exporter",
    ),
}


def __getattr__(name: str):
    """The TensorFlow-side names, imported on first use (one line naming the part if TF is missing)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'keras_ehrnet.deploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"keras_ehrnet.deploy.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_CALIBRATION_IMAGES",
    "DIRECTORY_FORMATS",
    "FORMATS",
    "PRECISIONS",
    "SUPPORTED_PRECISIONS",
    "RuntimeUnavailableError",
    "calibration_images",
    "check_options",
    "collect_skipped",
    "default_output_path",
    "export",
    "letterbox",
    "letterbox_tf",
    "list_images",
    "load_runner",
    "read_image",
]
