"""Throughput of the training data pipeline, and of the reference PyTorch pipeline for comparison.

The reference side imports PyTorch and the authors' code from a checkout given at run time; it
is a benchmark aid only (neither is a dependency). torchvision cannot be installed here, so
the two torchvision functions the reference's transforms call are replaced by equivalent
stand-ins for the duration of the measurement.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from keras_ehrnet.data.pipeline import make_dataset
from keras_ehrnet.threads import available_cores


@dataclass
class Throughput:
    """A measured rate over `batches` timed batches of `batch_size`.

    `cpu_seconds` is the CPU time spent meanwhile by this process's threads and its child
    processes (DataLoader workers): on a shared machine it measures the work per image even
    when other jobs take part of the cores.
    """

    name: str
    images_per_second: float
    seconds: float
    cpu_seconds: float
    batches: int
    batch_size: int
    workers: int
    cores: int

    @property
    def per_core(self) -> float:
        """Wall-clock images per second divided by the cores the process may use."""
        return self.images_per_second / max(self.cores, 1)

    @property
    def cpu_ms_per_image(self) -> float:
        """CPU milliseconds per image (all threads and worker processes)."""
        return 1000.0 * self.cpu_seconds / (self.batches * self.batch_size)

    @property
    def per_busy_core(self) -> float:
        """Images per second one fully available core sustains (1000 / cpu_ms_per_image)."""
        return 1000.0 / self.cpu_ms_per_image if self.cpu_seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        """Plain dict for JSON output."""
        return {
            **asdict(self),
            "images_per_second_per_core": self.per_core,
            "cpu_ms_per_image": self.cpu_ms_per_image,
            "images_per_second_per_busy_core": self.per_busy_core,
        }


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its live child processes (Linux /proc)."""
    t = os.times()
    total = t.user + t.system
    me, tick = os.getpid(), os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[1]) == me:  # fields after the name: state, ppid, …, utime (12), stime (13)
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _time_batches(iterator, batches: int, warmup: int, desc: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) for `batches` batches after `warmup` untimed ones."""
    for _ in range(warmup):
        next(iterator)
    cpu, start = _cpu_seconds(), time.perf_counter()
    for _ in tqdm(range(batches), desc=desc, unit="batch"):
        next(iterator)
    return time.perf_counter() - start, _cpu_seconds() - cpu


def measure_pipeline(
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    input_size: int,
    batch_size: int,
    batches: int,
    warmup: int = 3,
) -> Throughput:
    """Images per second through make_dataset (decode, augment, targets, batching)."""
    ds = make_dataset(ann_file, image_dir, input_size=input_size, batch_size=batch_size, epochs=None)
    seconds, cpu = _time_batches(iter(ds), batches, warmup, "ours")
    cores = available_cores()
    rate = batches * batch_size / seconds
    return Throughput("keras_ehrnet tf.data", rate, seconds, cpu, batches, batch_size, cores, cores)


def _torchvision_standins(torch) -> dict[str, types.ModuleType]:
    """Modules standing in for torchvision's ToTensor/Normalize functionals (same arithmetic)."""

    def to_tensor(pic):
        img = torch.from_numpy(pic.transpose((2, 0, 1))).contiguous()
        return img.to(dtype=torch.get_default_dtype()).div(255)

    def normalize(tensor, mean, std, inplace=False):
        if not inplace:
            tensor = tensor.clone()
        mean = torch.as_tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
        std = torch.as_tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
        return tensor.sub_(mean).div_(std)

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.to_tensor, functional.normalize = to_tensor, normalize
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = transforms
    return {
        "torchvision": torchvision,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
    }


def measure_reference(
    reference: str | os.PathLike,
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    input_size: int,
    batch_size: int,
    batches: int,
    workers: int = 2,
    warmup: int = 3,
) -> Throughput | str:
    """Images per second through the reference training dataset in a torch DataLoader.

    Returns the measurement, or a sentence saying why it was skipped (no torch, no checkout).
    Run it before the TensorFlow pipeline has started threads: the DataLoader forks.
    """
    lib = Path(reference) / "lib"
    if not (lib / "dataset" / "COCOKeypoints.py").is_file():
        return (
            f"skipped: {reference} is not a checkout of the reference code (no lib/dataset/COCOKeypoints.py)"
        )
    try:
        import torch
        import torch.utils.data as tud
    except ImportError:
        return "skipped: torch is not importable"

    added = _torchvision_standins(torch)
    try:
        import json_tricks  # noqa: F401
    except ImportError:
        import json

        added["json_tricks"] = json
    added = {k: v for k, v in added.items() if k not in sys.modules}
    sys.modules.update(added)
    sys.path.insert(0, str(lib))
    try:
        with tempfile.TemporaryDirectory() as root:
            # The reference reads ROOT/annotations/person_keypoints_<set>.json and ROOT/images/<set>/.
            (Path(root) / "annotations").mkdir()
            (Path(root) / "images").mkdir()
            os.symlink(Path(ann_file).resolve(), Path(root) / "annotations" / "person_keypoints_bench.json")
            os.symlink(Path(image_dir).resolve(), Path(root) / "images" / "bench")
            from config import cfg as default_cfg
            from dataset.build import build_dataset

            cfg = default_cfg.clone()
            cfg.defrost()
            cfg.DATASET.ROOT = root
            cfg.DATASET.TRAIN = "bench"
            cfg.DATASET.INPUT_SIZE = input_size
            cfg.DATASET.OUTPUT_SIZE = [input_size // 4, input_size // 2]
            cfg.DATASET.SIGMA = 2
            cfg.DATASET.MAX_NUM_PEOPLE = 30
            cfg.DATASET.MAX_ROTATION = 30
            cfg.DATASET.MIN_SCALE = 0.75
            cfg.DATASET.MAX_SCALE = 1.5
            cfg.DATASET.MAX_TRANSLATE = 40
            cfg.DATASET.SCALE_TYPE = "short"
            cfg.DATASET.FLIP = 0.5
            cfg.freeze()
            dataset = build_dataset(cfg, is_train=True)
            sampler = tud.RandomSampler(
                dataset, replacement=True, num_samples=(batches + warmup) * batch_size
            )
            loader = tud.DataLoader(
                dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True
            )
            seconds, cpu = _time_batches(iter(loader), batches, warmup, "reference")
    finally:
        sys.path.remove(str(lib))
        for name in added:
            sys.modules.pop(name, None)
        # Forget the reference's top-level packages (config, dataset, utils): common names.
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", "") or "").startswith(str(lib)):
                del sys.modules[name]
    return Throughput(
        "reference torch DataLoader",
        batches * batch_size / seconds,
        seconds,
        cpu,
        batches,
        batch_size,
        workers,
        available_cores(),
    )
