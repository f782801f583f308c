"""TF-TRT: a SavedModel whose subgraphs run as TensorRT engines (FP32, FP16, INT8 with calibration).

TF-TRT exists in TensorFlow ≤ 2.17 only (2.18 dropped it), and needs the
TensorRT libraries that TensorFlow was built against at run time: NVIDIA's
NGC containers and JetPack's TensorFlow wheels bring them; PyPI's 2.17.1 (our
`requirements-tf217.txt`) is built against TensorRT 8.6 and loads
libnvinfer.so.8 if it is installed. Where TF-TRT cannot run we stop with one
sentence that says what is missing and how to install it, and point to the ONNX
→ TensorRT route, which needs only TensorRT (JetPack ships it).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from keras_ehrnet._tf import tf
from keras_ehrnet.deploy.artefact import SAVEDMODEL_METADATA, RuntimeUnavailableError
from keras_ehrnet.deploy.common import (
    DEFAULT_CALIBRATION_IMAGES,
    calibration_images,
    model_metadata,
    write_json,
)
from keras_ehrnet.deploy.savedmodel import export_savedmodel

TFTRT_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_BYTES = 1 << 30
# TrtGraphConverterV2 takes the precision as TrtPrecisionMode's string values.
PRECISION_MODES = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}
# The PyPI wheels of TensorRT 8.6 (libnvinfer.so.8, what PyPI's TensorFlow 2.16/2.17 were built against):
# `tensorrt==8.6.1.post1` installs tensorrt_libs and tensorrt_bindings 8.6.1 from NVIDIA's package index.
TENSORRT_PIP_PACKAGE = {8: "tensorrt==8.6.1.post1"}
ONNX_ROUTE = (
    "or take the ONNX → TensorRT route, which needs only TensorRT: "
    "`python -m conversion --model M.keras --format tensorrt --precision fp16 --out model.engine` "
    "(or `--format onnx` here, then `trtexec --onnx=model.onnx --saveEngine=model.engine --fp16` on the Jetson)"
)


def _version(v: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in v)


def tftrt_reason(
    tf_version: str,
    is_tensorrt_build: bool,
    linked: tuple[int, ...] | None = None,
    loaded: tuple[int, ...] | None = None,
) -> str | None:
    """Why TF-TRT cannot run with these facts (None if it can): one sentence that names the fix.

    `linked` is the TensorRT version TensorFlow was built against, `loaded` the
    one it could open at run time (None: libnvinfer was not found). TF-TRT
    needs the same major version as `linked` and at least `linked`.
    """
    if not is_tensorrt_build:
        return (
            f"this TensorFlow build (tensorflow {tf_version}) has no TensorRT "
            "(tf.sysconfig.get_build_info()['is_tensorrt_build'] is False; PyPI wheels since 2.18 are built without it): "
            "install TensorFlow 2.17 with `pip install -r requirements-tf217.txt` plus the TensorRT it was built "
            "against, or use NVIDIA's TensorFlow (NGC container, JetPack wheel)"
        )
    major = linked[0] if linked else None
    wanted = f"TensorRT {_version(linked)}" if linked else "TensorRT"
    if loaded is None:
        package = TENSORRT_PIP_PACKAGE.get(major)
        lib = f"libnvinfer.so.{major}" if major else "libnvinfer"
        step = (
            f"`pip install {package}` and put its libraries on the loader path: "
            "`export LD_LIBRARY_PATH=$(python -c 'import tensorrt_libs, os; print(os.path.dirname(tensorrt_libs.__file__))'):$LD_LIBRARY_PATH`"
            if package
            else f"install {wanted} and put {lib} on LD_LIBRARY_PATH"
        )
        return (
            f"tensorflow {tf_version} is built against {wanted} but cannot load its libraries "
            f"({lib}, libnvinfer_plugin.so.{major or 'N'}): {step} (on Jetson, JetPack's TensorRT and NVIDIA's "
            "TensorFlow wheel for that JetPack)"
        )
    if linked and (loaded[0] != linked[0] or tuple(loaded) < tuple(linked)):
        return (
            f"tensorflow {tf_version} is built against {wanted} but loaded TensorRT {_version(loaded)}; "
            f"TF-TRT needs TensorRT {linked[0]}.x at least {_version(linked)} on the loader path"
        )
    return None


def tftrt_unavailable_reason() -> str | None:
    """None if this TensorFlow can run TF-TRT, else why not and what to install (one sentence)."""
    info = tf.sysconfig.get_build_info()
    if not info.get("is_tensorrt_build", False):
        return tftrt_reason(tf.__version__, False)
    try:
        from tensorflow.compiler.tf2tensorrt import _pywrap_py_utils as trt_utils
        from tensorflow.python.compiler.tensorrt import trt_convert  # noqa: F401
    except ImportError as err:  # pragma: no cover - TensorRT builds ship both modules
        return f"TensorFlow's TF-TRT converter cannot be imported: {err}"
    linked = tuple(trt_utils.get_linked_tensorrt_version())
    # get_loaded_tensorrt_version aborts the process when libnvinfer is missing: ask is_tensorrt_enabled first.
    loaded = tuple(trt_utils.get_loaded_tensorrt_version()) if trt_utils.is_tensorrt_enabled() else None
    return tftrt_reason(tf.__version__, True, linked, loaded)


def require_tftrt() -> None:
    """Raise RuntimeUnavailableError (what to install, or the ONNX → TensorRT alternative) where TF-TRT cannot run."""
    reason = tftrt_unavailable_reason()
    if reason:
        raise RuntimeUnavailableError(f"TF-TRT is not available: {reason}; {ONNX_ROUTE}.")


def calibration_input_fn(images: list[np.ndarray]) -> Callable[[], Iterator[tuple[np.ndarray]]]:
    """TrtGraphConverterV2's `calibration_input_fn`: each real image as a batch of one, float32 [1, H, W, 3]."""

    def inputs() -> Iterator[tuple[np.ndarray]]:
        for image in images:
            yield (np.asarray(image, np.float32)[None],)

    return inputs


