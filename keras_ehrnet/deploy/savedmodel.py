"""SavedModel for TF Serving: uint8 pixels or encoded images in, named outputs, optional in-graph decoder.

Signatures (all outputs named):

- `serving_default`: `images` uint8 [B, H, W, 3] RGB → `quarter`, `half` (float32);
- `serving_float`: the same with float32 pixels 0..255 (for TF-TRT and float clients);
- `serving_bytes`: `image_bytes` string [B] (JPEG/PNG) → `quarter`, `half` and `affine`
  [B, 2, 3] (original image pixels → network input pixels): each image is
  decoded and letterboxed (fit inside, centred, bilinear) to the export size;
- with the decoder, `people`: uint8 images → `keypoints` [B, P, J, 3] ((x, y, score)
  in input pixels), `scores` [B, P], `num_people` [B]; and `people_bytes`: encoded
  images → the same with keypoints in original image pixels.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import keras

from keras_ehrnet._tf import tf
from keras_ehrnet.deploy.artefact import INPUT_NAME, SAVEDMODEL_METADATA
from keras_ehrnet.deploy.common import decode_image_tf, letterbox_tf, model_metadata, native_size, write_json
from keras_ehrnet.fileio import atomic_path
from keras_ehrnet.inference.decoding import DecodeConfig
from keras_ehrnet.inference.tf_decoder import check_config, decode_people

SIGNATURES = ("serving_default", "serving_float", "serving_bytes")
DECODER_SIGNATURES = ("people", "people_bytes")


def _image_spec(size: tuple[int, int] | None, dtype: tf.DType, name: str = "images") -> tf.TensorSpec:
    h, w = size if size is not None else (None, None)
    return tf.TensorSpec([None, h, w, 3], dtype, name=name)


def _to_image_pixels(points: tf.Tensor, affine: tf.Tensor) -> tf.Tensor:
    """Map (x, y) [B, P, J, 2] from network input pixels back to image pixels (inverse letterbox)."""
    k = affine[:, 0, 0][:, None, None, None]
    offset = tf.stack([affine[:, 0, 2], affine[:, 1, 2]], axis=-1)[:, None, None, :]
    return (points - offset) / k


def build_serving_functions(
    model: Any,
    size: tuple[int, int] | None,
    *,
    with_decoder: bool = False,
    decoder_config: DecodeConfig | None = None,
) -> dict[str, tuple[Any, list[tf.TensorSpec]]]:
    """The SavedModel's endpoints as {name: (python function, input signature)}."""
    bytes_size = native_size(model, size)
    num_joints = int(model.outputs[1].shape[-1])
    decoder_config = decoder_config or DecodeConfig()
    if with_decoder:
        check_config(decoder_config)

    # One traced network shared by every endpoint (tracing the model per endpoint is slow).
    h, w = size if size is not None else (None, None)

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32)])
    def float_network(pixels):
        quarter, half = model(pixels, training=False)
        return quarter, half

    def network(pixels):
        return float_network(tf.cast(pixels, tf.float32))

    def decode_bytes(image_bytes):
        def one(data):
            return letterbox_tf(decode_image_tf(data), bytes_size)

        return tf.map_fn(
            one,
            image_bytes,
            fn_output_signature=(
                tf.TensorSpec([*bytes_size, 3], tf.uint8),
                tf.TensorSpec([2, 3], tf.float32),
            ),
        )

    def serve_uint8(images):
        quarter, half = network(images)
        return {"quarter": quarter, "half": half}

    def serve_float(images):
        quarter, half = network(images)
        return {"quarter": quarter, "half": half}

    def serve_bytes(image_bytes):
        pixels, affine = decode_bytes(image_bytes)
        quarter, half = network(pixels)
        return {"quarter": quarter, "half": half, "affine": affine}

    def people(images):
        quarter, half = network(images)
        return decode_people(quarter, half, num_joints, decoder_config, size=tf.shape(images)[1:3])

    def people_bytes(image_bytes):
        pixels, affine = decode_bytes(image_bytes)
        quarter, half = network(pixels)
        out = decode_people(quarter, half, num_joints, decoder_config, size=bytes_size)
        keypoints = out["keypoints"]
        xy = _to_image_pixels(keypoints[..., :2], affine)
        found = keypoints[..., 2:] > 0
        out["keypoints"] = tf.concat([tf.where(found, xy, 0.0), keypoints[..., 2:]], axis=-1)
        out["affine"] = affine
        return out

    functions = {
        "serving_default": (serve_uint8, [_image_spec(size, tf.uint8)]),
        "serving_float": (serve_float, [_image_spec(size, tf.float32)]),
        "serving_bytes": (serve_bytes, [tf.TensorSpec([None], tf.string, name="image_bytes")]),
    }
    if with_decoder:
        functions["people"] = (people, [_image_spec(size, tf.uint8)])
        functions["people_bytes"] = (people_bytes, [tf.TensorSpec([None], tf.string, name="image_bytes")])
    return functions


def export_savedmodel(
    model: Any,
    out: str | Path,
    size: tuple[int, int] | None,
    *,
    with_decoder: bool = False,
    decoder_config: DecodeConfig | None = None,
    float_default: bool = False,
) -> Path:
    """Write a SavedModel directory with the signatures above (and metadata in assets.extra/).

    `size` None keeps height and width dynamic (multiples of 32); the
    encoded-image signatures then letterbox to the level's native resolution.
    `float_default` makes `serving_default` take float32 (what TF-TRT and the
    TFLite converter start from).
    """
    out = Path(out)
    functions = build_serving_functions(model, size, with_decoder=with_decoder, decoder_config=decoder_config)
    if float_default:
        functions = {"serving_default": functions["serving_float"]}
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (fn, signature) in functions.items():
        archive.add_endpoint(name, fn, input_signature=signature)
    config = decoder_config or DecodeConfig()
    meta = model_metadata(
        model,
        format="savedmodel",
        runner_name="savedmodel",
        input_name=INPUT_NAME if float_default else "images",
        input_size=list(size) if size else None,
        bytes_input_size=list(native_size(model, size)),
        signatures=sorted(functions),
        decoder=dataclasses.asdict(config) if with_decoder else None,
    )
    with atomic_path(out) as tmp:  # a complete SavedModel folder or none
        archive.write_out(str(tmp), verbose=False)
        write_json(tmp / SAVEDMODEL_METADATA, meta)
    return out
