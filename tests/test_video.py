"""Video pipeline: every frame of a file, drops on slow live sources, clear ends, JSON Lines always valid."""

import json
import os
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from keras_ehrnet.inference.oracle import oracle_maps
from keras_ehrnet.inference.predictor import Predictor
from keras_ehrnet.inference.video import (
    FrameSource,
    JsonLinesWriter,
    SourceError,
    open_source,
    predict_video,
    read_json_lines,
    run_pipeline,
)

SIZE = (240, 320)


class FakeSource(FrameSource):
    """`count` small frames, produced every `interval` seconds; live or a file."""

    def __init__(self, count, *, live, interval=0.0, fail_at=None):
        super().__init__()
        self.count, self.live, self.interval, self.fail_at = count, live, interval, fail_at
        self.name, self.total = "fake", None if live else count

    def read(self):
        if self.index + 1 >= self.count:
            self.end_note = f"stream fake ended after {self.count} frame(s)" if self.live else None
            return None
        time.sleep(self.interval)
        self.index += 1
        return np.full((8, 8, 3), self.index % 256, np.uint8)


def slow_stage(seconds):
    def stage(item):
        time.sleep(seconds)
        item.people = []

    return stage


def test_a_file_is_processed_whole_and_in_order_through_the_threads():
    seen = []
    stats = run_pipeline(
        FakeSource(30, live=False), [slow_stage(0.004), slow_stage(0.001)], lambda it: seen.append(it.index),
        queue_size=1, progress=False,
    )  # fmt: skip
    assert seen == list(range(30)) and stats.dropped == 0 and stats.processed == 30


def test_a_slow_model_on_a_live_source_drops_frames_instead_of_queueing_them():
    seen = []
    source = FakeSource(60, live=True, interval=0.001)
    stats = run_pipeline(
        source, [slow_stage(0.02)], lambda it: seen.append(it.index), queue_size=2, progress=False
    )
    assert stats.dropped > 20  # the model takes ~20 frame times per frame
    assert stats.processed + stats.dropped == stats.read == 60
    assert stats.max_queued <= 2  # bounded: it never grew past the queue size
    assert seen == sorted(seen) and len(seen) == stats.processed
    assert stats.end_note == "stream fake ended after 60 frame(s)"


def test_sequential_and_every_and_max_frames():
    seen = []
    stats = run_pipeline(
        FakeSource(20, live=False), [slow_stage(0)], lambda it: seen.append(it.index),
        threaded=False, every=3, max_frames=4, progress=False,
    )  # fmt: skip
    assert seen == [0, 3, 6, 9] and stats.processed == 4
    with pytest.raises(ValueError, match="every"):
        run_pipeline(FakeSource(2, live=False), [], print, every=0, progress=False)


def test_a_stage_run_by_several_workers_hands_frames_on_in_order():
    import random
    import threading

    rng, lock, by_worker = random.Random(0), threading.Lock(), {}

    def worker(k):
        def stage(item):
            with lock:
                pause = rng.uniform(0, 0.01)  # frames finish out of order
                by_worker[k] = by_worker.get(k, 0) + 1
            time.sleep(pause)
            item.people = [k]

        return stage

    seen = []
    stats = run_pipeline(
        FakeSource(40, live=False), [[worker(0), worker(1), worker(2)], slow_stage(0)],
        lambda it: seen.append(it.index), queue_size=2, progress=False,
    )  # fmt: skip
    assert seen == list(range(40)) and stats.processed == 40 and stats.dropped == 0
    assert len(by_worker) > 1 and sum(by_worker.values()) == 40  # really side by side, each frame once
    seen.clear()  # run one after another, a list's first callable does the work
    run_pipeline(
        FakeSource(5, live=False), [[worker(7), worker(8)]], lambda it: seen.append(it.people[0]),
        threaded=False, progress=False,
    )  # fmt: skip
    assert seen == [7] * 5


def test_a_failing_parallel_worker_stops_the_run_after_the_frames_before_it(tmp_path):
    def stage(item):
        time.sleep(0.002 * (item.index % 3))
        if item.index == 5:
            raise RuntimeError("model failed on frame 5")

    path = tmp_path / "out.jsonl"
    with JsonLinesWriter(path) as writer, pytest.raises(RuntimeError, match="frame 5"):
        run_pipeline(
            FakeSource(20, live=False), [[stage, stage]], lambda it: writer.write({"frame": it.index}),
            progress=False,
        )  # fmt: skip
    assert [r["frame"] for r in read_json_lines(path)] == [0, 1, 2, 3, 4]


