"""TF-TRT: a SavedModel whose subgraphs run as TensorRT engines (FP32, FP16, INT8 with calibration).

Needs a TensorFlow build linked against TensorRT (NVIDIA's NGC containers,
JetPack's TensorFlow wheel). PyPI TensorFlow ≥ 2.18 is built without it; there
we stop with a clear error that points to the ONNX → TensorRT route, which
needs only the TensorRT that JetPack ships.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from keras_ehrnet.export.common import (
    DEFAULT_CALIBRATION_IMAGES,
    calibration_images,
    model_metadata,
    write_json,
)
from keras_ehrnet.export.savedmodel import export_savedmodel
from keras_ehrnet.runtimes import SAVEDMODEL_METADATA, RuntimeUnavailableError

TFTRT_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_BYTES = 1 << 30


def tftrt_unavailable_reason() -> str | None:
    """None if this TensorFlow can run TF-TRT, else why not (one sentence)."""
    info = tf.sysconfig.get_build_info()
    if not info.get("is_tensorrt_build", False):
        return (
            f"this TensorFlow build (tensorflow {tf.__version__}) has no TensorRT "
            "(tf.sysconfig.get_build_info()['is_tensorrt_build'] is False; PyPI wheels since 2.18 are built without it)"
        )
    try:
        from tensorflow.python.compiler.tensorrt import trt_convert  # noqa: F401
    except ImportError as err:  # pragma: no cover - TensorRT builds only
        return f"TensorFlow's TF-TRT converter cannot be imported: {err}"
    return None


def require_tftrt() -> None:
    """Raise RuntimeUnavailableError (with the ONNX → TensorRT alternative) where TF-TRT cannot run."""
    reason = tftrt_unavailable_reason()
    if reason:
        raise RuntimeUnavailableError(
            f"TF-TRT is not available: {reason}. Use TensorFlow from NVIDIA (NGC container or JetPack wheel), "
            "or take the ONNX → TensorRT route, which needs only TensorRT: "
            "`python -m conversion --model M.keras --format tensorrt --precision fp16 --out model.engine` "
            "(or `--format onnx` here, then `trtexec --onnx=model.onnx --saveEngine=model.engine --fp16` on the Jetson)."
        )


def export_tftrt(
    model: Any,
    out: str | Path,
    size: tuple[int, int],
    precision: str = "fp16",
    *,
    calibration_dir: str | Path | None = None,
    num_calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    max_workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    build: bool = True,
    progress: bool = True,
) -> Path:
    """Convert with TrtGraphConverterV2; `serving_default` takes float32 pixels [B, H, W, 3] at `size`.

    `build` pre-builds the engines for batch 1 so the first request is not slow.
    """
    if precision not in TFTRT_PRECISIONS:
        raise ValueError(f"TF-TRT precision must be one of {TFTRT_PRECISIONS}, got {precision!r}")
    if precision == "int8" and calibration_dir is None:
        raise ValueError(
            "TF-TRT INT8 needs real calibration images: pass calibration_images / --calibration-images DIR"
        )
    require_tftrt()
    from tensorflow.python.compiler.tensorrt import trt_convert as trt

    images = None
    if precision == "int8":
        images = list(calibration_images(calibration_dir, size, num_calibration_images, progress=progress))
    out = Path(out)
    mode = {
        "fp32": trt.TrtPrecisionMode.FP32,
        "fp16": trt.TrtPrecisionMode.FP16,
        "int8": trt.TrtPrecisionMode.INT8,
    }
    with tempfile.TemporaryDirectory(prefix="ehrnet-tftrt-") as tmp:
        export_savedmodel(model, tmp, size, float_default=True)
        converter = trt.TrtGraphConverterV2(
            input_saved_model_dir=tmp,
            precision_mode=mode[precision],
            max_workspace_size_bytes=max_workspace_bytes,
            use_calibration=precision == "int8",
        )
        if images is not None:
            converter.convert(calibration_input_fn=lambda: ((image[None],) for image in images))
        else:
            converter.convert()
        if build:
            converter.build(input_fn=lambda: iter([(np.zeros((1, *size, 3), np.float32),)]))
        converter.save(str(out))
    write_json(
        out / SAVEDMODEL_METADATA,
        model_metadata(
            model,
            format="tftrt",
            precision=precision,
            runner_name=f"tftrt-{precision}",
            input_size=list(size),
        ),
    )
    return out
