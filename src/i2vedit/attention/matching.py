"""The paper's attention ideas, each a small named function: the spatial masked blend and its
per-frame thresholds. When each layer matches (the temporal injection schedule) is
``i2vedit.attention.schedule``; the blend without probability tensors (the same rule from
row distances and fused attention outputs) is ``i2vedit.attention.fused``."""

from __future__ import annotations

import torch


def attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(Q K^T * scale) over the last axis: the product in the inputs' dtype, the
    softmax (and its result) in fp32."""
    return torch.softmax(torch.matmul(q, k.transpose(-1, -2)).float() * scale, dim=-1)


def frame_thresholds(mask_thr: tuple[float, float], num_frames: int) -> torch.Tensor:
    """Per-frame mask threshold: ``thr0 + (thr1 - thr0) * f / F`` (never quite reaching thr1)."""
    f = torch.arange(num_frames, dtype=torch.float32)
    return mask_thr[0] + (mask_thr[1] - mask_thr[0]) * f / num_frames


def blend_mask(p_src: torch.Tensor, p_edit: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Where the edit departs from the source attention, per query token.

    ``p_src``, ``p_edit``: (frames, heads, queries, keys) probabilities; ``thresholds``:
    (frames,). ``M = clamp(sum_keys mean_heads |P0 - P|, 0, 2) / 2``, then ``M >= thr`` -> 1.
    Returns (frames, queries) in fp32.
    """
    m = (p_src.float() - p_edit.float()).abs().mean(dim=1).sum(dim=-1).clamp(0, 2) / 2
    return thresholded(m, thresholds)


def thresholded(m: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """The per-frame threshold rule: ``M >= thr`` -> 1, else ``M``. ``m`` (frames, queries)."""
    thr = thresholds.to(m.device, m.dtype)[:, None]
    return torch.where(m >= thr, torch.ones_like(m), m)


def distance_mask(distances: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``blend_mask`` from per-head row distances ``d_h = sum_keys |P0 - P|`` (frames, heads,
    queries): ``M = clamp(mean_heads d_h, 0, 2) / 2``, thresholded. Returns (frames, queries)
    in fp32."""
    return thresholded(distances.float().mean(dim=1).clamp(0, 2) / 2, thresholds)


def masked_attention_blend(
    p_src: torch.Tensor, p_edit: torch.Tensor, v: torch.Tensor, thresholds: torch.Tensor
) -> torch.Tensor:
    """The spatial "masked copy": ``((1 - M) P0 + M P) V`` with the edit's ``V``.

    Shapes: probabilities (frames, heads, queries, keys), ``v`` (frames, heads, keys, dim);
    returns (frames, heads, queries, dim) in ``v``'s dtype.
    """
    m = blend_mask(p_src, p_edit, thresholds)[:, None, :, None]
    probs = (1 - m) * p_src.float() + m * p_edit.float()
    return torch.matmul(probs.to(v.dtype), v)


def blend_outputs(
    out_src: torch.Tensor, out_edit: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``masked_attention_blend`` from the two attention outputs: ``M`` is one scalar per
    query, so ``((1 - M) P0 + M P) V = (1 - M) (P0 V) + M (P V)``. Outputs (frames, heads,
    queries, dv), ``mask`` (frames, queries); combined in fp32, returned in ``out_edit``'s
    dtype."""
    m = mask[:, None, :, None]
    return ((1 - m) * out_src.float() + m * out_edit.float()).to(out_edit.dtype)


def blocked_masked_attention(
    q_src: torch.Tensor,
    k_src: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    thresholds: torch.Tensor,
    block: int,
) -> torch.Tensor:
    """``masked_attention_blend`` of the source's and the edit's attention, ``block`` query
    tokens at a time: the mask of a query depends on its own row only, so the result is the
    same, while no probability tensor larger than (frames, heads, block, keys) is alive.

    Shapes: queries (frames, heads, queries, d), keys (frames, heads, keys, d), ``v`` (frames,
    heads, keys, dv); returns (frames, heads, queries, dv) in ``v``'s dtype.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=v.dtype, device=v.device)
    for start in range(0, q.shape[-2], block):
        rows = slice(start, start + block)
        out[..., rows, :] = masked_attention_blend(
            attention_probs(q_src[..., rows, :], k_src, scale),
            attention_probs(q[..., rows, :], k, scale),
            v,
            thresholds,
        )
    return out
