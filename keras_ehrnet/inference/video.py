"""Video files, folders of frames, cameras and streams: people per frame, in real time.

    from keras_ehrnet.inference.video import open_source, predict_video
    entry = predict_video(predictor, "clip.mp4", "out/", track=True)   # out/clip.jsonl, out/clip.mp4

Sources (`open_source`): a video file, a folder of frames (sorted by name), a camera index
("0") or a stream URL (rtsp://, http://, …), all read through OpenCV.

The pipeline (`run_pipeline`) overlaps its stages in threads joined by bounded queues:
reading → network → decoding (and tracking) → drawing and writing. On a file every frame is
processed (a full queue makes the reader wait); on a live source (camera, URL) a full queue
drops the oldest waiting frame instead, so a slow model falls behind by at most the queue's
length, never without bound; the dropped count is reported. The network stage can run several
frames side by side, each worker with its own copy of the runtime (`network_workers`), their
results handed on in frame order. `threaded=False` runs the very same stages one after another
(the benchmark's baseline).

Output: one JSON Lines file, a line per processed frame ({"frame", "time", "people"}) written
and flushed as each frame finishes, so whatever was written stays valid if the run dies; and
a drawn video with track ids and an FPS counter.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
from tqdm import tqdm

from keras_ehrnet.inference.decoding import decode_outputs
from keras_ehrnet.inference.drawing import draw_people
from keras_ehrnet.inference.images import IMAGE_SUFFIXES, ImageReadError, read_image, to_rgb_uint8
from keras_ehrnet.inference.tracking import Tracker
from keras_ehrnet.threads import available_cores

log = logging.getLogger("keras_ehrnet.video")

DEFAULT_FPS = 25.0
DEFAULT_QUEUE_SIZE = 2
OPEN_TIMEOUT_MS = 10000


class SourceError(ValueError):
    """A video, folder, camera or stream that cannot be opened (the message names it)."""


class FrameError(ValueError):
    """One frame that cannot be read (a corrupt image in a folder); the others go on."""


def is_stream(spec: str | os.PathLike) -> bool:
    """True for a camera index ("0") or a URL ("rtsp://…", "http://…")."""
    text = str(spec)
    return text.isdigit() or bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text))


class FrameSource:
    """Frames as RGB uint8 arrays: `read()` gives the next one, or None at the end.

    `live`: frames arrive in real time (camera, stream) and may be dropped when processing is
    slow. `fps`: frames per second of the source. `total`: frame count when known.
    `index`: the source index of the frame last read. `end_note`: why reading stopped early
    (a truncated file, a stream that ended), else None.
    """

    name: str = "source"
    live: bool = False
    fps: float = DEFAULT_FPS
    total: int | None = None
    frame_size: tuple[int, int] | None = None  # (height, width) when known before reading

    def __init__(self) -> None:
        self.index = -1
        self.end_note: str | None = None

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class CaptureSource(FrameSource):
    """A video file, camera index or stream URL through `cv2.VideoCapture`."""

    def __init__(self, spec: str | os.PathLike, *, live: bool | None = None):
        super().__init__()
        text = str(spec)
        self.live = is_stream(text) if live is None else bool(live)
        self.name = source_name(text)
        if text.isdigit():
            what = f"camera {text}"
            self._cap = cv2.VideoCapture(int(text))
        else:
            what = f"stream {text}" if is_stream(text) else f"video {text}"
            if not is_stream(text) and not Path(text).is_file():
                raise SourceError(f"cannot open {what}: no such file")
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                OPEN_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                OPEN_TIMEOUT_MS,
            ]
            self._cap = cv2.VideoCapture(text, cv2.CAP_ANY, params)
        self.what = what
        if not self._cap.isOpened():
            self._cap.release()
            reason = "no such device, or it is busy" if text.isdigit() else "not reachable or not a video"
            if not is_stream(text):
                reason = "not a readable video file"
            raise SourceError(f"cannot open {what}: {reason}")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else DEFAULT_FPS
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.total = count if count > 0 and not self.live else None
        h, w = (
            int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
            int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
        )
        self.frame_size = (h, w) if h > 0 and w > 0 else None

    def read(self) -> np.ndarray | None:
        ok, frame = self._cap.read()
        if not ok or frame is None:
            done = self.index + 1
            if self.live:
                self.end_note = f"{self.what} ended after {done} frame(s)"
            elif self.total is not None and done < self.total:
                self.end_note = (
                    f"{self.what} ended at frame {done} of {self.total}: the rest cannot be decoded "
                    "(truncated or corrupt file)"
                )
            elif done == 0:
                self.end_note = f"{self.what} has no readable frames"
            return None
        self.index += 1
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self._cap.release()


class FolderSource(FrameSource):
    """The image files of a folder, sorted by name, as the frames of a video."""

    def __init__(self, folder: str | os.PathLike, *, fps: float = DEFAULT_FPS):
        super().__init__()
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceError(f"cannot open folder of frames {self.folder}: not a folder")
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceError(f"cannot open folder of frames {self.folder}: it holds no image files")
        self.name, self.fps, self.total = source_name(self.folder), float(fps), len(self.files)

    def read(self) -> np.ndarray | None:
        if self.index + 1 >= len(self.files):
            return None
        self.index += 1
        try:
            return read_image(self.files[self.index])
        except ImageReadError as err:
            raise FrameError(f"frame {self.index}: {err}") from None


def source_name(spec: str | os.PathLike) -> str:
    """A file-name stem for a source: "camera0", a URL's host and path (never its password), a stem."""
    text = str(spec)
    if text.isdigit():
        return f"camera{text}"
    if is_stream(text):
        rest = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", text).split("?")[0].split("@")[-1]
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", rest).strip("_.") or "stream"
    return Path(text).stem or Path(text).name


