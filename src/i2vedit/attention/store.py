"""Where attention records live between inversion and editing: the store backends.

Records are indexed by (record index, layer path, name); the record index is the position in
the inversion's sigma sequence at which the source was evaluated. Three backends share the
``AttentionStore`` interface (``attention_matching.store``):

- ``MemoryStore``: tensors in memory, on the accelerator while they fit a byte budget, then in
  pinned host memory;
- ``DiskStore``: one safetensors file per record index, written atomically by a background
  thread during inversion and read back one index ahead by another during editing;
- ``inversion.recompute.RecomputeStore``: nothing stored; the source pass of an index is run
  again when the edit needs it.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import torch

from i2vedit.cache import file_sha256
from i2vedit.files import atomic_path

log = logging.getLogger(__name__)


class RecordError(RuntimeError):
    """An attention record file is missing, truncated or altered."""


class AttentionStore(Protocol):
    def put(self, index: int, layer: str, name: str, value: torch.Tensor) -> None: ...

    def get(self, index: int, layer: str, name: str) -> torch.Tensor: ...

    def prepare(self, index: int, next_index: int | None = None) -> None:
        """Called before the edit step that reads ``index`` (and then ``next_index``)."""

    def indices(self) -> list[int]: ...

    def nbytes(self, index: int | None = None) -> int: ...


class MemoryStore:
    """Records kept as tensors in memory, in ``dtype`` (None: as given). They stay on the
    device they come from while the device-resident total fits ``device_budget`` bytes (None:
    no limit); later ones go to pinned host memory and are copied back on ``get``."""

    def __init__(self, dtype: torch.dtype | None = None, device_budget: int | None = None) -> None:
        self.dtype = dtype
        self.device_budget = device_budget
        self._data: dict[tuple[int, str, str], torch.Tensor] = {}
        self._device: dict[tuple[int, str, str], torch.device] = {}
        self.on_device = 0  #: bytes kept on their (accelerator) device
        self.offloaded = 0  #: bytes moved to host memory

    def put(self, index: int, layer: str, name: str, value: torch.Tensor) -> None:
        value = value.detach()
        if self.dtype is not None:
            value = value.to(self.dtype)
        # contiguous: the same layout whether a record was made now or read from the cache,
        # so the matmuls that use it (and the edit) come out identical to the bit
        value = value.contiguous()
        key = (index, layer, name)
        size = value.numel() * value.element_size()
        if value.device.type != "cpu" and self.device_budget is not None:
            if self.on_device + size > self.device_budget:
                self._device[key] = value.device
                value = value.to("cpu").pin_memory()
                self.offloaded += size
            else:
                self.on_device += size
        self._data[key] = value

    def get(self, index: int, layer: str, name: str) -> torch.Tensor:
        key = (index, layer, name)
        try:
            value = self._data[key]
        except KeyError:
            raise KeyError(f"no attention record {name!r} of {layer} at index {index}") from None
        device = self._device.get(key)
        return value if device is None else value.to(device, non_blocking=True)

    def prepare(self, index: int, next_index: int | None = None) -> None:
        pass

    def indices(self) -> list[int]:
        return sorted({index for index, _, _ in self._data})

    def nbytes(self, index: int | None = None) -> int:
        return sum(
            t.numel() * t.element_size()
            for (i, _, _), t in self._data.items()
            if index is None or i == index
        )


class DiscardStore(MemoryStore):
    """Keeps nothing: a recorder writing here computes exactly what a recording inversion
    computes (so a trajectory kept for ``recompute`` is that of the recording inversion, to
    the bit) without holding any record."""

    def put(self, index: int, layer: str, name: str, value: torch.Tensor) -> None:
        pass


def store_to_tensors(store: MemoryStore) -> dict[str, torch.Tensor]:
    """Flatten a store for a safetensors file: ``"<index>|<layer>|<name>"`` -> tensor."""
    return {f"{i}|{layer}|{name}": t for (i, layer, name), t in store._data.items()}


def store_from_tensors(
    tensors: dict[str, torch.Tensor], device: torch.device, store: MemoryStore | None = None
) -> MemoryStore:
    """The inverse of ``store_to_tensors``: into ``store`` (a new one if None), on ``device``."""
    store = MemoryStore() if store is None else store
    for key, value in tensors.items():
        index, layer, name = key.split("|")
        store.put(int(index), layer, name, value.to(device))
    return store


RECORDS_DIR = "records"


def step_file(folder: Path, index: int) -> Path:
    return folder / f"step-{index:04d}.safetensors"


class DiskStore:
    """Records on disk, one safetensors file per record index, in ``dtype``.

    Writing (inversion): the records of an index are collected until the first record of the
    next index arrives, then handed to a writer thread (at most one index waits, which bounds
    memory) that writes a temporary file and renames it into place. ``finish`` waits for it.

    Reading (editing): ``prepare(index, next_index)`` makes ``index`` available (loading it if
    the prefetch has not) and starts loading ``next_index`` in the background. Every file read
    is checked against ``expected`` (``{file name: {"bytes", "sha256"}}``, from the cache
    manifest) when given; a missing, truncated or altered file raises ``RecordError`` naming it.
    """

    def __init__(
        self,
        folder: Path,
        dtype: torch.dtype,
        device: torch.device,
        expected: dict[str, dict] | None = None,
    ) -> None:
        self.folder, self.dtype, self.device, self.expected = Path(folder), dtype, device, expected
        self._pending_index: int | None = None
        self._pending: dict[str, torch.Tensor] = {}
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="i2vedit-records-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="i2vedit-records-read")
        self._writes: list[Future] = []
        self._loaded: dict[int, dict[str, torch.Tensor]] = {}
        self._loading: dict[int, Future] = {}
        self._lock = threading.Lock()
        self.written_bytes = 0
        #: ``{"records/<file>": {"bytes", "sha256"}}`` of the files written, for the manifest
        self.checksums: dict[str, dict] = {}

    # writing
    def put(self, index: int, layer: str, name: str, value: torch.Tensor) -> None:
        if self._pending_index is not None and index != self._pending_index:
            self._flush()
        self._pending_index = index
        self._pending[f"{layer}|{name}"] = value.detach().to(self.dtype).contiguous()

    def _flush(self) -> None:
        if self._pending_index is None:
            return
        for done in [f for f in self._writes if f.done()]:
            done.result()  # a failed write surfaces here
        while len([f for f in self._writes if not f.done()]) >= 1:
            self._writes[-1].result()  # one index in flight at most
        tensors, index = self._pending, self._pending_index
        self._pending, self._pending_index = {}, None
        self._writes.append(self._writer.submit(self._write, index, tensors))

    def _write(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        path = step_file(self.folder, index)
        with atomic_path(path) as tmp:
            save_file({k: v.cpu() for k, v in tensors.items()}, tmp)
            meta = {"bytes": tmp.stat().st_size, "sha256": file_sha256(tmp)}
        with self._lock:
            self.written_bytes += meta["bytes"]
            self.checksums[f"{RECORDS_DIR}/{path.name}"] = meta

    def finish(self) -> None:
        """Write what is pending and wait for every write (raising the first failure)."""
        self._flush()
        for f in self._writes:
            f.result()
        self._writes.clear()

    # reading
    def _read(self, index: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        path = step_file(self.folder, index)
        if not path.is_file():
            raise RecordError(f"attention record file missing: {path}")
        if self.expected is not None:
            meta = self.expected.get(f"{RECORDS_DIR}/{path.name}")
            if meta is None:
                raise RecordError(f"attention record file not in the cache manifest: {path}")
            if path.stat().st_size != meta["bytes"]:
                raise RecordError(f"attention record file truncated: {path}")
            if file_sha256(path) != meta["sha256"]:
                raise RecordError(f"attention record file altered (checksum differs): {path}")
        try:
            tensors = load_file(path)
        except Exception as err:
            raise RecordError(f"attention record file unreadable ({err}): {path}") from None
        return {k: v.to(self.device, non_blocking=True) for k, v in tensors.items()}

    def prepare(self, index: int, next_index: int | None = None) -> None:
        if index not in self._loaded:
            future = self._loading.pop(index, None)
            self._loaded = {index: future.result() if future is not None else self._read(index)}
        if next_index is not None and next_index not in self._loading and next_index >= 0:
            if step_file(self.folder, next_index).is_file():
                self._loading[next_index] = self._reader.submit(self._read, next_index)

    def get(self, index: int, layer: str, name: str) -> torch.Tensor:
        if index == self._pending_index:
            return self._pending[f"{layer}|{name}"]
        self.prepare(index)
        try:
            return self._loaded[index][f"{layer}|{name}"]
        except KeyError:
            raise KeyError(f"no attention record {name!r} of {layer} at index {index}") from None

    def indices(self) -> list[int]:
        found = {int(p.stem.split("-")[1]) for p in self.folder.glob("step-*.safetensors")}
        return sorted(found | ({self._pending_index} - {None}))

    def nbytes(self, index: int | None = None) -> int:
        """Bytes on disk (of one index, or all)."""
        files = [step_file(self.folder, index)] if index is not None else None
        files = files or list(self.folder.glob("step-*.safetensors"))
        return sum(p.stat().st_size for p in files if p.is_file())

    def close(self) -> None:
        for future in self._loading.values():
            future.cancel()
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        self._loaded.clear()
