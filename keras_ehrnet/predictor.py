"""One predictor over every runtime: image in, people out.

    predictor = Predictor("model.keras")        # or a keras.Model, SavedModel dir, .tflite, .onnx
    people = predictor.predict(image_rgb_uint8)  # [Person(keypoints [J, 3], score, box), …]

The same pre-processing (`keras_ehrnet.transforms`) and decoding
(`keras_ehrnet.decoding`) run whatever executes the network, so an exported
artefact is measured exactly like the original model. Also here: reading
images with clear errors, and the image/folder/video loop behind
`python -m evaluation.predict`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from keras_ehrnet.decoding import (
    COCO_KEYPOINT_NAMES,
    DecodeConfig,
    DecodeResult,
    Person,
    ScaleOutputs,
    decode_outputs,
)
from keras_ehrnet.fileio import OutputPathError, atomic_path, atomic_write_json, one_line
from keras_ehrnet.transforms import DEFAULT_SIZE_MULTIPLE, TestPlan, make_test_plan, warp_image

log = logging.getLogger("keras_ehrnet.predictor")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".ppm", ".pgm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
DEFAULT_INPUT_SIZE = 512


class ImageReadError(ValueError):
    """An image file that is missing or cannot be decoded."""


class _KerasModelRunner:
    """Fallback adapter for an in-memory keras.Model when keras_ehrnet.runtimes is unavailable."""

    name = "keras"

    def __init__(self, model: Any):
        from keras_ehrnet.backend import inference_fn

        self.model = model
        size = getattr(model, "input_size", None)
        self.fixed_input_size = (size, size) if isinstance(size, int) else (tuple(size) if size else None)
        self.num_joints = getattr(model, "num_joints", None) or int(model.outputs[1].shape[-1])
        self._fn = inference_fn(model)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        quarter, half = self._fn(np.asarray(images, np.float32))
        return quarter, half


def keras_runner(model: Any):
    """A Runner (callable images → (quarter, half)) for an in-memory keras.Model."""
    try:
        from keras_ehrnet.runtimes import load_runner
    except ImportError:
        return _KerasModelRunner(model)
    return load_runner(model)


def as_runner(model_or_path: Any):
    """A Runner for a keras.Model, a model path (.keras, SavedModel, .tflite, .onnx) or a Runner."""
    if isinstance(model_or_path, (str, os.PathLike)):
        path = Path(model_or_path)
        if not path.exists():
            raise FileNotFoundError(f"model not found: {path}")
        try:
            from keras_ehrnet.runtimes import load_runner
        except ImportError:  # pragma: no cover - runtimes ships with the package
            if path.suffix.lower() != ".keras":
                raise ValueError(f"cannot load {path}: keras_ehrnet.runtimes is not available") from None
            import keras

            import keras_ehrnet  # noqa: F401  (registers the model class)

            return _KerasModelRunner(keras.saving.load_model(path, compile=False))
        return load_runner(path)
    if callable(model_or_path) and hasattr(model_or_path, "fixed_input_size"):
        return model_or_path  # already a Runner
    import keras

    if isinstance(model_or_path, keras.Model):
        return keras_runner(model_or_path)
    raise TypeError(
        "expected a keras.Model, a Runner or a path to a .keras file, SavedModel directory, .tflite or "
        f".onnx file; got {type(model_or_path).__name__}"
    )


def _native_input_size(runner: Any) -> int | None:
    model = getattr(runner, "model", None)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "input_size", None):
        return int(config.input_size)
    meta = getattr(runner, "metadata", None) or {}
    for key in ("input_size", "native_input_size"):
        if key in meta:
            try:
                return int(meta[key])
            except (TypeError, ValueError):
                pass
    return None


def to_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Any image array → RGB uint8 [H, W, 3]: grayscale repeated, alpha dropped.

    Value rule: uint8 as it is; uint16 divided by 257 (0..65535 → 0..255); other integers
    must lie in 0..255; floats whose maximum is at most 1 are taken as 0..1 and multiplied by
    255 (so a float image from most image libraries is not turned black), other floats must
    lie in 0..255 and are rounded. Anything else (NaN or infinite values, values outside
    those ranges, bool or non-numeric arrays, a batch, channels first) is refused with a
    ValueError that names the shape, dtype or value range.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        hint = ""
        if image.ndim == 4:
            hint = " (a batch? pass one image at a time)"
        elif image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] > 4:
            hint = " (channels first? use image.transpose(1, 2, 0))"
        raise ValueError(
            f"{name} must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]; got shape {image.shape}{hint}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    if image.dtype != np.uint8:
        if image.dtype == bool or not (
            np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
        ):
            raise ValueError(
                f"{name} must hold numbers in 0..255 (or floats in 0..1); got dtype {image.dtype}"
            )
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            raise ValueError(f"{name} holds NaN or infinite values (dtype {image.dtype})")
        low, high = image.min(), image.max()
        if image.dtype == np.uint16:
            image = image / 257.0
        elif np.issubdtype(image.dtype, np.floating) and low >= 0 and high <= 1:
            image = image * 255.0  # floats in 0..1
        elif low < 0 or high > 255:
            raise ValueError(
                f"{name} values must lie in 0..255 (or 0..1 for floats); got {low:.6g}..{high:.6g} "
                f"(dtype {image.dtype})"
            )
        image = np.rint(image).astype(np.uint8)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif image.shape[-1] == 4:
        image = image[..., :3]
    return np.ascontiguousarray(image)


def read_image(path: str | os.PathLike, *, ignore_orientation: bool = False) -> np.ndarray:
    """Read an image file as RGB uint8 [H, W, 3] (grayscale and RGBA converted).

    `ignore_orientation`: keep the stored pixel layout (COCO annotates it) instead of
    applying the EXIF rotation. Raises ImageReadError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageReadError(f"image file is empty (0 bytes): {path}")
    flags = cv2.IMREAD_COLOR | (cv2.IMREAD_IGNORE_ORIENTATION if ignore_orientation else 0)
    image = cv2.imdecode(data, flags)
    if image is None or image.size == 0:
        raise ImageReadError(f"cannot decode image {path}: not a readable image file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class Predictor:
    """Multi-person pose from images with any runtime; the same pre-processing and decoding for all.

    `model_or_path`: a keras.Model, a `keras_ehrnet.runtimes` Runner, or a path to a
    `.keras` file, SavedModel directory, `.tflite` or `.onnx` file.
    `input_size`: the short side R of the network input (default: the model's native
    size, or the size an artefact was exported at), or a fixed (height, width) that every
    image is fitted inside, centred (letterbox), as an artefact exported at that size is
    served; use it to score a Keras model exactly as its fixed-size export will run.
    `flip`: flip test. `scales`: multi-scale test (must include 1.0). `flip_index`/`joint_order`: for joint sets
    other than COCO's. Other keyword arguments set `DecodeConfig` fields
    (thresholds, refinement …). `min_score`: people scoring below are dropped.
    """

    def __init__(
        self,
        model_or_path: Any,
        *,
        input_size: int | tuple[int, int] | None = None,
        flip: bool = True,
        scales: Sequence[float] = (1.0,),
        flip_index: Sequence[int] | None = None,
        joint_order: Sequence[int] | None = None,
        decode_config: DecodeConfig | None = None,
        size_multiple: int = DEFAULT_SIZE_MULTIPLE,
        min_score: float = 0.0,
        keypoint_names: Sequence[str] | None = None,
        **decode_options: Any,
    ):
        self.runner = as_runner(model_or_path)
        self.fixed_input_size = getattr(self.runner, "fixed_input_size", None)
        if self.fixed_input_size is not None:
            self.fixed_input_size = tuple(int(v) for v in self.fixed_input_size)
        if input_size is not None and not np.isscalar(input_size):
            input_size = self._letterbox_size(input_size)
        if input_size is None and self.fixed_input_size is not None:
            input_size = min(self.fixed_input_size)
        if input_size is None:
            input_size = _native_input_size(self.runner)
        if input_size is None:
            input_size = DEFAULT_INPUT_SIZE
            warnings.warn(
                f"{getattr(self.runner, 'name', 'model')} does not say its input size; "
                f"using {DEFAULT_INPUT_SIZE} (pass input_size=…)",
                stacklevel=2,
            )
        self.input_size = int(input_size)
        self.flip = bool(flip)
        self.scales = tuple(sorted((float(s) for s in scales), reverse=True))
        self.size_multiple = int(size_multiple)
        self.min_score = float(min_score)
        self.num_joints = getattr(self.runner, "num_joints", None)
        config = decode_config or DecodeConfig()
        changes = dict(decode_options)
        if flip_index is not None:
            changes["flip_index"] = tuple(int(i) for i in flip_index)
        if joint_order is not None:
            changes["joint_order"] = tuple(int(i) for i in joint_order)
        self.config = dataclasses.replace(config, **changes) if changes else config
        if self.num_joints:
            self.config.joint_order_for(self.num_joints)
            if self.flip:
                self.config.flip_index_for(self.num_joints)
        if keypoint_names is None and self.num_joints == len(COCO_KEYPOINT_NAMES):
            keypoint_names = COCO_KEYPOINT_NAMES
        self.keypoint_names = tuple(keypoint_names) if keypoint_names else None
        # validates scales against a fixed-size artefact now rather than on the first image
        self.plan((self.input_size, self.input_size))
        self._pair_batches = True
        self._warm: set = set()
        self.last_timings: dict[str, float] = {}

    def _letterbox_size(self, size: Sequence[int]) -> int:
        """Fix the input at (height, width) = `size`; returns its short side."""
        asked = tuple(int(v) for v in size)
        if len(asked) != 2 or min(asked) <= 0 or asked[0] % 32 or asked[1] % 32:
            raise ValueError(
                f"a fixed input size must be (height, width), multiples of 32; got {tuple(size)!r}"
            )
        own = self.fixed_input_size
        if own is not None and asked != own:
            raise ValueError(
                f"{self.name} takes only {own[0]}x{own[1]} inputs; it cannot be run at {asked[0]}x{asked[1]}"
            )
        self.fixed_input_size = asked
        return min(asked)

    @property
    def name(self) -> str:
        return str(getattr(self.runner, "name", "model"))

    def plan(self, image_size: tuple[int, int]) -> TestPlan:
        """The test-time sizes and transforms for an image of (height, width)."""
        return make_test_plan(
            image_size,
            self.input_size,
            self.scales,
            size_multiple=self.size_multiple,
            fixed_input_size=self.fixed_input_size,
        )

    def _run_pair(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Runs the plain and mirrored inputs together when the runtime takes a batch of 2."""
        if self._pair_batches:
            try:
                return self.runner(batch)
            except Exception:  # an artefact exported for batch 1: run one at a time from now on
                self._pair_batches = False
        outs = [self.runner(batch[i : i + 1]) for i in range(len(batch))]
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

    def network_outputs(self, image: np.ndarray, plan: TestPlan) -> list[ScaleOutputs]:
        """Run the network on every scale (and the mirrored input) of `plan`."""
        outputs = []
        for entry in plan.scales:
            x = warp_image(image, entry).astype(np.float32)
            if self.flip:
                quarter, half = self._run_pair(np.stack([x, x[:, ::-1]]))
                outputs.append(ScaleOutputs(quarter[0], half[0], quarter[1], half[1], entry.scale))
            else:
                quarter, half = self.runner(x[None])
                outputs.append(ScaleOutputs(quarter[0], half[0], scale=entry.scale))
            if outputs[-1].half.shape[:2] != (entry.size[0] // 2, entry.size[1] // 2):
                raise ValueError(
                    f"{self.name} returned a half-resolution output of {outputs[-1].half.shape[:2]} for an "
                    f"input of {entry.size}; expected {(entry.size[0] // 2, entry.size[1] // 2)}"
                )
        return outputs

    def predict_result(self, image: np.ndarray, timings: dict | None = None) -> DecodeResult:
        """People as arrays (keypoints [P, J, 3] in image pixels, scores [P]); `timings` gets seconds."""
        t0 = time.perf_counter()
        image = to_rgb_uint8(image)
        plan = self.plan(image.shape[:2])
        t1 = time.perf_counter()
        outputs = self.network_outputs(image, plan)
        t2 = time.perf_counter()
        stages: dict[str, float] = {}
        result = decode_outputs(outputs, plan, self.config, stages)
        t3 = time.perf_counter()
        self.last_timings = {"preprocess": t1 - t0, "network": t2 - t1, "decode": t3 - t2, **stages}
        if timings is not None:
            timings.update(self.last_timings)
        return result

    def warmup(self, image_size: tuple[int, int]) -> float:
        """Run the network once at the input sizes an image of (height, width) needs, so that
        one-time costs (graph tracing, allocation) stay out of timings; returns the seconds spent.
        Sizes already warmed cost nothing."""
        t = time.perf_counter()
        for entry in self.plan(image_size).scales:
            if entry.size in self._warm:
                continue
            x = np.zeros((2 if self.flip else 1, *entry.size, 3), np.float32)
            if self.flip:
                self._run_pair(x)
            else:
                self.runner(x)
            self._warm.add(entry.size)
        return time.perf_counter() - t

    def predict(self, image: np.ndarray) -> list[Person]:
        """People in an RGB image (uint8 [H, W, 3]; grayscale and RGBA accepted), best first.

        Floats in 0..1 are scaled by 255; see `to_rgb_uint8` for the values accepted."""
        return self.predict_result(image).people(self.min_score)

    def __repr__(self) -> str:
        return (
            f"<Predictor {self.name} R={self.input_size} flip={self.flip} scales={self.scales} "
            f"joints={self.num_joints}>"
        )


# ----------------------------------------------------------------------------- files, folders, videos


@dataclasses.dataclass
class InputItem:
    """One input of a predict run: an image or a video file."""

    path: Path
    kind: str  # "image" or "video"


def collect_inputs(paths: Iterable[str | os.PathLike]) -> tuple[list[InputItem], list[tuple[str, str]]]:
    """Images and videos named directly or found in folders (sorted), and the paths that are not usable."""
    items: list[InputItem] = []
    problems: list[tuple[str, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES
            )
            if not found:
                problems.append((str(path), "folder holds no image or video files"))
            for p in found:
                items.append(InputItem(p, "video" if p.suffix.lower() in VIDEO_SUFFIXES else "image"))
        elif path.is_file():
            suffix = path.suffix.lower()
            items.append(InputItem(path, "video" if suffix in VIDEO_SUFFIXES else "image"))
        else:
            problems.append((str(path), "no such file or folder"))
    return items, problems


def _unique_stem(out_dir: Path, stem: str, used: set) -> str:
    name, k = stem, 1
    while name in used:
        name = f"{stem}_{k}"
        k += 1
    used.add(name)
    return name


def _write_json(path: Path, payload: dict) -> None:
    atomic_write_json(path, payload, indent=1)


def _skip(summary: dict, path: Path | str, err: BaseException) -> None:
    """List an input the run could not take; the others go on."""
    reason = str(err) if isinstance(err, ImageReadError) else f"cannot be predicted: {one_line(err)}"
    log.warning("skipped %s: %s", path, reason)
    summary["skipped"].append({"input": str(path), "reason": reason})


def _predict_image(
    predictor: Predictor,
    item: InputItem,
    out: Path | None,
    used: set,
    draw: bool,
    draw_fn: Callable,
    summary: dict,
) -> dict:
    image = read_image(item.path)
    warmup = predictor.warmup(image.shape[:2])
    t = time.perf_counter()
    people = predictor.predict(image)
    dt = time.perf_counter() - t
    summary["warmup_seconds"] += warmup
    entry = {"input": str(item.path), "kind": "image", "people": len(people), "seconds": dt}
    if out is not None:
        stem = _unique_stem(out, item.path.stem, used)
        payload = {
            "input": str(item.path),
            "width": image.shape[1],
            "height": image.shape[0],
            "model": predictor.name,
            "keypoint_names": list(predictor.keypoint_names or []),
            "people": [p.to_dict() for p in people],
            "timing_ms": {k: round(v * 1000, 2) for k, v in predictor.last_timings.items()},
        }
        _write_json(out / f"{stem}.json", payload)
        entry["json"] = str(out / f"{stem}.json")
        if draw:
            drawn = draw_fn(image, people)
            with atomic_path(out / f"{stem}.jpg") as tmp:
                if not cv2.imwrite(str(tmp), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR)):
                    raise OSError(f"could not write {out / f'{stem}.jpg'}")
            entry["drawn"] = str(out / f"{stem}.jpg")
    summary["frames"] += 1
    summary["seconds"] += dt
    return entry


def predict_files(
    predictor: Predictor,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    *,
    draw: bool = True,
    progress: bool = True,
    draw_fn: Callable | None = None,
) -> dict:
    """Predict on images, folders and videos; write JSON (and drawn images/videos) to `out_dir`.

    Unreadable or missing files, and inputs the model or runtime fails on (an image too
    large for memory, a runtime error), are skipped and listed under "skipped" with the
    reason; the rest are still predicted. Every file is written atomically. Returns a summary:
    per-input people counts, frames, seconds and frames per second (prediction only: file
    I/O, drawing and the one-time warm-up per input size, in "warmup_seconds", are left out).
    """
    from keras_ehrnet.viz import draw_people

    draw_fn = draw_fn or draw_people
    items, skipped = collect_inputs(inputs)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    used: set = set()
    summary: dict = {
        "model": predictor.name,
        "inputs": [],
        "skipped": [],
        "frames": 0,
        "seconds": 0.0,
        "warmup_seconds": 0.0,
    }
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)
        summary["skipped"].append({"input": path, "reason": reason})
    images = [it for it in items if it.kind == "image"]
    videos = [it for it in items if it.kind == "video"]
    bar = tqdm(images, desc="images", unit="img", disable=not progress or len(images) < 2)
    for item in bar:
        try:
            entry = _predict_image(predictor, item, out, used, draw, draw_fn, summary)
        except (KeyboardInterrupt, OutputPathError):
            raise
        except Exception as err:  # one input the model cannot take never stops the others
            _skip(summary, item.path, err)
            continue
        summary["inputs"].append(entry)
    for item in videos:
        try:
            entry = predict_video(
                predictor, item.path, out, used=used, draw=draw, progress=progress, draw_fn=draw_fn
            )
        except (KeyboardInterrupt, OutputPathError):
            raise
        except Exception as err:
            _skip(summary, item.path, err)
            continue
        summary["frames"] += entry["frames"]
        summary["seconds"] += entry["seconds"]
        summary["warmup_seconds"] += entry["warmup_seconds"]
        summary["inputs"].append(entry)
    summary["fps"] = summary["frames"] / summary["seconds"] if summary["seconds"] > 0 else 0.0
    return summary


def predict_video(
    predictor: Predictor,
    path: str | os.PathLike,
    out_dir: Path | None,
    *,
    used: set | None = None,
    draw: bool = True,
    progress: bool = True,
    draw_fn: Callable | None = None,
) -> dict:
    """Predict every frame of a video; write `<stem>.json` (people per frame) and `<stem>.mp4` (drawn)."""
    from keras_ehrnet.viz import draw_people

    draw_fn = draw_fn or draw_people
    path = Path(path)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ImageReadError(f"cannot open video {path}: not a readable video file")
    fps_in = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    stem = _unique_stem(out_dir, path.stem, used if used is not None else set()) if out_dir else path.stem
    bar = tqdm(total=total, desc=path.name, unit="frame", disable=not progress)
    drawn_file = out_dir / f"{stem}.mp4" if out_dir is not None and draw else None
    with contextlib.ExitStack() as stack:
        tmp_video = stack.enter_context(atomic_path(drawn_file)) if drawn_file is not None else None
        try:
            frames, seconds, warmup = _predict_frames(predictor, cap, bar, tmp_video, fps_in, draw_fn)
        finally:
            bar.close()
            cap.release()
        if not frames:
            raise ImageReadError(f"video {path} has no readable frames")
    entry = {
        "input": str(path),
        "kind": "video",
        "frames": len(frames),
        "seconds": seconds,
        "warmup_seconds": warmup,
        "fps": len(frames) / seconds if seconds else 0.0,
        "people": int(sum(len(f["people"]) for f in frames)),
    }
    if out_dir is not None:
        payload = {
            "input": str(path),
            "model": predictor.name,
            "fps_in": fps_in,
            "keypoint_names": list(predictor.keypoint_names or []),
            "frames": frames,
        }
        _write_json(out_dir / f"{stem}.json", payload)
        entry["json"] = str(out_dir / f"{stem}.json")
        if draw:
            entry["drawn"] = str(out_dir / f"{stem}.mp4")
    return entry


def _predict_frames(
    predictor: Predictor, cap: Any, bar: Any, drawn_file: Path | None, fps_in: float, draw_fn: Callable
) -> tuple[list[dict], float, float]:
    """People in every frame of an opened video; drawn frames go to `drawn_file` (if given)."""
    writer = None
    frames: list[dict] = []
    seconds = warmup = 0.0
    try:
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            warmup += predictor.warmup(rgb.shape[:2])
            t = time.perf_counter()
            people = predictor.predict(rgb)
            seconds += time.perf_counter() - t
            frames.append({"frame": len(frames), "people": [p.to_dict() for p in people]})
            if drawn_file is not None:
                if writer is None:
                    h, w = rgb.shape[:2]
                    writer = cv2.VideoWriter(str(drawn_file), cv2.VideoWriter_fourcc(*"mp4v"), fps_in, (w, h))
                writer.write(cv2.cvtColor(draw_fn(rgb, people), cv2.COLOR_RGB2BGR))
            bar.update(1)
            bar.set_postfix(fps=f"{len(frames) / seconds:.1f}" if seconds else "-")
    finally:
        if writer is not None:
            writer.release()
    return frames, seconds, warmup