def build_input_fn(size: tuple[int, int]) -> Callable[[], Iterator[tuple[np.ndarray]]]:
    """TrtGraphConverterV2.build's `input_fn`: one float32 [1, H, W, 3] batch, the shape the engines are built for."""

    def inputs() -> Iterator[tuple[np.ndarray]]:
        yield (np.zeros((1, *size, 3), np.float32),)

    return inputs


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
    converter_class: Any = None,
) -> Path:
    """Convert with TrtGraphConverterV2; `serving_default` takes float32 pixels [B, H, W, 3] at `size`.

    INT8 calibrates on `num_calibration_images` real images from
    `calibration_dir` (letterboxed like at inference). `build` pre-builds the
    engines for batch 1 at `size` so the first request is not slow.
    `converter_class` replaces TensorFlow's TrtGraphConverterV2 (tests inject a
    stand-in to check the arguments, the calibration input and the artefact
    where TensorRT is absent); with it, the TensorRT check is skipped.
    """
    if precision not in TFTRT_PRECISIONS:
        raise ValueError(f"TF-TRT precision must be one of {TFTRT_PRECISIONS}, got {precision!r}")
    if precision == "int8" and calibration_dir is None:
        raise ValueError(
            "TF-TRT INT8 needs real calibration images: pass calibration_images / --calibration-images DIR"
        )
    if converter_class is None:
        require_tftrt()
        from tensorflow.python.compiler.tensorrt import trt_convert

        converter_class = trt_convert.TrtGraphConverterV2
    images = None
    if precision == "int8":
        images = list(calibration_images(calibration_dir, size, num_calibration_images, progress=progress))
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="ehrnet-tftrt-") as tmp:
        export_savedmodel(model, tmp, size, float_default=True)
        converter = converter_class(
            input_saved_model_dir=tmp,
            precision_mode=PRECISION_MODES[precision],
            max_workspace_size_bytes=max_workspace_bytes,
            use_calibration=precision == "int8",
        )
        converter.convert(calibration_input_fn=calibration_input_fn(images) if images is not None else None)
        if build:
            converter.build(input_fn=build_input_fn(size))
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
