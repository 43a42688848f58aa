"""Writing files so that a reader never sees half of one: the one atomic-write helper (a
temporary name beside the target, then ``os.replace``) and the one JSON writer."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def temp_beside(path: str | os.PathLike[str], *, folder: bool = False) -> Path:
    """A new, uniquely named hidden temporary file (empty) or folder beside ``path``:
    ``.<name>.tmp-<random><suffix>``, the suffix only for a file. The parent folder is made
    if missing. The file is private (0o600) and so is the folder (0o700), as ``tempfile``
    makes them; the caller renames it into place or removes it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    if folder:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=target.suffix, dir=target.parent)
    os.close(fd)
    return Path(name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, folder: bool = False, mode: int | None = 0o644
) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (:func:`temp_beside`: a hidden empty file, or
    with ``folder=True`` a new empty folder) to write into; on a clean exit it replaces
    ``path`` in one rename, on an error (or an interrupt) it is removed and ``path`` is left as
    it was.

    The temporary name keeps the target's suffix, so writers that pick a format by suffix (PIL,
    safetensors readers, PyAV) still do. ``mode`` is set on a file before the rename (temporary
    files are created private; None keeps 0o600); a folder keeps 0o700. A folder that is
    already at ``path`` is removed just before the rename (a folder cannot be renamed onto a
    non-empty one): readers see the old folder, then briefly none, then the new one, never a
    partial one."""
    target = Path(path)
    tmp = temp_beside(target, folder=folder)
    try:
        yield tmp
        if not folder and mode is not None:
            os.chmod(tmp, mode)
        if folder and target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)  # what is left fails the rename
        os.replace(tmp, target)
    finally:
        _remove(tmp)  # gone already after the rename; the leftover of an error otherwise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (mode 0o644); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically, as UTF-8 (mode 0o644); returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def jsonable(value: Any) -> Any:
    """``value`` with NaN and infinite floats as None (JSON has no such numbers), tuples as
    lists, paths as strings and numpy (or 0-d tensor) scalars as Python numbers, recursively;
    dict keys as strings."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json(
    path: str | os.PathLike[str],
    record: Any,
    *,
    default: Callable[[Any], Any] | None = None,
) -> Path:
    """Write ``record`` (made :func:`jsonable`) as indented JSON with a final newline,
    atomically (mode 0o644), NaN and infinities as null; returns the path. ``default`` as
    ``json.dumps``'s: what to write for an object JSON has no form for (None: refuse it with
    ``TypeError``; ``str`` for a record of key inputs such as a cache manifest)."""
    text = json.dumps(jsonable(record), indent=2, allow_nan=False, default=default)
    return write_text(path, text + "\n")
