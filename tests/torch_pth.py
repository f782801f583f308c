"""Write PyTorch-format checkpoints without torch, for tests.

Pickling refers to `torch._utils._rebuild_tensor_v2` and `torch.FloatStorage` by
name; stand-in modules are placed in sys.modules only while pickling, so the
written files read like torch's own (checked against real-torch fixtures in
tests/data/torch).
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import sys
import types
import zipfile
from contextlib import contextmanager

import numpy as np

_DTYPE_TO_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


@contextmanager
def _fake_torch():
    torch_mod = types.ModuleType("torch")
    utils_mod = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # pragma: no cover - never called, only named
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in set(_DTYPE_TO_STORAGE.values()):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch_mod, name, cls)
    torch_mod._utils = utils_mod
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = torch_mod, utils_mod
    try:
        yield torch_mod, utils_mod
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Storage:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, np.ascontiguousarray(array).ravel()


class _Tensor:
    def __init__(self, storage: _Storage, shape: tuple, rebuild):
        self.storage, self.shape, self.rebuild = storage, shape, rebuild

    def __reduce__(self):
        strides, acc = [], 1
        for d in reversed(self.shape):
            strides.insert(0, acc)
            acc *= d
        return (
            self.rebuild,
            (self.storage, 0, tuple(self.shape), tuple(strides), False, collections.OrderedDict()),
        )


def _pickle(obj, torch_mod, legacy: bool) -> bytes:
    class P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _Storage):
                storage_type = getattr(torch_mod, _DTYPE_TO_STORAGE[o.array.dtype])
                pid = ("storage", storage_type, o.key, "cpu", o.array.size)
                return pid + (None,) if legacy else pid
            return None

    buf = io.BytesIO()
    P(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_pth(path, state: dict[str, np.ndarray], *, legacy: bool = False, wrap: str | None = None) -> None:
    """Save `state` (float32/int64 arrays) as torch.save would, zip or legacy format."""
    with _fake_torch() as (torch_mod, utils_mod):
        storages = {k: _Storage(str(i), np.asarray(v)) for i, (k, v) in enumerate(state.items())}
        tensors = collections.OrderedDict(
            (k, _Tensor(storages[k], np.asarray(v).shape, utils_mod._rebuild_tensor_v2))
            for k, v in state.items()
        )
        obj = {wrap: tensors} if wrap else tensors
        body = _pickle(obj, torch_mod, legacy)
    if not legacy:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", body)
            zf.writestr("archive/byteorder", "little")
            zf.writestr("archive/version", "3\n")
            for s in storages.values():
                zf.writestr(
                    f"archive/data/{s.key}", s.array.astype(s.array.dtype.newbyteorder("<")).tobytes()
                )
        return
    with open(path, "wb") as f:
        f.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
        f.write(pickle.dumps(1001, protocol=2))
        f.write(pickle.dumps({"little_endian": True}, protocol=2))
        f.write(body)
        f.write(pickle.dumps([s.key for s in storages.values()], protocol=2))
        for s in storages.values():
            f.write(struct.pack("<q", s.array.size))
            f.write(s.array.tobytes())
