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
"""

from keras_ehrnet._lazy import lazy_getattr

# module → the public names it defines; imported on first use, so that running an exported
# file (keras_ehrnet.deploy.runtimes, .openvino) does not import the exporters' TensorFlow
_HOMES = {
    "artefact": ("RuntimeUnavailableError",),
    "common": (
        "DEFAULT_CALIBRATION_IMAGES",
        "calibration_images",
        "collect_skipped",
        "letterbox",
        "letterbox_tf",
        "list_images",
        "read_image",
    ),
    "exporter": (
        "DIRECTORY_FORMATS",
        "FORMATS",
        "PRECISIONS",
        "SUPPORTED_PRECISIONS",
        "check_options",
        "default_output_path",
        "export",
    ),
    "runtimes": ("load_runner",),
}
__all__ = sorted(name for names in _HOMES.values() for name in names)
__getattr__ = lazy_getattr(__name__, _HOMES)
