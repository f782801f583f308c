"""Honest latency measurement: warm-up, many runs, robust statistics, machine facts.

Used by the profile and benchmark programs. Timing lives here, never in tests.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from keras_ehrnet.deploy.artefact import RuntimeUnavailableError
from keras_ehrnet.threads import set_tf_threads


@dataclasses.dataclass
class LatencyStats:
    """Milliseconds per call over the timed runs (warm-up discarded)."""

    median_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float
    runs: int
    warmup: int
    foreign_cpu_frac: float | None = None  # share of machine CPU used by other processes meanwhile
    cpu_steal_frac: float | None = None  # share the VM host took for other guests meanwhile
    cpu_median_ms: float | None = (
        None  # this process's CPU time per call: steadier than wall time on a busy machine
    )

    @property
    def fps(self) -> float:
        return 1000.0 / self.median_ms if self.median_ms > 0 else float("inf")

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["fps"] = round(self.fps, 2)
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()}


def time_callable(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    runs: int = 15,
    clock: Callable[[], float] = time.perf_counter,
) -> LatencyStats:
    """Time `fn()` after `warmup` calls; the result of each call is materialised by `fn` itself."""
    if runs < 1:
        raise ValueError(f"runs must be ≥ 1, got {runs}")
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    with CpuMeter() as meter:
        for _ in range(runs):
            c0, t0 = time.process_time(), clock()
            fn()
            times.append((clock() - t0) * 1000.0)
            cpu.append((time.process_time() - c0) * 1000.0)
    times_sorted = sorted(times)
    return LatencyStats(
        median_ms=statistics.median(times),
        p90_ms=float(np.percentile(times_sorted, 90)),
        min_ms=times_sorted[0],
        max_ms=times_sorted[-1],
        mean_ms=statistics.fmean(times),
        runs=runs,
        warmup=warmup,
        cpu_median_ms=statistics.median(cpu),
        **meter.result(),
    )


@dataclasses.dataclass(frozen=True)
class CpuTimes:
    """Machine-wide CPU seconds from /proc/stat, and this process's own CPU seconds."""

    busy: float  # user, nice, system, irq, softirq: work done inside this machine
    steal: float  # taken by the hypervisor for other guests (a contended VM host)
    total: float
    own: float


def cpu_times(
    stat_path: str | os.PathLike = "/proc/stat", process_time: Callable[[], float] = time.process_time
) -> CpuTimes | None:
    """A snapshot of the machine's CPU accounting; None where /proc/stat is missing (not Linux)."""
    try:
        with open(stat_path) as f:
            fields = [float(x) for x in f.readline().split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if len(fields) < 4:
        return None
    fields += [0.0] * (8 - len(fields))
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    return CpuTimes(
        busy=(user + nice + system + irq + softirq) / tick,
        steal=steal / tick,
        total=(user + nice + system + idle + iowait + irq + softirq + steal) / tick,
        own=process_time(),
    )


class CpuMeter:
    """What else used this machine's CPU while a measurement ran.

    `foreign_cpu_frac`: the share of all CPU time that other processes used;
    `cpu_steal_frac`: the share the VM host took away for other guests. Either above
    ~0.1 means a timed figure (images/s, a time-budgeted run) is not this machine's.
    Use as a context manager; `result()` is None for each where /proc/stat is missing.
    """

    def __init__(
        self,
        stat_path: str | os.PathLike = "/proc/stat",
        process_time: Callable[[], float] = time.process_time,
    ):
        self._read = lambda: cpu_times(stat_path, process_time)
        self.start: CpuTimes | None = None
        self.end: CpuTimes | None = None

    def __enter__(self) -> CpuMeter:
        self.start, self.end = self._read(), None
        return self

    def __exit__(self, *exc) -> None:
        self.end = self._read()

    def result(self) -> dict[str, float | None]:
        a, b = self.start, self.end
        if a is None or b is None or b.total <= a.total:
            return {"foreign_cpu_frac": None, "cpu_steal_frac": None}
        total = b.total - a.total
        foreign = max(0.0, (b.busy - a.busy) - (b.own - a.own))
        return {
            "foreign_cpu_frac": round(min(1.0, foreign / total), 4),
            "cpu_steal_frac": round(min(1.0, (b.steal - a.steal) / total), 4),
        }

    def warning(self, threshold: float = 0.1) -> str | None:
        """A sentence for the reader when other work took more than `threshold` of the CPU."""
        r = self.result()
        parts = []
        if (r["cpu_steal_frac"] or 0.0) > threshold:
            parts.append(f"the VM host took {r['cpu_steal_frac']:.0%} of this machine's CPU (steal)")
        if (r["foreign_cpu_frac"] or 0.0) > threshold:
            parts.append(f"other processes used {r['foreign_cpu_frac']:.0%} of it")
        if not parts:
            return None
        return (
            "while this was timed "
            + " and ".join(parts)
            + ": the timed figures are lower than this machine's"
        )


def configure_threads(num_threads: int | None) -> int:
    """Pin TensorFlow's intra-op pool (inter-op 1) before any op runs; returns the count used."""
    import tensorflow as tf

    n = num_threads or os.cpu_count() or 1
    set_tf_threads(n)  # False: the runtime is initialised already and keeps its setting
    return tf.config.threading.get_intra_op_parallelism_threads() or n


def keras_infer_fn(model, input_size: tuple[int, int], *, batch: int = 1, xla: bool = False, seed: int = 0):
    """A no-argument callable running the model as a compiled tf.function on fixed random pixels."""
    import tensorflow as tf

    h, w = input_size
    x = tf.constant(np.random.default_rng(seed).uniform(0, 255, (batch, h, w, 3)).astype(np.float32))
    fn = tf.function(lambda t: model(t, training=False), jit_compile=xla, reduce_retracing=True)

    def run():
        outs = fn(x)
        return [o.numpy() for o in outs]

    return run


def machine_info() -> dict:
    """CPU model, logical cores, Python and TensorFlow versions, for every benchmark report.

    On Linux also the CPU's family and model numbers: a model name such as "AMD EPYC" alone does
    not tell one generation from the next, and CPU timings differ by several times between them.
    """
    cpu = _first_cpuinfo_block()
    info = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "logical_cpus": os.cpu_count(),
        "cpu_model": cpu.get("model name") or platform.processor() or "unknown",
    }
    if "cpu family" in cpu or "model" in cpu:
        info.update(cpu_family=cpu.get("cpu family"), cpu_model_number=cpu.get("model"))
    try:
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def _first_cpuinfo_block() -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return {}
    return fields


