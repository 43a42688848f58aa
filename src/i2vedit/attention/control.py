"""Attention control through diffusers' processor mechanism.

``ControlledAttnProcessor`` computes self-attention of one registered layer and lets a
controller decide how: record the source's attention (inversion) or match it (editing).
``controlled_attention`` installs the processors by module path and restores the UNet's
own processors afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from i2vedit.attention.fused import fused_masked_attention
from i2vedit.attention.kernels import SPATIAL_KERNELS
from i2vedit.attention.layers import SPATIAL, AttentionLayer, registered_layers
from i2vedit.attention.matching import attention_probs, blocked_masked_attention, frame_thresholds
from i2vedit.attention.schedule import MatchingSchedule
from i2vedit.attention.store import AttentionStore


class AttentionController:
    """Base controller: plain attention. Subclasses override ``attend``.

    The caller sets ``step`` before each UNet evaluation and ``guided`` when the batch is
    ``[unconditional, conditional]`` (only the conditional half is ever controlled).
    """

    def __init__(self) -> None:
        self.step = 0
        self.guided = False
        #: skip-interval attention: temporal keys/values of this pass are kept here (clip 0) ...
        self.kv_capture: AttentionStore | None = None
        #: ... and those of clip 0 at the same step are appended to this pass's (clips k > 0)
        self.kv_extra: AttentionStore | None = None

    def prepare(self, step: int) -> None:
        """Called by the sampler before the UNet evaluation of ``step``."""

    def temporal_kv(
        self, layer: AttentionLayer, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Skip-interval attention on a temporal layer: record this clip's keys and values,
        and/or let it also attend to clip 0's (concatenated along the frame axis)."""
        if layer.kind == SPATIAL:
            return k, v
        if self.kv_capture is not None:
            self.kv_capture.put(self.step, layer.path, "k", k)
            self.kv_capture.put(self.step, layer.path, "v", v)
        if self.kv_extra is not None:
            k0 = self.kv_extra.get(self.step, layer.path, "k").to(k.dtype)
            v0 = self.kv_extra.get(self.step, layer.path, "v").to(v.dtype)
            k, v = torch.cat([k, k0], dim=-2), torch.cat([v, v0], dim=-2)
        return k, v

    def attend(
        self, layer: AttentionLayer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
    ) -> torch.Tensor:
        k, v = self.temporal_kv(layer, k, v)
        return F.scaled_dot_product_attention(q, k, v, scale=scale)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(unconditional rows or None, conditional rows); rows are batch-major."""
        if not self.guided:
            return None, x
        half = x.shape[0] // 2
        return x[:half], x[half:]


class AttentionRecorder(AttentionController):
    """Records the source's attention during inversion, at record index ``step``:
    spatial layers keep Q and K, temporal layers the probabilities (smaller than their Q and
    K; the output is computed from the same probabilities: ``attention.fused`` on why no
    fused call serves there)."""

    def __init__(self, store: AttentionStore) -> None:
        super().__init__()
        self.store = store

    def attend(self, layer, q, k, v, scale):
        k, v = self.temporal_kv(layer, k, v)
        _, q_c = self.split(q)
        _, k_c = self.split(k)
        if layer.kind == SPATIAL:
            self.store.put(self.step, layer.path, "q", q_c)
            self.store.put(self.step, layer.path, "k", k_c)
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        if self.guided:
            raise RuntimeError("temporal recording expects an unguided (conditional-only) pass")
        probs = attention_probs(q, k, scale)
        self.store.put(self.step, layer.path, "p", probs)
        return torch.matmul(probs.to(v.dtype), v)


@dataclass(frozen=True)
class MatchingParams:
    """One edit's attention-matching settings: when matching acts (``schedule``, a
    :class:`~i2vedit.attention.schedule.MatchingSchedule` of the first five fields) and how
    the spatial blend runs (mask thresholds, kernel, chunking)."""

    num_steps: int
    beta: tuple[float, float] = (0.5, 0.8)
    mask_thr: tuple[float, float] = (0.35, 0.35)
    spatial_steps: float = 1.0  #: fraction of steps with spatial matching
    temporal_steps: float = 1.0  #: fraction of steps with temporal matching
    frames_per_chunk: int = 1  #: frames blended at once in spatial matching
    pairing: str = "reference"  #: which record an edit step reads: reference or exact
    query_block: int = 1024  #: query tokens blended at once in spatial matching
    #: the spatial blend: ``torch`` (blocked, explicit probabilities; chunked by the two
    #: fields above) or ``triton`` (``attention.fused``, all frames at once); never ``auto``
    kernel: str = "torch"
    schedule: MatchingSchedule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kernel not in SPATIAL_KERNELS:
            raise ValueError(f"kernel must be one of {SPATIAL_KERNELS}, got {self.kernel!r}")
        schedule = MatchingSchedule(
            self.num_steps, tuple(self.beta), self.spatial_steps, self.temporal_steps, self.pairing
        )
        object.__setattr__(self, "schedule", schedule)

    def reads_records(self, step: int) -> bool:
        return self.schedule.reads_records(step)

    def active(self, kind: str, step: int) -> bool:
        """Whether layers of ``kind`` match at all at ``step`` (the fraction alone)."""
        return self.schedule.kind_active(kind, step)


class AttentionMatcher(AttentionController):
    """Injects the source's attention into the conditional half of the guided edit pass."""

    def __init__(self, store: AttentionStore, params: MatchingParams) -> None:
        super().__init__()
        self.store = store
        self.params = params

    def prepare(self, step: int) -> None:
        """Let the store make this step's records ready (and start on the next step's)."""
        schedule = self.params.schedule
        if not schedule.reads_records(step):
            return
        following = schedule.record_index(step + 1) if schedule.reads_records(step + 1) else None
        self.store.prepare(schedule.record_index(step), following)

    def attend(self, layer, q, k, v, scale):
        k, v = self.temporal_kv(layer, k, v)
        schedule, t = self.params.schedule, self.step
        if not schedule.matches(layer, t):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        (q_u, q_c), (k_u, k_c), (v_u, v_c) = self.split(q), self.split(k), self.split(v)
        index = schedule.record_index(t)
        if layer.kind == SPATIAL:
            out_c = self._spatial(layer, index, q_c, k_c, v_c, scale)
        else:
            out_c = torch.matmul(self.store.get(index, layer.path, "p").to(v_c.dtype), v_c)
        if q_u is None:
            return out_c
        out_u = F.scaled_dot_product_attention(q_u, k_u, v_u, scale=scale)
        return torch.cat([out_u, out_c])

    def _spatial(self, layer, index, q, k, v, scale):
        q_src = self.store.get(index, layer.path, "q")
        k_src = self.store.get(index, layer.path, "k")
        frames = q.shape[0]
        thresholds = frame_thresholds(self.params.mask_thr, frames)
        if self.params.kernel == "triton":
            return fused_masked_attention(q_src, k_src, q, k, v, scale, thresholds)
        out = torch.empty_like(q[..., : v.shape[-1]])
        step = max(1, self.params.frames_per_chunk)
        for s in range(0, frames, step):
            f = slice(s, s + step)
            out[f] = blocked_masked_attention(
                q_src[f], k_src[f], q[f], k[f], v[f], scale, thresholds[f], self.params.query_block
            )
        return out


