"""One calling convention for every artefact: Keras, SavedModel, TFLite/LiteRT, ONNX, OpenVINO, TensorRT.

`load_runner(path_or_model)` returns a `Runner`: call it with RGB pixels in
[0, 255] (float32 NHWC, like the Keras model) and it returns the network's two
outputs `(quarter, half)` as float32 numpy arrays, whatever the artefact takes
(uint8, float32 or quantised int8) and however it names its outputs. The
evaluation and benchmark programs use this so that every artefact is judged by
the same code; a runner does as little as possible around the artefact's own
call so that timing it times the artefact.
"""

from __future__ import annotations

import abc
import collections
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from keras_ehrnet.deploy.artefact import (
    ENGINE_SUFFIXES,
    SAVEDMODEL_METADATA,
    TFLITE_MAGIC,
)
from keras_ehrnet.deploy.trt_engine import load_engine_session
from keras_ehrnet.fileio import one_line
from keras_ehrnet.models.scaling import OUTPUT_NAMES
from keras_ehrnet.threads import available_cores, set_tf_threads

EXPECTED_KINDS = (
    "a Keras model (.keras file or keras.Model), a SavedModel directory, a .tflite file, "
    "an .onnx file, an OpenVINO .xml file or a TensorRT .engine/.plan file"
)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """RGB pixels in [0, 255] → uint8 (rounded, clipped), as an artefact taking uint8 expects."""
    if images.dtype == np.uint8:
        return images
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def order_outputs(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(quarter, half) from two outputs in any order: quarter is the smaller one spatially."""
    if len(outputs) != 2:
        raise ValueError(f"expected the model's two outputs (quarter, half), got {len(outputs)}")
    a, b = outputs
    return (a, b) if a.shape[1] * a.shape[2] <= b.shape[1] * b.shape[2] else (b, a)


class Runner(abc.ABC):
    """A loaded artefact. `runner(images) -> (quarter, half)`, numpy in and out.

    Attributes: `name` ("keras", "savedmodel", "tflite-fp16", "onnx", "tensorrt-fp16" …),
    `fixed_input_size` ((H, W) when the artefact was exported at a fixed size, else None),
    `num_joints` (None if unknown), `input_dtype` (what the artefact itself takes),
    `num_threads` (CPU threads the runtime was asked to use; None where the runtime decides),
    `replicable` (whether `replicas` can give copies that run side by side).
    """

    name: str = "runner"
    fixed_input_size: tuple[int, int] | None = None
    num_joints: int | None = None
    input_dtype: np.dtype = np.dtype(np.float32)
    num_threads: int | None = None
    path: Path | None = None
    replicable: bool = False  # whether `replicas` gives side-by-side copies

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run on RGB pixels [B, H, W, 3] in [0, 255]; returns float32 (quarter, half)."""
        images = np.asarray(images)
        if images.ndim == 3:
            raise ValueError(
                f"images must be a batch [B, H, W, 3]; got shape {images.shape} (add a batch axis)"
            )
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be RGB [B, H, W, 3]; got shape {images.shape}")
        size = tuple(images.shape[1:3])
        if self.fixed_input_size is not None and size != self.fixed_input_size:
            raise ValueError(
                f"{self.name} artefact {self.path or ''} was exported for input "
                f"{self.fixed_input_size[0]}x{self.fixed_input_size[1]}, got {size[0]}x{size[1]}; "
                "resize/pad the images to that size (see keras_ehrnet.deploy.letterbox)"
            )
        if size[0] % 32 or size[1] % 32:
            raise ValueError(f"image height and width must be divisible by 32; got {size[0]}x{size[1]}")
        quarter, half = self._run(self._prepare(images))
        return np.asarray(quarter, dtype=np.float32), np.asarray(half, dtype=np.float32)

    def replicas(self, count: int) -> list[Runner] | None:
        """`count` runners of the same artefact that share this one's threads between them, for
        running several frames side by side (one per thread of a video pipeline); None where the
        runtime cannot (TensorFlow and TensorRT schedule their own work)."""
        return None

    def _replica_threads(self, count: int) -> int:
        if count < 1:
            raise ValueError(f"replica count must be ≥ 1, got {count}")
        return max(1, (self.num_threads or available_cores()) // count)

    def _prepare(self, images: np.ndarray) -> np.ndarray:
        """Pixels → what the artefact takes (uint8 rounded and clipped, or float32)."""
        if self.input_dtype == np.uint8:
            return to_uint8(images)
        return images.astype(np.float32, copy=False)

    @abc.abstractmethod
    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The artefact's own call; images are already in `input_dtype` (int8 models quantise here)."""

    def __repr__(self) -> str:
        size = (
            "dynamic"
            if self.fixed_input_size is None
            else f"{self.fixed_input_size[0]}x{self.fixed_input_size[1]}"
        )
        where = f", path={str(self.path)!r}" if self.path else ""
        return f"<{type(self).__name__} {self.name} input={size} joints={self.num_joints}{where}>"


def _set_tf_threads(num_threads: int | None) -> None:
    """TensorFlow's thread pools are per process and fixed once the runtime starts: set them if we can."""
    if num_threads is not None and not set_tf_threads(num_threads):
        warnings.warn(
            f"TensorFlow is already initialised; cannot switch it to {num_threads} threads "
            "(set them before the first TensorFlow call)",
            stacklevel=3,
        )


class KerasRunner(Runner):
    """An in-memory Keras model (or a `.keras` file), compiled once for the active Keras backend
    (a tf.function on TensorFlow, jax.jit on JAX, eager no-grad on PyTorch)."""

    def __init__(self, model: Any, *, num_threads: int | None = None, path: Path | None = None):
        from keras_ehrnet.backend import backend_name, inference_fn

        if backend_name() == "tensorflow":
            _set_tf_threads(num_threads)
        self.model = model
        self.name = "keras"
        self.path = path
        self.num_threads = num_threads
        size = getattr(model, "input_size", None)
        if isinstance(size, int):
            size = (size, size)
        shape = tuple(model.inputs[0].shape[1:3]) if getattr(model, "inputs", None) else (None, None)
        self.fixed_input_size = tuple(size) if size else (shape if None not in shape else None)
        self.num_joints = getattr(model, "num_joints", None) or int(model.outputs[1].shape[-1])
        self._fn = inference_fn(model)

    def _run(self, images):
        quarter, half = self._fn(images)
        return quarter, half


def _read_savedmodel_metadata(path: Path) -> dict:
    meta = path / SAVEDMODEL_METADATA
    return json.loads(meta.read_text()) if meta.is_file() else {}


class SavedModelRunner(Runner):
    """A SavedModel directory (ours, a TF-TRT one, or any with a 1-input, 2-output signature)."""

    def __init__(self, path: Path, *, num_threads: int | None = None, signature: str = "serving_default"):
        import tensorflow as tf

        _set_tf_threads(num_threads)
        self.path = Path(path)
        self.num_threads = num_threads
        if not (self.path / "variables").is_dir():
            raise ValueError(f"SavedModel {self.path} has no variables/ folder (an incomplete copy?)")
        try:
            self.loaded = tf.saved_model.load(str(self.path))  # every signature: loaded.signatures[name]
        except Exception as err:
            raise ValueError(f"cannot load SavedModel {self.path}: {one_line(err)}") from None
        if signature not in self.loaded.signatures:
            raise ValueError(
                f"SavedModel {self.path} has no signature {signature!r}; it has {sorted(self.loaded.signatures)}"
            )
        self._fn = self.loaded.signatures[signature]
        inputs = self._fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise ValueError(
                f"SavedModel {self.path} signature {signature!r} takes {len(inputs)} inputs, expected 1"
            )
        ((self._input_name, spec),) = inputs.items()
        if spec.dtype.name not in ("uint8", "float32") or spec.shape.rank != 4:
            raise ValueError(
                f"SavedModel {self.path} signature {signature!r} takes {spec.dtype.name} {spec.shape}, "
                "expected an image batch [B, H, W, 3] of uint8 or float32"
            )
        self.input_dtype = np.dtype(spec.dtype.name)
        h, w = spec.shape[1], spec.shape[2]
        self.fixed_input_size = (h, w) if h is not None and w is not None else None
        outputs = self._fn.structured_outputs
        self._output_keys = (
            list(OUTPUT_NAMES) if all(k in outputs for k in OUTPUT_NAMES) else sorted(outputs)[:2]
        )
        channels = [outputs[k].shape[-1] for k in self._output_keys]
        meta = _read_savedmodel_metadata(self.path)
        self.metadata = meta
        self.name = meta.get("runner_name", "savedmodel")
        self.num_joints = meta.get("num_joints") or min(c for c in channels if c is not None)
        self.signatures = sorted(self.loaded.signatures)

    def _run(self, images):
        out = self._fn(**{self._input_name: images})
        return order_outputs([out[k].numpy() for k in self._output_keys])

    def people(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Decoded people from a SavedModel exported with the decoder (signature "people")."""
        if "people" not in self.loaded.signatures:
            raise ValueError(
                f"SavedModel {self.path} was exported without the decoder (no 'people' signature)"
            )
        out = self.loaded.signatures["people"](images=to_uint8(np.asarray(images)))
        return {k: v.numpy() for k, v in out.items()}


def tflite_interpreter_class() -> tuple[type, str]:
    """The LiteRT interpreter (ai-edge-litert) when installed, else TensorFlow's tf.lite one."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter, "tf.lite"


def tflite_precision(input_dtype: np.dtype, tensor_dtypes: set | dict) -> str:
    """A TFLite model's precision from its tensors: int8 (full integer), int8-dynamic, fp16 or fp32.

    `tensor_dtypes`: the dtypes of its tensors, or a count per dtype. Full integer with float
    input (int8 with float heads, `export_tflite(float_heads=True)`) is told from dynamic range
    by the counts: its activations are int8 too, so int8 tensors outnumber float32 ones, where
    a dynamic-range model keeps every activation in float32."""
    counts = tensor_dtypes if isinstance(tensor_dtypes, dict) else dict.fromkeys(tensor_dtypes, 1)
    counts = {np.dtype(k): v for k, v in counts.items()}
    if np.dtype(input_dtype) in (np.dtype(np.int8), np.dtype(np.uint8)):
        return "int8"
    if np.dtype(np.float16) in counts:
        return "fp16"
    if np.dtype(np.int8) in counts:
        if isinstance(tensor_dtypes, dict) and counts[np.dtype(np.int8)] > counts.get(
            np.dtype(np.float32), 0
        ):
            return "int8"
        return "int8-dynamic"
    return "fp32"


class TFLiteRunner(Runner):
    """A .tflite file on LiteRT (or tf.lite) with XNNPACK at `num_threads` threads."""

    replicable = True

    def __init__(self, path: Path, *, num_threads: int | None = None):
        self.path = Path(path)
        self.num_threads = num_threads or available_cores()
        self._interpreter_cls, self.interpreter_source = tflite_interpreter_class()
        try:
            self._interp = self._new_interpreter()
        except ValueError as err:
            raise ValueError(f"{self.path} is not a valid TFLite model: {err}") from err
        (inp,) = self._interp.get_input_details()
        self._input = inp
        self.input_dtype = np.dtype(inp["dtype"])
        shape_sig = inp.get("shape_signature", inp["shape"])
        h, w = int(shape_sig[1]), int(shape_sig[2])
        self.fixed_input_size = (h, w) if h > 0 and w > 0 else None
        self._outputs = self._interp.get_output_details()
        if len(self._outputs) != 2:
            raise ValueError(f"{self.path} has {len(self._outputs)} outputs, expected 2 (quarter, half)")
        dtypes = collections.Counter(np.dtype(t["dtype"]) for t in self._interp.get_tensor_details())
        self.precision = tflite_precision(self.input_dtype, dict(dtypes))
        self.name = f"tflite-{self.precision}"
        self.num_joints = int(min(o["shape"][-1] for o in self._outputs))
        self._batch = int(inp["shape"][0])

    def replicas(self, count: int) -> list[Runner]:
        """One interpreter each (a TFLite interpreter must not be invoked from two threads)."""
        threads = self._replica_threads(count)
        return [TFLiteRunner(self.path, num_threads=threads) for _ in range(count)]

    def _new_interpreter(self, input_shape: list[int] | None = None) -> Any:
        """An interpreter with its tensors allocated, the input resized to `input_shape` first.

        A new batch size or image size gets a new interpreter rather than a resize of the
        allocated one: TensorFlow 2.17's XNNPACK delegate crashes (segfault) when a
        dynamic-range (int8-dynamic) model is re-allocated for another input shape.
        """
        with warnings.catch_warnings():  # tf.lite's "use LiteRT" notice: we do when it is installed
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            interp = self._interpreter_cls(model_path=str(self.path), num_threads=self.num_threads)
        if input_shape is not None:
            interp.resize_tensor_input(interp.get_input_details()[0]["index"], input_shape, strict=False)
        interp.allocate_tensors()
        return interp

    def _prepare(self, images: np.ndarray) -> np.ndarray:
        """Quantise with the input tensor's scale and zero point where the model takes integers."""
        scale, zero = self._input["quantization"]
        if self.input_dtype.kind not in "iu" or not scale:
            return super()._prepare(images)
        info = np.iinfo(self.input_dtype)
        q = np.rint(images.astype(np.float32) / scale + zero)
        return np.clip(q, info.min, info.max).astype(self.input_dtype)

    def _run(self, images):
        if images.shape[0] != self._batch or tuple(self._input["shape"][1:3]) != images.shape[1:3]:
            self._interp = self._new_interpreter(list(images.shape))
            self._input = self._interp.get_input_details()[0]
            self._outputs = self._interp.get_output_details()
            self._batch = images.shape[0]
        self._interp.set_tensor(self._input["index"], images)
        self._interp.invoke()
        outs = []
        for detail in self._outputs:
            value = self._interp.get_tensor(detail["index"])
            scale, zero = detail["quantization"]
            if value.dtype != np.float32 and scale:
                value = (value.astype(np.float32) - zero) * scale
            outs.append(value)
        return order_outputs(outs)


class OnnxRunner(Runner):
    """An .onnx file on ONNX Runtime (CPU unless `providers` says otherwise)."""

    replicable = True

    def __init__(self, path: Path, *, num_threads: int | None = None, providers: list | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.num_threads = num_threads or available_cores()
        self._providers = providers
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.num_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as err:  # ORT raises its own Fail/InvalidProtobuf types
            raise ValueError(f"{self.path} is not a valid ONNX model: {err}") from err
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"ONNX model {self.path} has {len(inputs)} inputs, expected 1 image batch")
        self._input_name = inputs[0].name
        self.input_dtype = np.dtype(np.uint8) if inputs[0].type == "tensor(uint8)" else np.dtype(np.float32)
        h, w = inputs[0].shape[1:3]
        self.fixed_input_size = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        outputs = self._session.get_outputs()
        if len(outputs) != 2:
            raise ValueError(f"ONNX model {self.path} has {len(outputs)} outputs, expected 2 (quarter, half)")
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self.name = self.metadata.get("runner_name", "onnx")
        channels = [o.shape[-1] for o in outputs if isinstance(o.shape[-1], int)]
        self.num_joints = min(channels) if channels else None

    def replicas(self, count: int) -> list[Runner]:
        """A session each: with one intra-op thread a session runs on its caller's thread."""
        threads = self._replica_threads(count)
        return [OnnxRunner(self.path, num_threads=threads, providers=self._providers) for _ in range(count)]

    def _run(self, images):
        return order_outputs(self._session.run(None, {self._input_name: images}))


class TensorRTRunner(Runner):
    """A serialised TensorRT engine (.engine/.plan) built from our ONNX file; needs tensorrt and cuda-python."""

    def __init__(self, path: Path, *, num_threads: int | None = None):
        self.path = Path(path)
        self._session = load_engine_session(self.path)
        self.name = f"tensorrt-{self._session.precision}" if self._session.precision else "tensorrt"
        self.fixed_input_size = self._session.fixed_input_size
        self.num_joints = self._session.num_joints
        self.input_dtype = np.dtype(np.float32)

    def _run(self, images):
        return order_outputs(self._session.run(images))


class OpenVINORunner(Runner):
    """An OpenVINO IR (.xml) or ONNX file compiled for the CPU at `num_threads` threads, fp32."""

    def __init__(self, path: Path, *, num_threads: int | None = None, cpu_pinning: bool | None = None):
        from keras_ehrnet.deploy.openvino import import_openvino

        ov = import_openvino()
        self.path = Path(path)
        self.num_threads = num_threads or available_cores()
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as err:  # OpenVINO raises its own RuntimeError subclasses
            raise ValueError(f"{self.path} is not a valid OpenVINO/ONNX model: {one_line(err)}") from None
        if len(model.inputs) != 1 or len(model.outputs) != 2:
            raise ValueError(
                f"{self.path} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                "expected 1 image batch and 2 (quarter, half)"
            )
        self.metadata = self._metadata(model)
        self.name = "openvino"
        shape = model.inputs[0].get_partial_shape()
        h, w = shape[1], shape[2]
        self.fixed_input_size = (h.get_length(), w.get_length()) if h.is_static and w.is_static else None
        channels = [o.get_partial_shape()[-1] for o in model.outputs]
        static = [c.get_length() for c in channels if c.is_static]
        self.num_joints = min(static) if static else None
        self._output_names = [o.get_any_name() for o in model.outputs]
        self._core, self._model = core, model
        self._config = {"INFERENCE_NUM_THREADS": self.num_threads, "INFERENCE_PRECISION_HINT": "f32"}
        if cpu_pinning is not None:
            self._config["ENABLE_CPU_PINNING"] = bool(cpu_pinning)
        # a file with a fixed height and width but a free batch axis (as `export_onnx` writes them)
        # is compiled once per batch size with every axis fixed: OpenVINO's kernels for a dynamic
        # shape cost H-4 at 384 about 14 % more per image on a 2-core Xeon (BENCHMARKS §9.3).
        # A file free in height and width too keeps one dynamic compilation (images differ).
        self._per_batch = self.fixed_input_size is not None and not shape.is_static
        # side by side only with every axis fixed: two single-threaded copies then ran H-4 at
        # 384x512 a frame every 30.0 ms on 2 cores against 36.2 ms for one two-threaded model;
        # with the batch axis free it was 56.7 against 43.7 ms (BENCHMARKS §8)
        self.replicable = self.fixed_input_size is not None
        self._requests: dict[int, tuple[Any, Any]] = {}
        if not self._per_batch:
            compiled = core.compile_model(model, "CPU", self._config)
            self._requests[-1] = (compiled, compiled.create_infer_request())

    def replicas(self, count: int) -> list[Runner] | None:
        """A compiled model each, unpinned (pinned single-threaded copies were slower), for a
        fixed-size file; None for one free in height and width."""
        if not self.replicable:
            return None
        threads = self._replica_threads(count)
        return [OpenVINORunner(self.path, num_threads=threads, cpu_pinning=False) for _ in range(count)]

    @staticmethod
    def _metadata(model: Any) -> dict:
        from keras_ehrnet.deploy.openvino import METADATA_SECTION

        try:
            return json.loads(str(model.get_rt_info([METADATA_SECTION, "metadata"]).astype(str)))
        except Exception:  # no keras_ehrnet section: an IR converted elsewhere, or an ONNX file
            return {}

    def _compiled_for(self, batch: int) -> tuple[Any, Any]:
        """The compiled model and infer request for `batch` images (one for any batch when dynamic)."""
        key = batch if self._per_batch else -1
        if key not in self._requests:
            model = self._model.clone()
            channels = model.inputs[0].get_partial_shape()[3]
            shape = [batch, *self.fixed_input_size, channels.get_length() if channels.is_static else 3]
            model.reshape({model.inputs[0].get_any_name(): shape})
            compiled = self._core.compile_model(model, "CPU", self._config)
            self._requests[key] = (compiled, compiled.create_infer_request())
        return self._requests[key]

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        compiled, request = self._compiled_for(len(images))
        result = request.infer({0: images})
        outs = [result[o] for o in compiled.outputs]
        names = self._output_names
        if all(n in names for n in OUTPUT_NAMES):
            return tuple(np.asarray(outs[names.index(n)]) for n in OUTPUT_NAMES)
        return order_outputs([np.asarray(o) for o in outs])


def _is_savedmodel_dir(path: Path) -> bool:
    return (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()


def load_runner(path_or_model: Any, *, num_threads: int | None = None) -> Runner:
    """A `Runner` for a Keras model or file, SavedModel directory, .tflite, .onnx, OpenVINO .xml or TensorRT engine.

    `num_threads`: CPU threads for TFLite/XNNPACK and ONNX Runtime (default: all usable cores);
    for Keras and SavedModel it sets TensorFlow's pools if TensorFlow has not started yet.
    Raises FileNotFoundError for a missing path and ValueError for a file of another kind.
    """
    if isinstance(path_or_model, Runner):
        return path_or_model
    if not isinstance(path_or_model, (str, os.PathLike)):
        import keras

        if isinstance(path_or_model, keras.Model):
            return KerasRunner(path_or_model, num_threads=num_threads)
        raise TypeError(f"expected {EXPECTED_KINDS}; got a {type(path_or_model).__name__}")

    path = Path(path_or_model)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path} (expected {EXPECTED_KINDS})")
    suffix = path.suffix.lower()
    if path.is_dir():
        if not _is_savedmodel_dir(path):
            raise ValueError(
                f"{path} is a directory without saved_model.pb: not a SavedModel (expected {EXPECTED_KINDS})"
            )
        return SavedModelRunner(path, num_threads=num_threads)
    if suffix == ".keras":
        from keras_ehrnet.models.model import load_keras_model  # Keras and TF only for a .keras file

        return KerasRunner(load_keras_model(path), num_threads=num_threads, path=path)
    if suffix == ".tflite":
        with open(path, "rb") as f:
            head = f.read(8)
        if head[4:8] != TFLITE_MAGIC:
            raise ValueError(f"{path} is not a TFLite flatbuffer (no {TFLITE_MAGIC.decode()} identifier)")
        return TFLiteRunner(path, num_threads=num_threads)
    if suffix == ".onnx":
        return OnnxRunner(path, num_threads=num_threads)
    if suffix in ENGINE_SUFFIXES:
        return TensorRTRunner(path, num_threads=num_threads)
    if suffix == ".xml":
        return OpenVINORunner(path, num_threads=num_threads)
    raise ValueError(f"unknown model file {path}: expected {EXPECTED_KINDS}")
