"""The ``recompute`` attention store: no attention is kept. The inversion keeps its trajectory
(one latent per evaluated sigma); before the edit step that needs record index ``i`` the
source branch is run again on the trajectory's latent ``x_i`` at ``s_i``, with the source's
condition and without the motion LoRA, exactly as the inversion evaluated it, and its
records (one index's worth) are kept until the next index is asked for.

The source branch runs as its own batch-1 pass before the guided pass, not as a third element
of the guided batch: it reuses the inversion's code path to the bit, needs no per-element
adapter routing, and its activations are freed before the guided pass starts, so the extra
memory is one index of records."""

from __future__ import annotations

import torch

from i2vedit.attention.control import AttentionRecorder, controlled_attention
from i2vedit.attention.store import MemoryStore
from i2vedit.core.edm import Condition, denoise
from i2vedit.core.lora import lora_disabled


class RecomputeStore:
    """``AttentionStore`` that recomputes the records of an index on demand."""

    def __init__(
        self,
        unet: torch.nn.Module,
        trajectory: torch.Tensor,
        cond: Condition,
        inversion_sigmas: torch.Tensor,
        dtype: torch.dtype | None = None,
        kv_extra: MemoryStore | None = None,
    ) -> None:
        self.unet, self.trajectory, self.cond = unet, trajectory, cond
        self.sigmas, self.dtype, self.kv_extra = inversion_sigmas, dtype, kv_extra
        self._index: int | None = None
        self._store = MemoryStore(dtype)
        self.passes = 0  #: source passes run

    def prepare(self, index: int, next_index: int | None = None) -> None:
        if index == self._index:
            return
        self._store = MemoryStore(self.dtype)
        recorder = AttentionRecorder(self._store)
        recorder.kv_extra = self.kv_extra  # skip-interval: clip 0's source keys and values
        recorder.step, recorder.guided = index, False
        with torch.no_grad(), lora_disabled(self.unet), controlled_attention(self.unet, recorder):
            denoise(self.unet, self.trajectory[index], self.sigmas[index], self.cond)
        self._index = index
        self.passes += 1

    def put(self, index: int, layer: str, name: str, value: torch.Tensor) -> None:
        raise RuntimeError("the recompute store records nothing")

    def get(self, index: int, layer: str, name: str) -> torch.Tensor:
        self.prepare(index)
        return self._store.get(index, layer, name)

    def indices(self) -> list[int]:
        return list(range(len(self.trajectory)))

    def nbytes(self, index: int | None = None) -> int:
        return 0  # nothing is stored; one index is held in memory while it is used