# --------------------------------------------------------------------------- runtimes

# Runtime name → (export format, precision) or None for the in-memory Keras model.
RUNTIMES: dict[str, tuple[str, str] | None] = {
    "keras": None,
    "keras-xla": None,
    "keras-folded": None,
    "savedmodel": ("savedmodel", "fp32"),
    "tflite-fp32": ("tflite", "fp32"),
    "tflite-fp16": ("tflite", "fp16"),
    "tflite-int8-dynamic": ("tflite", "int8-dynamic"),
    "tflite-int8": ("tflite", "int8"),
    "onnx": ("onnx", "fp32"),
    "openvino": ("openvino", "fp32"),
    "tftrt": ("tftrt", "fp16"),
    "tensorrt": ("tensorrt", "fp16"),
}
DEFAULT_RUNTIMES = (
    "keras",
    "keras-xla",
    "savedmodel",
    "tflite-fp32",
    "tflite-fp16",
    "tflite-int8",
    "onnx",
    "openvino",
    "tftrt",
    "tensorrt",
)
# Runtimes that run without TensorFlow: timed in a fresh process (evaluation.benchmark.isolated).
ISOLATED_FORMATS = ("tflite", "onnx", "openvino")


class Skipped(Exception):  # noqa: N818 - a result, not an error
    """A runtime that cannot run here; str() says why."""