class ControlledAttnProcessor:
    """Self-attention of one registered layer, with the attention itself left to a controller."""

    def __init__(self, controller: AttentionController, layer: AttentionLayer) -> None:
        self.controller = controller
        self.layer = layer

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None
    ):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise RuntimeError(f"{self.layer.path}: controlled layers are unmasked self-attention")
        heads = attn.heads
        q, k, v = (
            proj(hidden_states).unflatten(-1, (heads, -1)).transpose(1, 2)
            for proj in (attn.to_q, attn.to_k, attn.to_v)
        )
        out = self.controller.attend(self.layer, q, k, v, attn.scale)
        out = out.transpose(1, 2).flatten(2).to(hidden_states.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def _check_plain_self_attention(module: nn.Module, path: str) -> None:
    unsupported = (
        getattr(module, "is_cross_attention", False)
        or getattr(module, "group_norm", None) is not None
        or getattr(module, "spatial_norm", None) is not None
        or getattr(module, "norm_q", None) is not None
        or getattr(module, "residual_connection", False)
        or getattr(module, "rescale_output_factor", 1.0) != 1.0
    )
    if unsupported:
        raise RuntimeError(f"{path}: attention control supports plain self-attention only")


@contextlib.contextmanager
def controlled_attention(unet: nn.Module, controller: AttentionController | None) -> Iterator[None]:
    """Install ``controller`` on every registered layer; restore the UNet's processors after.
    Without a controller (None) the UNet is left as it is."""
    if controller is None:
        yield
        return
    original = dict(unet.attn_processors)
    processors = dict(original)
    for layer in registered_layers(unet):
        _check_plain_self_attention(unet.get_submodule(layer.path), layer.path)
        processors[layer.processor_name] = ControlledAttnProcessor(controller, layer)
    unet.set_attn_processor(processors)
    try:
        yield
    finally:
        unet.set_attn_processor(dict(original))