def open_source(
    spec: str | os.PathLike, *, live: bool | None = None, fps: float | None = None
) -> FrameSource:
    """A `FrameSource` for a video file, a folder of frames, a camera index or a stream URL.

    `live` overrides whether frames may be dropped (default: cameras and URLs are live).
    Raises SourceError naming the source when it cannot be opened.
    """
    if not is_stream(spec) and Path(spec).is_dir():
        return FolderSource(spec, fps=fps or DEFAULT_FPS)
    source = CaptureSource(spec, live=live)
    if fps:
        source.fps = float(fps)
    return source


# ----------------------------------------------------------------------------- JSON Lines


class JsonLinesWriter:
    """One JSON object per line, each flushed when written: a killed run leaves whole lines."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        self.lines = 0

    def write(self, record: dict) -> None:
        """Append `record` as one line and flush it to the operating system."""
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        self.lines += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> JsonLinesWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_json_lines(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON Lines file; a last line cut short (a run killed mid-write) is left out."""
    records = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path}: line {number} is not valid JSON") from None
    return records


# ----------------------------------------------------------------------------- the pipeline


@dataclasses.dataclass
class FrameItem:
    """One frame on its way through the pipeline; the stages fill `data` and `people`."""

    index: int
    time: float
    image: np.ndarray
    data: Any = None
    people: list | None = None