def prepare_runtime(
    model,
    runtime: str,
    input_size: tuple[int, int],
    workdir,
    *,
    threads: int | None = None,
    calibration_images=None,
    batch: int = 1,
):
    """A no-argument callable running `runtime` on a fixed random batch, or raise Skipped.

    Artefacts are exported into `workdir` (reused when already there). Keras runs as a
    compiled tf.function, without or with XLA, or with BatchNorm folded into the convs
    ("keras-folded", `keras_ehrnet.models.folding`); every other runtime goes through
    `keras_ehrnet.deploy.runtimes.load_runner`, exactly what evaluation uses.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if runtime in ("keras", "keras-xla"):
        return keras_infer_fn(model, input_size, batch=batch, xla=runtime == "keras-xla")
    if runtime == "keras-folded":
        from keras_ehrnet.models.folding import fold_batchnorm

        return keras_infer_fn(fold_batchnorm(model), input_size, batch=batch)
    from keras_ehrnet.deploy.runtimes import load_runner

    h, w = input_size
    out = export_artefact(model, runtime, input_size, workdir, calibration_images=calibration_images)
    try:
        runner = load_runner(out, num_threads=threads)
    except RuntimeUnavailableError as exc:
        raise Skipped(str(exc)) from None
    x = np.random.default_rng(0).uniform(0, 255, (batch, h, w, 3)).astype(np.float32)
    return lambda: runner(x)


def export_artefact(model, runtime: str, input_size: tuple[int, int], workdir, *, calibration_images=None):
    """The artefact `runtime` runs, exported from `model` into `workdir` (reused when there); or raise Skipped.

    "openvino" is our ONNX file converted to OpenVINO IR (keras_ehrnet.deploy.openvino).
    """
    from pathlib import Path

    from keras_ehrnet.deploy import exporter as ex

    fmt, precision = RUNTIMES[runtime]
    h, w = input_size
    workdir = Path(workdir)
    stem = f"{model.config.name}_{h}x{w}"
    try:
        if fmt == "openvino":
            from keras_ehrnet.deploy.openvino import export_openvino

            out = workdir / f"{stem}_openvino.xml"
            if not out.exists():
                onnx_path = export_artefact(model, "onnx", input_size, workdir)
                export_openvino(onnx_path, out)
            return out
        out = workdir / ex.default_output_path(fmt, precision, stem)
        if not out.exists():
            ex.export(
                model,
                fmt,
                out,
                precision=precision,
                input_size=(h, w),
                calibration_images=calibration_images if precision == "int8" else None,
                progress=False,
            )
    except RuntimeUnavailableError as exc:
        raise Skipped(str(exc)) from None
    return out


def peak_matmul_gflops(threads: int | None = None, n: int = 2048, repeats: int = 5) -> float:
    """Sustained float32 GFLOP/s of a large TensorFlow matmul: a practical compute ceiling."""
    import tensorflow as tf

    a = tf.random.uniform((n, n))
    b = tf.random.uniform((n, n))
    fn = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    stats = time_callable(lambda: fn().numpy(), warmup=2, runs=repeats)
    return 2 * n**3 / (stats.min_ms / 1000.0) / 1e9


def floor_ms(macs: int, gflops: float) -> float:
    """The physical floor 2·MACs / peak FLOP/s, in milliseconds."""
    return 2.0 * macs / (gflops * 1e9) * 1000.0


def _rounds_text(entry: dict) -> str:
    """ "0.97 (0.91–1.03)": the median and range of the per-round ratios, or "–"."""
    rounds = entry.get("ratio_vs_ref_ort_rounds")
    if not rounds:
        return "–"
    return f"{entry['ratio_vs_ref_ort_paired']} ({min(rounds):.3f}–{max(rounds):.3f})"


def latency_markdown(rows: list[dict], runtimes: list[str]) -> str:
    """Per level: one row per runtime with median/p90/min ms, FPS, throughput and ratios."""
    lines = [
        "| level | input | runtime | median ms | p90 ms | min ms | FPS | batch-N img/s | vs ref ORT "
        "| vs ref ORT, per round | vs ref ORT from pixels | × floor | CPU ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ref = {f"reference {k}": v for k, v in (row.get("reference") or {}).items() if isinstance(v, dict)}
        for name in runtimes + [r for r in row["runtimes"] if r not in runtimes] + list(ref):
            r = row["runtimes"].get(name) or ref.get(name)
            if r is None:
                continue
            head = f"| {row['level']} | {row['input_size']} | {name} |"
            if "skipped" in r:
                reason = " ".join(str(r["skipped"]).split()).replace("|", "\\|")  # one table row
                lines.append(f"{head} skipped: {reason} |||||||||||")
                continue
            lat = r["latency"]
            thr = r.get("throughput_img_s")
            lines.append(
                f"{head} {lat['median_ms']:.1f} | {lat['p90_ms']:.1f} | {lat['min_ms']:.1f} | {lat['fps']:.1f} | "
                f"{f'{thr:.1f}' if thr else '–'} | {r.get('ratio_vs_ref_ort', '–')} | {_rounds_text(r)} | "
                f"{r.get('ratio_vs_ref_ort_from_pixels', '–')} | {r.get('x_floor', '–')} | "
                f"{lat.get('cpu_median_ms') or '–'} |"
            )
    return "\n".join(lines)


def timing_weights(model, input_size: tuple[int, int], seed: int = 0):
    """Give a freshly initialised model realistic weight and activation magnitudes, in place.

    The released init (normal, std 0.001) leaves activations around 1e-11, which sends CPUs
    into slow denormal arithmetic that no trained model meets; the reference's own timings
    used PyTorch's default init. BatchNorm statistics come from real sample images.
    """
    import cv2

    from keras_ehrnet.data import sample_dataset
    from keras_ehrnet.deploy.parity import realistic_weights

    _, image_dir = sample_dataset()
    files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:2]
    h, w = input_size
    images = np.stack([cv2.resize(cv2.imread(str(f))[:, :, ::-1], (w, h)) for f in files]).astype(np.float32)
    return realistic_weights(model, images, seed=seed)