def test_parallel_workers_on_a_live_source_still_drop_rather_than_queue():
    seen = []
    stats = run_pipeline(
        FakeSource(80, live=True, interval=0.001), [[slow_stage(0.02), slow_stage(0.02)]],
        lambda it: seen.append(it.index), queue_size=2, progress=False,
    )  # fmt: skip
    assert stats.dropped > 20 and stats.max_queued <= 2
    assert stats.processed + stats.dropped == stats.read == 80 and seen == sorted(seen)


def test_a_failing_stage_stops_the_run_and_the_lines_written_stay_valid(tmp_path):
    def boom(item):
        if item.index == 3:
            raise RuntimeError("model failed on frame 3")

    path = tmp_path / "out.jsonl"
    with JsonLinesWriter(path) as writer, pytest.raises(RuntimeError, match="frame 3"):
        run_pipeline(
            FakeSource(10, live=False), [boom], lambda it: writer.write({"frame": it.index}), progress=False
        )
    assert [r["frame"] for r in read_json_lines(path)] == [0, 1, 2]


def test_json_lines_survive_a_run_killed_mid_write(tmp_path):
    path = tmp_path / "killed.jsonl"
    pid = os.fork()
    if pid == 0:  # the child writes three frames and dies without closing the file
        writer = JsonLinesWriter(path)
        for i in range(3):
            writer.write({"frame": i, "people": []})
        os._exit(9)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9
    assert [r["frame"] for r in read_json_lines(path)] == [0, 1, 2]
    path.write_text(path.read_text() + '{"frame": 3, "peo')  # a line cut short
    assert len(read_json_lines(path)) == 3


def _root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


class StillPeople:
    """A stand-in network that sees two people at fixed places of its input."""

    name, num_joints, fixed_input_size = "still", 17, None

    def __call__(self, images):
        h, w = images.shape[1:3]
        kp = np.zeros((2, 17, 3))
        for n, x in enumerate((0.3 * w, 0.7 * w)):
            kp[n, :, 0] = x + np.linspace(-10, 10, 17)
            kp[n, :, 1] = np.linspace(0.2 * h, 0.8 * h, 17)
            kp[n, :, 2] = 2
        quarter, half = oracle_maps(kp, (h, w))
        return np.repeat(quarter[None], len(images), 0), np.repeat(half[None], len(images), 0)


def write_video(path, frames=6):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, SIZE[::-1])
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8))
    writer.release()
    return path


@pytest.fixture(scope="module")
def predictor():
    return Predictor(StillPeople(), input_size=256, flip=False)


def test_predict_video_writes_tracked_json_lines_and_a_drawn_video(tmp_path, predictor):
    video = write_video(tmp_path / "clip.avi")
    entry = predict_video(predictor, video, tmp_path / "out", track=True, progress=False)
    lines = read_json_lines(tmp_path / "out" / "clip.jsonl")
    assert [r["frame"] for r in lines] == list(range(6)) and entry["frames"] == 6 and entry["dropped"] == 0
    assert lines[2]["time"] == pytest.approx(0.2)
    assert all(sorted(p["track_id"] for p in r["people"]) == [1, 2] for r in lines)
    assert len(lines[0]["people"][0]["keypoints"]) == 17 and entry["tracks"] == 2
    cap = cv2.VideoCapture(entry["drawn"])
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    ok, frame = cap.read()
    assert ok and frame.shape[:2] == SIZE
    corner = frame[2:20, 2:60]  # the FPS counter: white text on a black box, top-left
    assert (corner < 40).mean() > 0.5 and (corner > 200).any()
    entry = predict_video(predictor, video, tmp_path / "every", every=2, max_frames=2, progress=False)
    assert [r["frame"] for r in read_json_lines(tmp_path / "every" / "clip.jsonl")] == [0, 2]
    assert "track_id" not in read_json_lines(tmp_path / "every" / "clip.jsonl")[0]["people"][0]


class ReplicableStillPeople(StillPeople):
    """StillPeople that can be replicated like ONNX Runtime; each replica counts its frames."""

    replicable, num_threads = True, 2

    def __init__(self):
        self.calls = 0
        self.made: list = []

    def __call__(self, images):
        self.calls += 1
        return super().__call__(images)

    def replicas(self, count):
        self.made = [ReplicableStillPeople() for _ in range(count)]
        return self.made


