"""The TensorRT exporter: our ONNX file, then an engine built from it (or the trtexec command to build one).

The route for Jetson (JetPack ships TensorRT and trtexec): export ONNX, build
an engine on the device (engines are specific to the GPU and TensorRT
version), FP16 or INT8 with an entropy calibrator over real images that writes
a calibration cache (re-used by later builds and by `trtexec --calib`). The
engine primitives (calibration batches, building, the trtexec command, loading
and running) are in `keras_ehrnet.deploy.trt_engine`, shared with the runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keras_ehrnet.deploy.artefact import RuntimeUnavailableError, engine_metadata_path
from keras_ehrnet.deploy.common import DEFAULT_CALIBRATION_IMAGES, calibration_images, list_images, write_json
from keras_ehrnet.deploy.onnx import export_onnx
from keras_ehrnet.deploy.trt_engine import (
    DEFAULT_WORKSPACE_BYTES,
    TRT_PRECISIONS,
    CalibrationBatcher,
    build_engine,
    entropy_calibrator,
    require_tensorrt,
    trtexec_command,
)

JETSON_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"


def export_tensorrt(
    model: Any,
    out: str | Path,
    size: tuple[int, int],
    precision: str = "fp16",
    *,
    calibration_dir: str | Path | None = None,
    num_calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    calibration_batch: int = 8,
    max_batch: int = 1,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    progress: bool = True,
    log: Any = print,
) -> Path:
    """ONNX (beside `out`) → TensorRT engine at `out`; prints the equivalent trtexec command.

    INT8 calibrates over real images (or re-uses `<out>.calib` if present).
    Without TensorRT the ONNX file is still written and the error says which
    trtexec command to run where TensorRT is.
    """
    if precision not in TRT_PRECISIONS:
        raise ValueError(f"TensorRT precision must be one of {TRT_PRECISIONS}, got {precision!r}")
    out = Path(out)
    onnx_path = out.with_suffix(".onnx")
    cache = out.with_suffix(".calib")
    if precision == "int8":
        if calibration_dir is not None:
            list_images(calibration_dir)  # fail early on an empty or missing folder
        elif not cache.is_file():
            raise ValueError(
                f"TensorRT INT8 needs real calibration images (--calibration-images DIR) or a calibration cache at {cache}"
            )
    export_onnx(model, onnx_path, size)
    command = trtexec_command(
        onnx_path,
        out,
        precision,
        size,
        max_batch=max_batch,
        calibration_cache=cache if precision == "int8" else None,
        workspace_bytes=workspace_bytes,
    )
    log(
        f"ONNX written to {onnx_path}; the equivalent trtexec command (on Jetson: {JETSON_TRTEXEC}):\n  {command}"
    )
    try:
        require_tensorrt()
    except RuntimeUnavailableError as err:
        raise RuntimeUnavailableError(
            f"cannot build the TensorRT engine here: {err}. The ONNX file is written: {onnx_path}; "
            f"build the engine where TensorRT is (e.g. on the Jetson) with:\n  {command}"
        ) from err
    calibrator = None
    if precision == "int8":
        images = (
            calibration_images(calibration_dir, size, num_calibration_images, progress=progress)
            if calibration_dir is not None
            else iter(())
        )
        calibrator = entropy_calibrator(CalibrationBatcher(images, calibration_batch, cache))
    build_engine(
        onnx_path,
        out,
        precision,
        size,
        max_batch=max_batch,
        calibrator=calibrator,
        calibration_batch=calibration_batch,
        workspace_bytes=workspace_bytes,
    )
    write_json(
        engine_metadata_path(out),
        {"precision": precision, "input_size": list(size), "onnx": str(onnx_path), "trtexec": command},
    )
    return out
