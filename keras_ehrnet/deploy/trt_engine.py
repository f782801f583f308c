"""TensorRT engine primitives: build an engine from an ONNX file (or the trtexec command that does), load and run one.

One level below both the TensorRT exporter (`keras_ehrnet.deploy.tensorrt`) and the
TensorRT runtime backend (`keras_ehrnet.deploy.runtimes.TensorRTRunner`). Everything
here imports `tensorrt` and `cuda-python` lazily, so importing it costs nothing where
they are missing; the functions then raise RuntimeUnavailableError saying what to install.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from keras_ehrnet.deploy.artefact import INPUT_NAME, RuntimeUnavailableError, engine_metadata_path
from keras_ehrnet.fileio import atomic_write_bytes

TRT_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_BYTES = 1 << 30


class CalibrationBatcher:
    """The data side of an INT8 calibrator: fixed-size float32 batches and the calibration cache.

    `images` yields float32 [H, W, 3] pixels; a trailing partial batch is
    dropped (TensorRT calibrates with full batches). An existing cache file is
    returned by `read_cache`, so TensorRT skips calibration and no image is read.
    """

    def __init__(self, images: Iterable[np.ndarray], batch_size: int, cache_file: str | Path):
        if batch_size < 1:
            raise ValueError(f"calibration batch size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.cache_file = Path(cache_file)
        self._images = images
        self._iterator: Iterator[np.ndarray] | None = None
        self.batches_served = 0

    def next_batch(self) -> np.ndarray | None:
        """The next C-contiguous float32 batch [N, H, W, 3], or None when the images are used up."""
        if self._iterator is None:
            self._iterator = iter(self._images)
        batch = []
        for image in self._iterator:
            batch.append(np.asarray(image, np.float32))
            if len(batch) == self.batch_size:
                self.batches_served += 1
                return np.ascontiguousarray(np.stack(batch))
        if self.batches_served == 0 and batch:
            raise ValueError(
                f"only {len(batch)} calibration images for a calibration batch of {self.batch_size}"
            )
        return None

    def read_cache(self) -> bytes | None:
        """The calibration cache if one was written before (TensorRT then skips calibration)."""
        return (
            self.cache_file.read_bytes()
            if self.cache_file.is_file() and self.cache_file.stat().st_size
            else None
        )

    def write_cache(self, cache: bytes) -> None:
        """Keep the calibration table for later builds and for `trtexec --calib`."""
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.cache_file, bytes(cache))


def require_tensorrt() -> Any:
    """The `tensorrt` module, or RuntimeUnavailableError saying how to install it."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise RuntimeUnavailableError(
            f"the TensorRT Python API is not installed ({err}); it comes with JetPack on Jetson "
            "(python3-libnvinfer) and as `pip install tensorrt` on x86 NVIDIA machines"
        ) from err
    return trt


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as err:
            raise RuntimeUnavailableError(
                f"cuda-python is not installed ({err}): `pip install cuda-python` (match the CUDA version)"
            ) from err
    return cudart