def test_network_workers_run_replicas_side_by_side_and_give_the_sequential_lines(tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=12)
    runner = ReplicableStillPeople()
    predictor = Predictor(runner, input_size=256, flip=False)
    one = predict_video(predictor, video, tmp_path / "seq", track=True, threaded=False, progress=False)
    two = predict_video(predictor, video, tmp_path / "par", track=True, network_workers=2, progress=False)
    assert one["network_workers"] == 1 and two["network_workers"] == 2 and two["frames"] == 12
    assert [r.calls > 0 for r in runner.made] == [True, True]  # both replicas ran frames
    assert sum(r.calls for r in runner.made) >= 12
    strip = lambda rows: [(r["frame"], r["people"]) for r in rows]  # noqa: E731
    assert strip(read_json_lines(tmp_path / "par" / "clip.jsonl")) == strip(
        read_json_lines(tmp_path / "seq" / "clip.jsonl")
    )
    with pytest.raises(ValueError, match="network_workers"):
        predict_video(predictor, video, tmp_path / "bad", network_workers=0, progress=False)


def test_a_truncated_video_says_where_it_ended_and_keeps_what_was_written(tmp_path, predictor):
    video = write_video(tmp_path / "cut.avi", frames=10)
    data = video.read_bytes()
    video.write_bytes(data[: int(len(data) * 0.55)])
    entry = predict_video(predictor, video, tmp_path / "out", draw=False, progress=False)
    assert 0 < entry["frames"] < 10
    assert entry["note"] == (
        f"video {video} ended at frame {entry['frames']} of 10: the rest cannot be decoded (truncated or corrupt file)"
    )
    assert len(read_json_lines(tmp_path / "out" / "cut.jsonl")) == entry["frames"]


def test_a_corrupt_frame_in_a_folder_is_skipped_with_its_name(tmp_path, predictor):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(4):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((*SIZE, 3), 60 * i, np.uint8))
    (folder / "002.png").write_bytes(b"\x89PNG broken")
    entry = predict_video(predictor, folder, tmp_path / "out", track=True, progress=False)
    assert entry["frames"] == 3 and len(entry["corrupt"]) == 1
    assert entry["corrupt"][0].startswith("frame 2: cannot decode image") and "002.png" in entry["corrupt"][0]
    assert [r["frame"] for r in read_json_lines(tmp_path / "out" / "frames.jsonl")] == [0, 1, 3]


def test_sources_that_do_not_open_say_so_in_one_line(tmp_path):
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "missing.mp4"): "cannot open video .*missing.mp4: no such file",
        str(tmp_path / "junk.mp4"): "cannot open video .*junk.mp4: not a readable video file",
        str(tmp_path / "empty"): "cannot open folder of frames .*empty: it holds no image files",
        "99": "cannot open camera 99: no such device, or it is busy",
        "rtsp://127.0.0.1:9/none": "cannot open stream rtsp://127.0.0.1:9/none: not reachable or not a video",
    }
    for spec, message in cases.items():
        with pytest.raises(SourceError, match=message) as info:
            open_source(spec)
        assert "\n" not in str(info.value)


@pytest.mark.slow
def test_predict_program_reports_a_stream_that_does_not_open(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "evaluation.predict", "--level", "H-4", "--track", "--quiet", "99",
         "--out", str(tmp_path / "out")],
        cwd=str(_root()), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "skipped 99: cannot open camera 99: no such device, or it is busy" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["frames"] == 0


def test_benchmark_video_fits_the_pan_scene_into_the_frame_with_bars(tmp_path):
    from evaluation.benchmark.video import write_benchmark_video

    path = write_benchmark_video(tmp_path / "pan.avi", 8, (320, 240), "pan")
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 8 and frames[0].shape == (240, 320, 3)
    # the 640x400 sample image scaled by 0.5 is 320x200: 20-pixel black bars above and below
    assert frames[0][:16].max() < 30 and frames[0][-16:].max() < 30 and frames[0][100:140].std() > 10


def test_network_replicas_are_made_once_per_predictor_and_count():
    from keras_ehrnet.inference.video import network_replicas

    runner = ReplicableStillPeople()
    predictor = Predictor(runner, input_size=256, flip=False)
    two = network_replicas(predictor, 2)
    assert network_replicas(predictor, 2) is two and [r.runner for r in two] == runner.made
    assert len(network_replicas(predictor, 3)) == 3 and network_replicas(predictor, 1) == [predictor]
    assert all(not hasattr(r, "_network_replicas") for r in two)  # a replica holds no copies of its own
