"""Writing output files so that a crash, a kill or a full disk never leaves a half-written one.

Every file the programs write (models, artefacts, JSON, configs) goes through `atomic_path`
or a helper built on it: the content is written to a hidden temporary name in the same
folder (`.tmp-XXXXXXXX-<name>`, same file system) and renamed into place with `os.replace`,
which is atomic. A reader sees either the previous file or the complete new one, never a
0-byte or truncated file; the previous file survives any failure while the new one is written.

`check_writable` tests an output location before long work starts, so a mistyped or
read-only `--out` fails in a second with one line instead of after the work is done.
`one_line` turns any exception (TF's included) into the one line the programs print.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TEMP_PREFIX = ".tmp-"


class OutputPathError(ValueError):
    """An output location that cannot be created or written (the message names it and why)."""


def _temp_sibling(path: Path) -> Path:
    # The final name stays at the end, so suffix checks (".keras", ".weights.h5") still pass.
    return path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(4)}-{path.name}")


def _fsync(path: Path) -> None:
    """Push a written file (or every file of a written folder) to disk; best effort."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        with contextlib.suppress(OSError), open(f, "rb") as handle:
            os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without error, move it to `path`.

    The block writes a file (or a folder, such as a SavedModel) at the yielded path. On an
    exception the temporary is removed and `path` is left as it was. A folder replacing an
    existing folder is swapped in with two renames (the old one is deleted afterwards).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written for {path}")
        _fsync(tmp)
        if tmp.is_dir() and path.is_dir() and not path.is_symlink():
            old = _temp_sibling(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if path.is_dir() and not path.is_symlink():
                raise IsADirectoryError(f"{path} is a folder; cannot replace it with a file")
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        _remove(tmp)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """`open(path, mode)` that only replaces `path` once the block has finished writing."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write writes whole files; mode must start with 'w', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as handle:
        yield handle
        handle.flush()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns the path."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, data: Any, **dumps_kwargs: Any) -> Path:
    """`json.dumps(data, **dumps_kwargs)` written atomically (serialised first, so a value
    that cannot be encoded leaves the previous file untouched); returns the path."""
    return atomic_write_text(path, json.dumps(data, **dumps_kwargs))


def atomic_save_model(model: Any, path: str | os.PathLike, **save_kwargs: Any) -> Path:
    """`model.save(path)` (a `.keras` file) written atomically; returns the path."""
    with atomic_path(path) as tmp:
        model.save(tmp, **save_kwargs)
    return Path(path)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete what an interrupted atomic write left in `folder` (hidden `.tmp-*` files or folders)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(folder.glob(f"{TEMP_PREFIX}*"))
    for p in stale:
        _remove(p)
    return stale


def check_writable(path: str | os.PathLike, *, kind: str = "file", what: str = "output") -> Path:
    """Check, before any long work, that `path` can be created and written; returns it.

    `kind` "file": `path` must not be a folder and its folder must be creatable and writable.
    `kind` "dir": `path` must be a folder or creatable as one. Nothing is created: a probe
    file is written (and removed) in the nearest existing folder. Raises OutputPathError,
    naming `what` (e.g. "--out") and the path.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise OutputPathError(f"{what} {path} is a folder; expected a file name")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path} is a file; expected a folder")
    folder = path if kind == "dir" else path.parent
    existing = Path(os.path.abspath(folder))
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{what} {path} cannot be created: {existing} is a file, not a folder")
    try:
        probe = existing / f"{TEMP_PREFIX}{secrets.token_hex(4)}-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise OutputPathError(f"{what} {path} cannot be written: {existing}: {reason}") from None
    return path


def one_line(err: BaseException, limit: int = 400) -> str:
    """An exception as one short line (TF errors carry graph-node lines and multi-line details)."""
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    text = re.sub(r"\{\{function_node [^}]*\}\}", "", text)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("[[")]
    text = lines[0] if lines else type(err).__name__
    text = f"{type(err).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_keras_archive(path: str | os.PathLike) -> None:
    """Raise ValueError saying what is wrong with a `.keras` file that is not a complete Keras
    model archive (empty, not a zip, no config.json inside, a damaged member); Keras itself
    reports such files as "File not found"."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes); was its writing interrupted?")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a .keras file (not a zip archive; truncated or another format?)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .keras file: {one_line(err)}") from None
    if "config.json" not in names:
        raise ValueError(f"{path}: a zip archive but not a Keras model (no config.json inside)")
    if bad is not None:
        raise ValueError(f"{path}: damaged .keras file ({bad} fails its checksum)")
