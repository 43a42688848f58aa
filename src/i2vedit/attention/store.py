"""Where attention records live between inversion and editing."""

from __future__ import annotations

from typing import Protocol

import torch


class AttentionStore(Protocol):
    """Records indexed by (record index, layer path, name). The record index is the position
    in the inversion's sigma sequence at which the source was evaluated."""

    def put(self, index: int, layer: str, name: str, value: torch.Tensor) -> None: ...

    def get(self, index: int, layer: str, name: str) -> torch.Tensor: ...

    def indices(self) -> list[int]: ...

    def nbytes(self, index: int | None = None) -> int: ...


class MemoryStore:
    """Records kept as tensors in memory, on the device and in the dtype they are given."""

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        self.dtype = dtype
        self._data: dict[tuple[int, str, str], torch.Tensor] = {}

    def put(self, index: int, layer: str, name: str, value: torch.Tensor) -> None:
        value = value.detach()
        if self.dtype is not None:
            value = value.to(self.dtype)
        # contiguous: the same layout whether a record was made now or read from the cache,
        # so the matmuls that use it (and the edit) come out identical to the bit
        self._data[(index, layer, name)] = value.contiguous()

    def get(self, index: int, layer: str, name: str) -> torch.Tensor:
        try:
            return self._data[(index, layer, name)]
        except KeyError:
            raise KeyError(f"no attention record {name!r} of {layer} at index {index}") from None

    def indices(self) -> list[int]:
        return sorted({index for index, _, _ in self._data})

    def nbytes(self, index: int | None = None) -> int:
        return sum(
            t.numel() * t.element_size()
            for (i, _, _), t in self._data.items()
            if index is None or i == index
        )


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
