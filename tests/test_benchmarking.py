"""Benchmark and report logic (statistics, skips, tables, plots); timings themselves are never asserted."""

import itertools

import cv2
import numpy as np
import pytest
from conftest import cached_model

from keras_ehrnet.metrics.benchmarking import (
    CpuMeter,
    Skipped,
    floor_ms,
    latency_markdown,
    prepare_runtime,
    time_callable,
)
from keras_ehrnet.metrics.reporting import (
    ae_score,
    plot_ap_vs_gmacs,
    plot_latency,
    report_markdown,
    report_rows,
)


def test_time_callable_statistics_with_a_scripted_clock():
    durations_ms = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0]
    ticks = itertools.chain.from_iterable((0.0, d / 1000.0) for d in durations_ms)
    calls = []
    stats = time_callable(lambda: calls.append(1), warmup=2, runs=6, clock=lambda: next(ticks))
    assert len(calls) == 8  # warm-up calls are made but not timed
    assert stats.median_ms == pytest.approx(3.5)
    assert stats.min_ms == pytest.approx(1.0) and stats.max_ms == pytest.approx(10.0)
    assert stats.p90_ms == pytest.approx(np.percentile(durations_ms, 90))
    assert stats.fps == pytest.approx(1000 / 3.5)
    with pytest.raises(ValueError, match="runs"):
        time_callable(lambda: None, runs=0)


def test_cpu_meter_separates_other_processes_from_the_vm_hosts_steal(tmp_path):
    import os

    tick = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    #             user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  1000 0 200 5000 100 0 0 300 0 0\ncpu0 1 2 3 4\n")
    own = iter([10.0, 10.0 + 250 / tick])  # this process: 250 ticks of CPU meanwhile
    meter = CpuMeter(stat, process_time=lambda: next(own))
    with meter:
        stat.write_text("cpu  1400 0 300 5100 100 0 0 900 0 0\n")
    # 400 + 100 ticks of busy time, 250 of them ours; 600 ticks of steal; 1200 ticks in all
    assert meter.result() == {"foreign_cpu_frac": round(250 / 1200, 4), "cpu_steal_frac": 0.5}
    warning = meter.warning()
    assert "50%" in warning and "steal" in warning and "21%" in warning
    assert meter.warning(threshold=0.6) is None

    quiet = CpuMeter(stat, process_time=lambda: 0.0)
    with quiet:
        stat.write_text("cpu  1500 0 300 5200 100 0 0 900 0 0\n")  # no steal; busy, none of it ours
    assert quiet.result() == {"foreign_cpu_frac": 0.5, "cpu_steal_frac": 0.0}
    assert "steal" not in quiet.warning() and "other processes used 50%" in quiet.warning()

    missing = CpuMeter(tmp_path / "no-such-stat")
    with missing:
        pass
    assert missing.result() == {"foreign_cpu_frac": None, "cpu_steal_frac": None}
    assert missing.warning() is None


def test_floor_is_two_flops_per_mac():
    assert floor_ms(1_807_480_224, 224.0) == pytest.approx(2 * 1.807480224 / 224 * 1000)


def test_runtimes_that_cannot_run_here_are_skipped_with_the_reason(tmp_path):
    model = cached_model("H-4")
    with pytest.raises(ValueError, match="unknown runtime 'tpu'"):
        prepare_runtime(model, "tpu", (64, 64), tmp_path)
    import tensorflow as tf

    if tf.sysconfig.get_build_info().get("is_tensorrt_build"):
        pytest.skip("this TensorFlow has TensorRT")
    with pytest.raises(Skipped, match="TensorRT"):
        prepare_runtime(model, "tftrt", (64, 64), tmp_path)


def test_keras_folded_runtime_runs_the_same_network(tmp_path):
    model = cached_model("H-4")
    run = prepare_runtime(model, "keras", (64, 64), tmp_path)
    folded = prepare_runtime(model, "keras-folded", (64, 64), tmp_path)
    a, b = run(), folded()
    assert [x.shape for x in a] == [x.shape for x in b] == [(1, 16, 16, 34), (1, 32, 32, 17)]


