"""The artifact cache: folders keyed by a hash of what determines their content, never by
time, each with a manifest of its key inputs."""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    target = Path(path)
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    for file in files:
        if target.is_dir():
            h.update(str(file.relative_to(target)).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def content_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (of every file's name and bytes, for a folder)."""
    stat = Path(path).stat()
    return _digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def key_of(inputs: dict[str, Any]) -> str:
    """A short stable hash of the key inputs (JSON with sorted keys)."""
    text = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_manifest(folder: Path, kind: str, inputs: dict[str, Any]) -> None:
    """Record (atomically) what an entry was made from; kept if it is already there."""
    path = folder / MANIFEST
    if path.is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "kind": kind,
        "key": key_of(inputs),
        "inputs": inputs,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2, default=str)
    os.replace(tmp, path)