@dataclasses.dataclass
class PipelineStats:
    """What a run did: frames read, processed, dropped (live sources only), corrupt frames skipped,
    the most frames ever waiting in one queue, seconds and why reading stopped early (if it did)."""

    read: int = 0
    processed: int = 0
    dropped: int = 0
    corrupt: list[str] = dataclasses.field(default_factory=list)
    max_queued: int = 0
    seconds: float = 0.0
    end_note: str | None = None

    @property
    def fps(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


_DONE = object()
Stage = Callable[[FrameItem], None]


class _Failed:
    def __init__(self, err: BaseException):
        self.err = err


def _frames(
    source: FrameSource, stats: PipelineStats, max_frames: int | None, every: int, stop: threading.Event
) -> Iterator[FrameItem]:
    """Frames to process: every `every`-th of the source, at most `max_frames`; corrupt ones skipped."""
    start = time.perf_counter()
    while not stop.is_set() and (max_frames is None or stats.read < max_frames):
        try:
            image = source.read()
        except FrameError as err:
            log.warning("skipped %s", err)
            stats.corrupt.append(str(err))
            continue
        if image is None:
            stats.end_note = source.end_note
            return
        if source.index % every:
            continue
        t = time.perf_counter() - start if source.live else source.index / source.fps
        stats.read += 1
        yield FrameItem(source.index, round(t, 4), image)


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        with contextlib.suppress(queue.Full):
            q.put(item, timeout=0.1)
            return True
    return False


def _put_dropping(q: queue.Queue, item: Any, stats: PipelineStats, lock: threading.Lock) -> None:
    """Queue `item`; if the queue is full, drop the oldest waiting frame (a live source's rule)."""
    while True:
        try:
            q.put_nowait(item)
            return
        except queue.Full:
            with contextlib.suppress(queue.Empty):
                q.get_nowait()
                with lock:
                    stats.dropped += 1


def run_pipeline(
    source: FrameSource,
    stages: Sequence[Stage | Sequence[Stage]],
    sink: Callable[[FrameItem], None],
    *,
    threaded: bool = True,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    max_frames: int | None = None,
    every: int = 1,
    progress: bool = True,
) -> PipelineStats:
    """Read `source`, run each stage on every frame in order, hand the frame to `sink`.

    `threaded`: reading and each stage run in their own thread, joined by queues of at most
    `queue_size` frames, the sink in the calling thread; else all run one after another.
    A stage given as a list of callables runs in one thread per callable (each may hold its own
    runtime), frames side by side, handed on in their order; run one after another, a list's
    first callable does the work.
    A live source drops the oldest queued frame when the first queue is full; a file never
    drops. An exception in any stage or the sink stops the run and is raised here (the sink
    has by then received every earlier frame).
    """
    if every < 1:
        raise ValueError(f"every must be ≥ 1, got {every}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be ≥ 1, got {max_frames}")
    if queue_size < 1:
        raise ValueError(f"queue_size must be ≥ 1, got {queue_size}")
    stats = PipelineStats()
    total = source.total if source.total is None else -(-source.total // every)
    if max_frames is not None:
        total = min(total, max_frames) if total is not None else max_frames
    bar = tqdm(total=total, desc=source.name, unit="frame", disable=not progress)
    stop = threading.Event()
    start = time.perf_counter()

    def done(item: FrameItem) -> None:
        sink(item)
        stats.processed += 1
        bar.update(1)
        elapsed = time.perf_counter() - start
        bar.set_postfix(fps=f"{stats.processed / elapsed:.1f}", dropped=stats.dropped, refresh=False)

    try:
        if not threaded:
            serial = [stage if callable(stage) else stage[0] for stage in stages]
            for item in _frames(source, stats, max_frames, every, stop):
                for stage in serial:
                    stage(item)
                done(item)
        else:
            _run_threaded(source, stages, done, stats, stop, queue_size, max_frames, every)
    finally:
        stop.set()
        stats.seconds = time.perf_counter() - start
        bar.close()
    return stats


class _InOrder:
    """Hands a stage's results on in the order its workers took them, whichever finishes first.

    Workers share one inbox; taking an item and drawing its ticket happen under one lock, so
    tickets follow the queue's order, and a result is passed on only when its ticket's turn comes.
    """

    def __init__(self) -> None:
        self.take_lock = threading.Lock()
        self.turn = threading.Condition()
        self.next_ticket = 0
        self.next_out = 0

    def take(self, inbox: queue.Queue) -> tuple[int, Any]:
        with self.take_lock:
            item = inbox.get(timeout=0.1)
            ticket = self.next_ticket
            self.next_ticket += 1
            return ticket, item

    def pass_on(self, ticket: int, item: Any, outbox: queue.Queue, stop: threading.Event) -> None:
        with self.turn:
            while self.next_out != ticket and not stop.is_set():
                self.turn.wait(timeout=0.1)
        if stop.is_set():
            return
        _put(outbox, item, stop)
        with self.turn:
            self.next_out += 1
            self.turn.notify_all()


def _run_threaded(
    source: FrameSource,
    stages: Sequence[Stage | Sequence[Stage]],
    done: Callable[[FrameItem], None],
    stats: PipelineStats,
    stop: threading.Event,
    queue_size: int,
    max_frames: int | None,
    every: int,
) -> None:
    queues = [queue.Queue(maxsize=queue_size) for _ in range(len(stages) + 1)]
    lock = threading.Lock()

    def reader() -> None:
        try:
            for item in _frames(source, stats, max_frames, every, stop):
                if source.live:
                    _put_dropping(queues[0], item, stats, lock)
                elif not _put(queues[0], item, stop):
                    return
                stats.max_queued = max(stats.max_queued, queues[0].qsize())
            _put(queues[0], _DONE, stop)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            _put(queues[0], _Failed(err), stop)

    def worker(
        stage: Stage, inbox: queue.Queue, outbox: queue.Queue, order: _InOrder, ended: threading.Event
    ) -> None:
        while not stop.is_set() and not ended.is_set():
            try:
                ticket, item = order.take(inbox)
            except queue.Empty:
                continue
            last = item is _DONE or isinstance(item, _Failed)
            if not last:
                try:
                    stage(item)
                except BaseException as err:  # noqa: BLE001
                    item = _Failed(err)
            order.pass_on(ticket, item, outbox, stop)
            stats.max_queued = max(stats.max_queued, outbox.qsize())
            if last:
                ended.set()  # the stage's other workers stop taking: nothing comes after the end
                return

    threads = [threading.Thread(target=reader, name="video-read", daemon=True)]
    for k, stage in enumerate(stages):
        workers = [stage] if callable(stage) else list(stage)
        order, ended = _InOrder(), threading.Event()
        for j, fn in enumerate(workers):
            threads.append(
                threading.Thread(
                    target=worker,
                    args=(fn, queues[k], queues[k + 1], order, ended),
                    name=f"video-stage{k}.{j}",
                    daemon=True,
                )
            )
    for t in threads:
        t.start()
    try:
        while True:
            item = queues[-1].get()
            if item is _DONE:
                break
            if isinstance(item, _Failed):
                raise item.err
            done(item)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)


# ----------------------------------------------------------------------------- model stages and output


def network_replicas(predictor: Any, workers: int) -> list[Any]:
    """`workers` predictors that run the same artefact side by side, its threads divided between
    them (`Runner.replicas`); just `[predictor]` for one worker or a runtime that cannot. Made
    once per predictor and worker count and kept on the predictor, so a run over many videos
    (or a benchmark's repeats) does not load its sessions again for each."""
    if workers <= 1 or not getattr(predictor.runner, "replicable", False):
        return [predictor]
    cache = predictor.__dict__.setdefault("_network_replicas", {})
    if workers not in cache:
        replicas = []
        for runner in predictor.runner.replicas(workers):
            twin = copy.copy(predictor)
            twin.runner = runner
            twin._warm = set()
            twin.__dict__.pop("_network_replicas", None)
            replicas.append(twin)
        cache[workers] = replicas
    return cache[workers]


def default_network_workers(predictor: Any) -> int:
    """Network workers for a threaded run: one per core up to 4 where the runtime can be
    replicated (two single-threaded sessions side by side keep a small model's cores busier than
    one two-threaded session, and leave the decoder a core when the network waits), else 1."""
    cores = available_cores()
    if cores < 2 or not getattr(predictor.runner, "replicable", False):
        return 1
    return min(cores, 4)


def predictor_stages(predictor: Any, tracker: Any = None, *, replicas: Sequence[Any] = ()) -> list:
    """The model's two stages: the network (pre-processing included), then decoding (and tracking).

    With `replicas` (predictors from `network_replicas`) the network stage is a list, one
    callable per replica, for `run_pipeline` to run side by side."""

    def network_of(runner_owner: Any) -> Stage:
        def network(item: FrameItem) -> None:
            image = to_rgb_uint8(item.image, f"frame {item.index}")
            plan = runner_owner.plan(image.shape[:2])
            item.data = (plan, runner_owner.network_outputs(image, plan))

        return network

    def decode(item: FrameItem) -> None:
        plan, outputs = item.data
        people = decode_outputs(outputs, plan, predictor.config).people(predictor.min_score)
        item.data = None
        item.people = tracker.update(people, frame=item.index) if tracker is not None else people

    network = [network_of(r) for r in replicas] if len(replicas) > 1 else network_of(predictor)
    return [network, decode]


class FpsCounter:
    """Frames per second over the last `window` seconds of finished frames."""

    def __init__(self, window: float = 2.0):
        self.window = window
        self.times: collections.deque = collections.deque()

    def tick(self) -> float:
        now = time.perf_counter()
        self.times.append(now)
        while len(self.times) > 2 and now - self.times[0] > self.window:
            self.times.popleft()
        span = self.times[-1] - self.times[0]
        return (len(self.times) - 1) / span if span > 0 else 0.0


def draw_fps(image: np.ndarray, fps: float, extra: str = "") -> np.ndarray:
    """Write "FPS 12.3" (and `extra`) in the top-left corner of `image`, in place."""
    text = f"FPS {fps:.1f}{'  ' + extra if extra else ''}"
    scale = max(0.5, image.shape[0] / 960)
    thick = max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    cv2.rectangle(image, (0, 0), (w + 12, h + base + 12), (0, 0, 0), -1)
    cv2.putText(image, text, (6, h + 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return image


class VideoSink:
    """Writes each finished frame: a JSON Lines record and (optionally) the drawn frame."""

    def __init__(
        self,
        jsonl: str | os.PathLike | None,
        video: str | os.PathLike | None,
        fps: float,
        *,
        draw_fn: Callable | None = None,
    ):
        self.writer = JsonLinesWriter(jsonl) if jsonl is not None else None
        self.video_path = Path(video) if video is not None else None
        self.fps_out = fps
        self.draw_fn = draw_fn or draw_people
        self.counter = FpsCounter()
        self.people = 0
        self._video: Any = None

    def __call__(self, item: FrameItem) -> None:
        people = item.people or []
        self.people += len(people)
        fps = self.counter.tick()
        if self.writer is not None:
            self.writer.write(
                {"frame": item.index, "time": item.time, "people": [p.to_dict() for p in people]}
            )
        if self.video_path is not None:
            drawn = draw_fps(self.draw_fn(item.image, people), fps)
            if self._video is None:
                h, w = drawn.shape[:2]
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                self._video = cv2.VideoWriter(str(self.video_path), fourcc, self.fps_out, (w, h))
                if not self._video.isOpened():
                    raise OSError(f"cannot write video {self.video_path}")
            self._video.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        """Finish the files (the video is playable after this)."""
        if self.writer is not None:
            self.writer.close()
        if self._video is not None:
            self._video.release()
            self._video = None


def predict_video(
    predictor: Any,
    source: str | os.PathLike | FrameSource,
    out_dir: str | os.PathLike | None,
    *,
    stem: str | None = None,
    draw: bool = True,
    draw_fn: Callable | None = None,
    track: bool = False,
    tracker: Any = None,
    max_frames: int | None = None,
    every: int = 1,
    threaded: bool = True,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    network_workers: int | None = None,
    progress: bool = True,
) -> dict:
    """People in every frame of a video, folder of frames, camera or stream.

    Writes `<stem>.jsonl` (a line per frame: index, time in seconds, people with keypoints,
    score, box and, with `track`, `track_id`) and `<stem>.mp4` (drawn, with ids and an FPS
    counter) into `out_dir`. Returns a summary: frames processed, dropped (live sources) and
    skipped as corrupt, seconds, frames per second (end to end: reading to writing), and
    "note" when the source ended early. Raises SourceError when it cannot be opened.

    `network_workers` (threaded runs): frames run through the network side by side in this many
    threads, each with its own copy of the runtime and a share of its threads; default
    `default_network_workers` (one per core up to 4 for ONNX Runtime, TFLite and fixed-size
    OpenVINO files, else 1).
    """
    if network_workers is not None and network_workers < 1:
        raise ValueError(f"network_workers must be ≥ 1, got {network_workers}")
    if track and tracker is None:
        tracker = Tracker()
    src = source if isinstance(source, FrameSource) else open_source(source)
    stem = stem or src.name
    out = Path(out_dir) if out_dir is not None else None
    jsonl = out / f"{stem}.jsonl" if out is not None else None
    video = out / f"{stem}.mp4" if out is not None and draw else None
    workers = 1
    if threaded:
        workers = network_workers if network_workers is not None else default_network_workers(predictor)
    replicas = network_replicas(predictor, workers)
    stages = predictor_stages(predictor, tracker, replicas=replicas)
    networks = stages[0] if isinstance(stages[0], list) else [stages[0]]
    warm_lock, warm = threading.Lock(), {"seconds": 0.0}

    def warmed(owner: Any, network: Stage) -> Stage:
        def warm_network(item: FrameItem) -> None:  # one-time costs (graph tracing) kept out of the FPS
            spent = owner.warmup(item.image.shape[:2])
            with warm_lock:  # replicas warm up side by side: count the longest, not the sum
                warm["seconds"] = max(warm["seconds"], spent)
            network(item)

        return warm_network

    wrapped = [warmed(owner, net) for owner, net in zip(replicas, networks)]
    with src:
        # warm up before the first read where the frame size is known, so a live source does not
        # drop the frames that arrive while the graph is traced
        prewarm = sum(r.warmup(src.frame_size) for r in replicas) if src.frame_size else 0.0
        sink = VideoSink(jsonl, video, src.fps / every, draw_fn=draw_fn)
        try:
            stats = run_pipeline(
                src,
                [wrapped if len(wrapped) > 1 else wrapped[0], *stages[1:]],
                sink,
                threaded=threaded,
                queue_size=queue_size,
                max_frames=max_frames,
                every=every,
                progress=progress,
            )
        finally:
            sink.close()
    stats.seconds = max(stats.seconds - warm["seconds"], 1e-9)
    if not stats.processed:
        raise SourceError(stats.end_note or f"{src.name}: no frame could be read")
    if stats.end_note:
        log.warning("%s", stats.end_note)
    entry = {
        "input": str(source if not isinstance(source, FrameSource) else src.name),
        "kind": "stream" if src.live else "video",
        "frames": stats.processed,
        "dropped": stats.dropped,
        "corrupt": stats.corrupt,
        "seconds": stats.seconds,
        "warmup_seconds": prewarm + warm["seconds"],
        "fps": stats.fps,
        "network_workers": len(replicas),
        "people": sink.people,
        "tracks": (tracker.next_id - 1) if tracker is not None else None,
    }
    if stats.end_note:
        entry["note"] = stats.end_note
    if jsonl is not None:
        entry["jsonl"] = entry["json"] = str(jsonl)
    if video is not None:
        entry["drawn"] = str(video)
    return entry