def test_report_rows_efficiency_and_ae():
    levels = [
        {"level": "H-4", "input_size": 384, "params": 2_764_706, "gmacs": 1.807, "ap": 35.0},
        {"level": "H0", "input_size": 512, "params": 19_725_359, "gmacs": 23.958},
    ]
    latency = {"H-4": {"onnx": 40.0, "tflite-int8": 20.0, "tftrt": None}, "H0": {"onnx": 400.0}}
    rows = report_rows(levels, latency, watts=10.0)
    h4, h0 = rows
    assert h4["fps"] == {"onnx": 25.0, "tflite-int8": 50.0, "tftrt": None}
    assert h4["best_runtime"] == "tflite-int8" and h4["efficiency"] == pytest.approx(5.0)
    assert h4["ae"] == pytest.approx(35.0 * 50.0 / 10.0)
    assert h0["ae"] is None  # no AP, no Æ
    assert h4["paper_ae"] == pytest.approx(round(ae_score(35.7, 50.96, 15.0), 2))
    table = report_markdown(rows, ["onnx", "tflite-int8", "tftrt"], 10.0, "test CPU")
    assert "power 10 W" in table and "| H-4 | 384 | 2.76 M |" in table
    assert "| 25.0 | 50.0 | – |" in table


def test_latency_table_lists_skips():
    rows = [
        {
            "level": "H-4",
            "input_size": 384,
            "runtimes": {
                "onnx": {
                    "latency": {"median_ms": 40.0, "p90_ms": 41.0, "min_ms": 39.0, "fps": 25.0},
                    "x_floor": 2.5,
                },
                "tensorrt": {"skipped": "no TensorRT here;\n  build it with:\n  trtexec --onnx=a|b"},
            },
        }
    ]
    table = latency_markdown(rows, ["onnx", "tensorrt"])
    assert "| H-4 | 384 | onnx | 40.0 | 41.0 | 39.0 | 25.0 |" in table
    assert "skipped: no TensorRT here; build it with: trtexec --onnx=a\\|b" in table
    assert all(line.startswith("|") for line in table.splitlines())  # a reason never breaks the table


def test_plots_are_written(tmp_path):
    rows = report_rows(
        [{"level": "H-4", "input_size": 384, "params": 1, "gmacs": 1.807}], {"H-4": {"onnx": 40.0}}, 15
    )
    for path in (
        plot_ap_vs_gmacs(rows, tmp_path / "ap.png"),
        plot_latency({"H-4": {"onnx": 40.0, "keras": 80.0}}, tmp_path / "lat.png"),
    ):
        image = cv2.imread(str(path))
        assert image is not None and image.shape[0] > 200 and image.shape[1] > 300


def test_ratios_against_the_reference_are_paired_round_by_round():
    from evaluation.benchmark.latency import paired_ratios

    ours = {"median_ms": 40.0, "round_medians_ms": [44.0, 40.0, 30.0]}
    # a loaded spell in round 1 slowed both; the per-round ratios see through it
    got = paired_ratios(ours, [55.0, 40.0, 30.0], {"median_ms": 42.0})
    assert got["ratio_vs_ref_ort_rounds"] == [0.8, 1.0, 1.0]
    assert got["ratio_vs_ref_ort_paired"] == 1.0
    assert got["ratio_vs_ref_ort_from_pixels"] == round(40.0 / 42.0, 3)
    assert paired_ratios(ours, [40.0], {}) == {}  # rounds that do not pair up give no paired figure
    entry = {"latency": {"median_ms": 40.0, "p90_ms": 41.0, "min_ms": 39.0, "fps": 25.0}, **got}
    entry["ratio_vs_ref_ort"] = 0.952
    table = latency_markdown([{"level": "H-4", "input_size": 384, "runtimes": {"onnx": entry}}], ["onnx"])
    assert "| 0.952 | 1.0 (0.800–1.000) | 0.952 |" in table