def _check(result: Any) -> Any:
    """Unpack a cuda-python result tuple, raising on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


class _DeviceBuffer:
    """Device memory for one array (cuda-python)."""

    def __init__(self, nbytes: int):
        self._cudart = _cudart()
        self.nbytes = nbytes
        self.ptr = _check(self._cudart.cudaMalloc(nbytes))

    def upload(self, array: np.ndarray, stream: Any = 0) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self._cudart.cudaMemcpyAsync(self.ptr, array.ctypes.data, array.nbytes, kind, stream))

    def download(self, array: np.ndarray, stream: Any = 0) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(self._cudart.cudaMemcpyAsync(array.ctypes.data, self.ptr, array.nbytes, kind, stream))

    def __del__(self):
        if getattr(self, "ptr", None) is not None:
            self._cudart.cudaFree(self.ptr)
            self.ptr = None


def entropy_calibrator(batcher: CalibrationBatcher) -> Any:
    """A `tensorrt.IInt8EntropyCalibrator2` that reads its batches and cache through `batcher`."""
    trt = require_tensorrt()
    cudart = _cudart()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self._buffer: _DeviceBuffer | None = None

        def get_batch_size(self) -> int:
            return batcher.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = batcher.next_batch()
            if batch is None:
                return None
            if self._buffer is None:
                self._buffer = _DeviceBuffer(batch.nbytes)
            self._buffer.upload(batch)
            _check(cudart.cudaDeviceSynchronize())
            return [int(self._buffer.ptr)]

        def read_calibration_cache(self) -> bytes | None:
            return batcher.read_cache()

        def write_calibration_cache(self, cache: Any) -> None:
            batcher.write_cache(bytes(cache))

    return EntropyCalibrator()


def trtexec_command(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str,
    size: tuple[int, int],
    *,
    max_batch: int = 1,
    opt_batch: int = 1,
    calibration_cache: str | Path | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    trtexec: str = "trtexec",
) -> str:
    """The trtexec command line that builds the same engine as `build_engine` (on Jetson: /usr/src/tensorrt/bin/trtexec).

    INT8 needs the calibration cache that `build_engine` writes (trtexec
    cannot calibrate from images); without `--calib` trtexec uses dummy
    scales, good for timing only.
    """
    if precision not in TRT_PRECISIONS:
        raise ValueError(f"TensorRT precision must be one of {TRT_PRECISIONS}, got {precision!r}")
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(
            f"need 1 <= opt_batch <= max_batch, got opt_batch={opt_batch}, max_batch={max_batch}"
        )
    h, w = size

    def shape(batch: int) -> str:
        return f"{INPUT_NAME}:{batch}x{h}x{w}x3"

    args = [
        trtexec,
        f"--onnx={onnx_path}",
        f"--saveEngine={engine_path}",
        f"--minShapes={shape(1)}",
        f"--optShapes={shape(opt_batch)}",
        f"--maxShapes={shape(max_batch)}",
        f"--memPoolSize=workspace:{max(1, workspace_bytes >> 20)}M",
    ]
    if precision in ("fp16", "int8"):
        args.append("--fp16")  # INT8 builds fall back to FP16 (not FP32) where a layer has no INT8 kernel
    if precision == "int8":
        args.append("--int8")
        if calibration_cache is not None:
            args.append(f"--calib={calibration_cache}")
    return shlex.join(str(a) for a in args)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str,
    size: tuple[int, int],
    *,
    max_batch: int = 1,
    opt_batch: int = 1,
    calibrator: Any = None,
    calibration_batch: int = 1,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> Path:
    """Parse the ONNX file and build a serialised engine (TensorRT ≥ 8.5 API) at `engine_path`."""
    trt = require_tensorrt()
    if precision not in TRT_PRECISIONS:
        raise ValueError(f"TensorRT precision must be one of {TRT_PRECISIONS}, got {precision!r}")
    if precision == "int8" and calibrator is None:
        raise ValueError(
            "a TensorRT INT8 build needs a calibrator (calibration images or a calibration cache)"
        )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    h, w = size
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, h, w, 3), (opt_batch, h, w, 3), (max_batch, h, w, 3))
    config.add_optimization_profile(profile)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        calibration = builder.create_optimization_profile()
        shape = (calibration_batch, h, w, 3)
        calibration.set_shape(INPUT_NAME, shape, shape, shape)
        config.set_calibration_profile(calibration)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(
            f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)"
        )
    engine_path = Path(engine_path)
    atomic_write_bytes(engine_path, bytes(serialized))
    return engine_path


class EngineSession:
    """A deserialised engine with its device buffers; `run(images)` → list of outputs (numpy)."""

    def __init__(self, path: str | Path):
        trt = require_tensorrt()
        self._cudart = _cudart()
        self.path = Path(path)
        self._trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ValueError(
                f"{self.path} is not a TensorRT engine for this TensorRT version and GPU (rebuild it here)"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = [self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
        self.inputs = [n for n, i in zip(names, is_input) if i]
        self.outputs = [n for n, i in zip(names, is_input) if not i]
        if len(self.inputs) != 1 or len(self.outputs) != 2:
            raise ValueError(
                f"{self.path}: expected 1 input and 2 outputs, got {self.inputs} and {self.outputs}"
            )
        shape = tuple(self.engine.get_tensor_shape(self.inputs[0]))
        self.fixed_input_size = (shape[1], shape[2]) if shape[1] > 0 and shape[2] > 0 else None
        channels = [self.engine.get_tensor_shape(n)[-1] for n in self.outputs]
        self.num_joints = int(min(channels))
        meta = engine_metadata_path(self.path)
        self.precision = json.loads(meta.read_text()).get("precision") if meta.is_file() else None
        self.stream = _check(self._cudart.cudaStreamCreate())
        self._buffers: dict[str, _DeviceBuffer] = {}

    def _buffer(self, name: str, nbytes: int) -> _DeviceBuffer:
        buffer = self._buffers.get(name)
        if buffer is None or buffer.nbytes < nbytes:
            buffer = self._buffers[name] = _DeviceBuffer(nbytes)
            self.context.set_tensor_address(name, int(buffer.ptr))
        return buffer

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        images = np.ascontiguousarray(images, np.float32)
        self.context.set_input_shape(self.inputs[0], images.shape)
        self._buffer(self.inputs[0], images.nbytes).upload(images, self.stream)
        results = []
        for name in self.outputs:
            host = np.empty(tuple(self.context.get_tensor_shape(name)), np.float32)
            self._buffer(name, host.nbytes)
            results.append(host)
        for name, buffer in self._buffers.items():
            self.context.set_tensor_address(name, int(buffer.ptr))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError(f"TensorRT execution of {self.path} failed")
        for name, host in zip(self.outputs, results):
            self._buffers[name].download(host, self.stream)
        _check(self._cudart.cudaStreamSynchronize(self.stream))
        return results


def load_engine_session(path: str | Path) -> EngineSession:
    """Deserialize an engine for `keras_ehrnet.deploy.runtimes.TensorRTRunner`."""
    return EngineSession(path)
