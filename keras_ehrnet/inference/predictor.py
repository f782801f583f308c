"""One predictor over every runtime: image in, people out.

    predictor = Predictor("model.keras")        # or a keras.Model, SavedModel dir, .tflite, .onnx
    people = predictor.predict(image_rgb_uint8)  # [Person(keypoints [J, 3], score, box), …]

The same pre-processing (`keras_ehrnet.inference.transforms`) and decoding
(`keras_ehrnet.inference.decoding`) run whatever executes the network, so an exported
artefact is measured exactly like the original model. Also here: reading
images with clear errors, and the image/folder loop behind `python -m evaluation.predict`
(videos: `keras_ehrnet.inference.video`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from keras_ehrnet.deploy.runtimes import Runner, load_runner
from keras_ehrnet.fileio import OutputPathError, atomic_path, atomic_write_json, one_line
from keras_ehrnet.inference.decoding import (
    DecodeConfig,
    DecodeResult,
    Person,
    ScaleOutputs,
    decode_outputs,
)
from keras_ehrnet.inference.drawing import draw_people
from keras_ehrnet.inference.images import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    ImageReadError,
    read_image,
    to_rgb_uint8,
)
from keras_ehrnet.inference.tracking import Tracker
from keras_ehrnet.inference.transforms import DEFAULT_SIZE_MULTIPLE, TestPlan, make_test_plan, warp_image
from keras_ehrnet.inference.video import predict_video
from keras_ehrnet.keypoints import COCO_NAMES

log = logging.getLogger("keras_ehrnet.inference.predictor")

DEFAULT_INPUT_SIZE = 512


def as_runner(model_or_path: Any) -> Runner:
    """A Runner for a keras.Model, a model path (.keras, SavedModel, .tflite, .onnx, engine) or a Runner."""
    if isinstance(model_or_path, (str, os.PathLike)):
        path = Path(model_or_path)
        if not path.exists():
            raise FileNotFoundError(f"model not found: {path}")
        return load_runner(path)
    if callable(model_or_path) and hasattr(model_or_path, "fixed_input_size"):
        return model_or_path  # already a Runner
    import keras

    if isinstance(model_or_path, keras.Model):
        return load_runner(model_or_path)
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


class Predictor:
    """Multi-person pose from images with any runtime; the same pre-processing and decoding for all.

    `model_or_path`: a keras.Model, a `keras_ehrnet.deploy.runtimes` Runner, or a path to a
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
        if keypoint_names is None and self.num_joints == len(COCO_NAMES):
            keypoint_names = COCO_NAMES
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

    def track(self, frames: Iterable[np.ndarray], tracker: Any = None) -> Iterator[list]:
        """People with a `track_id` for each of `frames` (RGB images, in order), frame by frame.

        `tracker`: a `keras_ehrnet.inference.tracking.Tracker` (default: a new one); ids stay
        while a person stays in view and survive a few missed frames."""
        tracker = tracker if tracker is not None else Tracker()
        for frame in frames:
            yield tracker.update(self.predict(frame))

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
    **video_options: Any,
) -> dict:
    """Predict on images, folders and videos; write JSON (and drawn images/videos) to `out_dir`.

    Videos go through `keras_ehrnet.inference.video.predict_video` (`<stem>.jsonl`, a line
    per frame, and `<stem>.mp4`); `video_options` are its options (`track`, `max_frames`, …).

    Unreadable or missing files, and inputs the model or runtime fails on (an image too
    large for memory, a runtime error), are skipped and listed under "skipped" with the
    reason; the rest are still predicted. Image outputs are written atomically. Returns a summary:
    per-input people counts, frames, seconds and frames per second (for images prediction only:
    file I/O and drawing left out; for videos end to end, reading to writing; the one-time
    warm-up per input size, in "warmup_seconds", is left out of both).
    """
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
            stem = _unique_stem(out, item.path.stem, used) if out is not None else None
            entry = predict_video(
                predictor,
                item.path,
                out,
                stem=stem,
                draw=draw,
                progress=progress,
                draw_fn=draw_fn,
                **video_options,
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
