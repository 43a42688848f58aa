"""The artifact cache: folders keyed by a hash of what determines their content, never by
time, each with a manifest of its key inputs."""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


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
        "files": {},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2, default=str)
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class TensorEntry:
    """A cache entry of safetensors files, complete only once its manifest is written.

    The manifest lists every file with its size and SHA-256; a load checks them, so a
    truncated or altered file is detected (and the entry dropped), never silently used.
    """

    def __init__(
        self, cache_dir: str | os.PathLike[str], kind: str, name: str, inputs: dict[str, Any]
    ):
        self.kind, self.inputs = kind, inputs
        self.key = key_of(inputs)
        self.folder = Path(cache_dir).expanduser() / kind / f"{name}-{self.key}"
        #: the manifest's file list after a successful ``load``
        self.files: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"{self.kind} {self.folder.name}"

    def load(self) -> dict[str, dict[str, Any]] | None:
        """The entry's tensors by file stem, or None when absent or corrupt (then removed).

        Files under a subfolder (attention records, one file per step) are checked for their
        size only and not loaded: their reader checks each against ``files`` when it reads it.
        """
        from safetensors.torch import load_file

        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            return None
        try:
            record = json.loads(manifest.read_text())
            tensors = {}
            for name, meta in record["files"].items():
                path = self.folder / name
                if path.stat().st_size != meta["bytes"]:
                    raise ValueError(f"{name} does not match its manifest (size)")
                if "/" in name:
                    continue
                if file_sha256(path) != meta["sha256"]:
                    raise ValueError(f"{name} does not match its manifest")
                tensors[Path(name).stem] = load_file(path)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
            log.warning("cache entry %s is corrupt (%s): recomputing it", self.folder, err)
            self.drop()
            return None
        self.files = record["files"]
        return tensors

    def stage(self) -> Path:
        """A new temporary folder beside the entry, for files written before ``save`` (which
        then adds them to the manifest and renames the folder into place)."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.tmp-", dir=self.folder.parent))

    def save(
        self,
        files: dict[str, dict[str, Any]],
        staged: Path | None = None,
        known: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Write ``{stem: {tensor name: tensor}}`` as one safetensors file each, atomically: into
        a temporary folder (``staged``, holding files written earlier, if given, whose
        checksums may be ``known``), manifest last, then renamed into place."""
        from safetensors.torch import save_file

        tmp = staged if staged is not None else self.stage()
        try:
            listed = {}
            for path in sorted(tmp.rglob("*")):
                if path.is_file():
                    name = path.relative_to(tmp).as_posix()
                    meta = (known or {}).get(name)  # checksums taken while writing
                    if meta is None or meta["bytes"] != path.stat().st_size:
                        meta = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
                    listed[name] = meta
            for stem, tensors in files.items():
                path = tmp / f"{stem}.safetensors"
                save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path)
                listed[path.name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
            record = {
                "kind": self.kind,
                "key": self.key,
                "inputs": self.inputs,
                "files": listed,
                "bytes": sum(meta["bytes"] for meta in listed.values()),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"
                ),
            }
            (tmp / MANIFEST).write_text(json.dumps(record, indent=2, default=str))
            self.drop()
            os.replace(tmp, self.folder)
            self.files = listed
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def drop(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
