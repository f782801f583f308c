"""Import the authors' released PyTorch checkpoints — without needing torch.

A `.pth` file is a pickle whose tensors point into raw storages: in the zip
format (torch ≥ 1.6) each storage is a zip member, in the legacy format they
follow the pickle in the same stream. `read_torch_checkpoint` reads both with a
restricted unpickler that only rebuilds tensors (it never runs other code), and
`load_torch_weights` assigns them to a keras-ehrnet model through the strict
one-to-one map of `weights_map`.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_ehrnet.models.scaling import PRESET_NAMES, get_config
from keras_ehrnet.weights.weights_map import WeightPair, batchnorm_counter_keys, weight_pairs

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# Layers whose shapes depend on the number of keypoints.
HEAD_PREFIXES = ("final_layers.", "deconv_layers.0.0.0.")
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


def _to_numpy(raw: bytes | memoryview, storage: _StorageType) -> np.ndarray:
    if storage.dtype == "bfloat16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32)
    return np.frombuffer(raw, dtype=np.dtype(storage.dtype).newbyteorder("<"))


def _rebuild_tensor(storage, offset, size, stride, *args):
    """torch._utils._rebuild_tensor_v2: a strided view of a storage, copied out."""
    if isinstance(storage, _LazyStorage):  # legacy format: bytes not read yet
        return _LazyTensor(storage, (offset, size, stride))
    if not size:
        return np.array(storage[offset])
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)  # own the memory, native byte order


def _rebuild_parameter(data, *args) -> np.ndarray:
    return data


class _Unpickler(pickle.Unpickler):
    """Unpickles a state_dict of tensors; anything else is refused."""

    def __init__(self, file, load_storage, source: str):
        super().__init__(file)
        self._load_storage = load_storage
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module.startswith("torch"):
            if name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
                return _rebuild_tensor
            if name == "_rebuild_parameter":
                return _rebuild_parameter
            if name in _STORAGE_DTYPES:
                return _StorageType(name)
        raise ValueError(
            f"{self._source}: the checkpoint pickles {module}.{name}, which is not part of a "
            "state_dict of tensors. Load it with torch and save `model.state_dict()` instead."
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise ValueError(f"{self._source}: unsupported persistent id {pid!r}")
        return self._load_storage(pid)


def read_torch_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Read a PyTorch `.pth`/`.pt`/`.pth.tar` state_dict into NumPy arrays.

    Unwraps {"state_dict": …} / {"model": …} and strips DataParallel "module." prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PyTorch checkpoint not found: {path}")
    source = str(path)
    if zipfile.is_zipfile(path):
        obj = _read_zip(path, source)
    else:
        obj = _read_legacy(path, source)
    return _unwrap_state_dict(obj, source)


def _read_zip(path: Path, source: str):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl")]
        if not pkl:
            raise ValueError(f"{source}: a zip file but not a PyTorch checkpoint (no data.pkl inside).")
        prefix = pkl[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder").strip() != b"little":
            raise ValueError(f"{source}: big-endian checkpoints are not supported.")
        cache: dict[str, np.ndarray] = {}

        def load_storage(pid):
            _, storage_type, key, _location, _numel = pid[:5]
            if key not in cache:
                try:
                    raw = zf.read(f"{prefix}data/{key}")
                except KeyError:
                    raise ValueError(f"{source}: storage {key!r} is missing from the archive.") from None
                cache[key] = _to_numpy(raw, storage_type)
            return cache[key]

        return _Unpickler(io.BytesIO(zf.read(pkl[0])), load_storage, source).load()


def _read_legacy(path: Path, source: str):
    with open(path, "rb") as f:
        try:
            magic = _plain_load(f, source)
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(
                f"{source}: not a PyTorch checkpoint ({exc.__class__.__name__}: {exc})."
            ) from None
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"{source}: not a PyTorch checkpoint (unknown header).")
        _plain_load(f, source)  # protocol version
        _plain_load(f, source)  # sys info
        storages: dict[str, tuple[_StorageType, np.ndarray | None]] = {}

        def load_storage(pid):
            _, storage_type, key, _location, numel = pid[:5]
            view = pid[5] if len(pid) > 5 else None
            if key not in storages:
                storages[key] = (storage_type, None)
            if view is not None:
                raise ValueError(f"{source}: storage views are not supported in legacy checkpoints.")
            return _LazyStorage(storages, key)

        obj = _Unpickler(f, load_storage, source).load()
        keys = _plain_load(f, source)
        for key in keys:
            storage_type = storages[key][0]
            (numel,) = struct.unpack("<q", f.read(8))
            raw = f.read(numel * storage_type.itemsize)
            if len(raw) != numel * storage_type.itemsize:
                raise ValueError(f"{source}: truncated checkpoint (storage {key!r}).")
            storages[key] = (storage_type, _to_numpy(raw, storage_type))
    return _resolve_lazy(obj)


def _plain_load(f, source: str):
    """Unpickle plain data (numbers, strings, lists, dicts) and nothing else."""

    def refuse(pid):
        raise ValueError(f"{source}: unexpected persistent id in a checkpoint header")

    unpickler = _Unpickler(f, refuse, source)
    return unpickler.load()


class _LazyStorage:
    """A legacy storage whose bytes come after the pickle."""

    def __init__(self, storages, key):
        self.storages, self.key = storages, key


class _LazyTensor:
    def __init__(self, storage: _LazyStorage, args):
        self.storage, self.args = storage, args


def _resolve_lazy(obj):
    if isinstance(obj, _LazyTensor):
        return _rebuild_tensor(obj.storage.storages[obj.storage.key][1], *obj.args)
    if isinstance(obj, dict):
        return obj.__class__((k, _resolve_lazy(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve_lazy(v) for v in obj)
    return obj


def _unwrap_state_dict(obj, source: str) -> dict[str, np.ndarray]:
    for _ in range(3):
        if isinstance(obj, dict) and not _is_tensor_dict(obj):
            inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not _is_tensor_dict(obj):
        raise ValueError(
            f"{source}: no state_dict of tensors found (top-level keys: {list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__})."
        )
    out = {}
    for key, value in obj.items():
        if not isinstance(value, np.ndarray):
            continue
        out[key[len("module.") :] if key.startswith("module.") else key] = value
    return out


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, np.ndarray) for v in obj.values())


@dataclasses.dataclass
class ImportReport:
    """What `load_torch_weights` did with each tensor."""

    loaded: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # torch key → why (kept init)
    missing: list[str] = dataclasses.field(default_factory=list)  # needed, not in checkpoint
    unexpected: list[str] = dataclasses.field(default_factory=list)  # in checkpoint, not used
    mismatched: dict[str, tuple] = dataclasses.field(default_factory=dict)  # key → (checkpoint, model)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.skipped:
            lines.append(f"kept initial values for {len(self.skipped)} tensors:")
            lines += [f"  {k}: {why}" for k, why in self.skipped.items()]
        for title, items in (
            ("missing from checkpoint", self.missing),
            ("unused from checkpoint", self.unexpected),
        ):
            if items:
                lines.append(
                    f"{title} ({len(items)}): " + ", ".join(items[:10]) + (" …" if len(items) > 10 else "")
                )
        if self.mismatched:
            lines.append(f"shape mismatches ({len(self.mismatched)}):")
            lines += [
                f"  {k}: checkpoint {a} vs model {b}" for k, (a, b) in list(self.mismatched.items())[:10]
            ]
        return "\n".join(lines)


def load_torch_weights(
    model: keras.Model,
    source: str | Path | dict[str, np.ndarray],
    *,
    allow_missing_head: bool = False,
    backbone_only: bool = False,
    strict: bool = True,
) -> ImportReport:
    """Assign a released PyTorch state_dict to `model`, every tensor exactly once.

    `allow_missing_head`: head tensors that are absent or shaped for another number
    of keypoints keep their initial values (reported). `backbone_only`: load the
    `features.*` tensors of an ImageNet classifier checkpoint into the backbone of
    a pose model (or a pose checkpoint's backbone into a classifier); everything
    else is reported, not an error. With `strict` (default) any missing, unused or
    mis-shaped tensor raises ValueError with the full report (also as its `report`
    attribute); nothing is assigned.
    """
    name = str(source) if not isinstance(source, dict) else "state_dict"
    state = read_torch_checkpoint(source) if not isinstance(source, dict) else dict(source)
    counters = set(batchnorm_counter_keys(model))
    report = ImportReport()
    planned: list[tuple[WeightPair, np.ndarray]] = []
    used: set[str] = set()
    for pair in weight_pairs(model):
        key = pair.torch_key
        optional = (allow_missing_head and key.startswith(HEAD_PREFIXES)) or (
            backbone_only and pair.keras_path.startswith("head_")
        )
        if backbone_only and not key.startswith("features."):
            report.skipped[key] = "outside the backbone (backbone_only)"
            continue
        if key not in state:
            if optional:
                report.skipped[key] = "absent from the checkpoint"
            else:
                report.missing.append(key)
            continue
        used.add(key)
        value = state[key]
        expected = pair.to_torch_shape(tuple(pair.variable.shape))
        if tuple(value.shape) != expected:
            if optional:
                report.skipped[key] = f"shaped {tuple(value.shape)} in the checkpoint, {expected} here"
            else:
                report.mismatched[key] = (tuple(value.shape), expected)
            continue
        planned.append((pair, value))
    for key in state:
        if key in used or key in counters:
            continue
        if backbone_only or (allow_missing_head and key.startswith(HEAD_PREFIXES)):
            report.skipped[key] = "in the checkpoint, not used by this model"
        else:
            report.unexpected.append(key)
    if strict and not report.ok:
        err = ValueError(f"{name} does not fit {model.name}:\n{report.summary()}")
        err.report = report  # for callers that word their own one-line message
        raise err
    for pair, value in planned:
        pair.variable.assign(pair.to_keras(value).astype(pair.variable.dtype))
        report.loaded.append(pair.torch_key)
    return report


def guess_level(state: dict[str, np.ndarray]) -> tuple[str, str]:
    """(level, kind) of a released checkpoint from a few telltale shapes.

    kind is "pose" for an EfficientHRNet state_dict and "classifier" for a
    compact-EfficientNet ImageNet one. Raises ValueError if nothing fits.
    """
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("features.")}
    if not blocks or "features.0.1.weight" not in state:
        raise ValueError("not an EfficientHRNet/EfficientNet checkpoint: no features.0.1.weight")
    stem = state["features.0.1.weight"].shape[0]
    kind = "classifier" if any(k.startswith("classifier.") for k in state) else "pose"
    for level in PRESET_NAMES:
        cfg = get_config(level)
        if stem != cfg.stem_channels:
            continue
        if kind == "pose":
            trans = state.get("trans1_branch1.0.weight")
            if (
                trans is not None
                and trans.shape[0] == cfg.hr_widths[0]
                and len(blocks) == cfg.num_backbone_blocks
            ):
                return level, kind
        else:
            head = state.get(f"features.{cfg.num_backbone_blocks}.1.weight")
            if (
                len(blocks) == cfg.num_backbone_blocks + 1
                and head is not None
                and head.shape[0] == cfg.head_channels
            ):
                return level.replace("H", "B", 1), kind
    raise ValueError(
        f"the checkpoint fits none of the presets (stem width {stem}, {len(blocks)} feature blocks); pass --level"
    )
