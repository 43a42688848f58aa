"""The Triton kernel of the fused spatial blend: per query row and head, the L1 distance
``sum_keys |softmax(q0 K0^T s) - softmax(q K^T s)|`` between the source's and the edit's
attention rows, without writing a probability to memory.

This module imports Triton at import time: only ``i2vedit.attention.fused`` imports it, and
only once a Triton kernel is asked for (the package imports where Triton is absent). Why the
kernel computes the rows' log-sum-exps itself is told in ``i2vedit.attention.fused``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

#: query rows per program and key columns per tile on a GPU (tl.dot wants >= 16)
GPU_BLOCKS = (64, 64)
#: the largest blocks in Triton's interpreter, whose cost is per tile operation, not per
#: element: 64 x 64 blocks took 38 s per layer call of the tiny model's edit (8 frames,
#: 2 heads, 384 tokens), one block per frame and head a small fraction of that
INTERPRETER_BLOCKS = (512, 512)


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr):
    """``a @ b`` accumulated in fp32 (fp32 inputs: true fp32 products, not tf32). ``UPCAST``
    (Triton's interpreter) casts the operands to fp32 first: the interpreter multiplies bf16
    tiles as their raw 16-bit integers. A bf16 product is exact in fp32, so this is the
    accelerator's bf16 dot up to the order of the fp32 sums."""
    if UPCAST:
        a, b = a.to(tl.float32), b.to(tl.float32)
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _row_lse2(
    q, k_base, k_stride, n_keys, dims, dim_ok, scale2,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """Base-2 log-sum-exp of one block of score rows ``q K^T * scale2`` (online over keys)."""
    cols = tl.arange(0, BLOCK_N)
    top = tl.full([BLOCK_M], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, n_keys, BLOCK_N):
        keys = start + cols
        key_ok = keys < n_keys
        k = tl.load(
            k_base + keys[None, :] * k_stride + dims[:, None],
            mask=dim_ok[:, None] & key_ok[None, :],
            other=0.0,
        )
        s = _dot(q, k, UPCAST) * scale2
        s = tl.where(key_ok[None, :], s, float("-inf"))
        new_top = tl.maximum(top, tl.max(s, axis=1))
        total = total * tl.exp2(top - new_top) + tl.sum(tl.exp2(s - new_top[:, None]), axis=1)
        top = new_top
    return top + tl.log2(total)


@triton.jit
def _distance_kernel(
    q0_ptr, k0_ptr, q1_ptr, k1_ptr, out_ptr,
    heads, n_queries, n_keys, head_dim, scale2,
    sq0_f, sq0_h, sq0_t, sk0_f, sk0_h, sk0_t,
    sq1_f, sq1_h, sq1_t, sk1_f, sk1_h, sk1_t,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """One program: one (frame, head) and ``BLOCK_M`` query rows. The keys are streamed twice:
    first for both rows' log-sum-exps, then for ``sum |p0 - p1|`` (fp32 throughout)."""
    fh = tl.program_id(0)
    f, h = fh // heads, fh % heads
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    cols = tl.arange(0, BLOCK_N)
    row_ok, dim_ok = rows < n_queries, dims < head_dim
    q_mask = row_ok[:, None] & dim_ok[None, :]
    q0_base = q0_ptr + f * sq0_f + h * sq0_h + rows[:, None] * sq0_t + dims[None, :]
    q1_base = q1_ptr + f * sq1_f + h * sq1_h + rows[:, None] * sq1_t + dims[None, :]
    k0_base = k0_ptr + f * sk0_f + h * sk0_h
    k1_base = k1_ptr + f * sk1_f + h * sk1_h
    q0 = tl.load(q0_base, mask=q_mask, other=0.0)
    q1 = tl.load(q1_base, mask=q_mask, other=0.0)
    lse0 = _row_lse2(q0, k0_base, sk0_t, n_keys, dims, dim_ok, scale2, BLOCK_M, BLOCK_N, UPCAST)
    lse1 = _row_lse2(q1, k1_base, sk1_t, n_keys, dims, dim_ok, scale2, BLOCK_M, BLOCK_N, UPCAST)
    dist = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, n_keys, BLOCK_N):
        keys = start + cols
        k_mask = dim_ok[:, None] & (keys < n_keys)[None, :]
        k_offsets = keys[None, :]
        k0 = tl.load(k0_base + k_offsets * sk0_t + dims[:, None], mask=k_mask, other=0.0)
        k1 = tl.load(k1_base + k_offsets * sk1_t + dims[:, None], mask=k_mask, other=0.0)
        p0 = tl.exp2(_dot(q0, k0, UPCAST) * scale2 - lse0[:, None])
        p1 = tl.exp2(_dot(q1, k1, UPCAST) * scale2 - lse1[:, None])
        diff = tl.where((keys < n_keys)[None, :], tl.abs(p0 - p1), 0.0)
        dist += tl.sum(diff, axis=1)
    tl.store(out_ptr + fh * n_queries + rows, dist, mask=row_ok)


def _checked(x: torch.Tensor) -> torch.Tensor:
    """The kernel addresses the last axis with stride 1."""
    if x.dim() != 4:
        raise ValueError(f"expected (frames, heads, tokens, dim), got {tuple(x.shape)}")
    return x if x.stride(-1) == 1 else x.contiguous()


def _blocks(n_queries: int, n_keys: int) -> tuple[int, int]:
    if not triton.knobs.runtime.interpret:
        return GPU_BLOCKS
    fit = [max(16, triton.next_power_of_2(n)) for n in (n_queries, n_keys)]
    return min(fit[0], INTERPRETER_BLOCKS[0]), min(fit[1], INTERPRETER_BLOCKS[1])


def attention_row_distance(
    q_src: torch.Tensor,
    k_src: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    blocks: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``sum_keys |softmax(q_src k_src^T * scale) - softmax(q k^T * scale)|`` per (frame, head,
    query): (frames, heads, queries) in fp32. Queries (frames, heads, queries, d), keys
    (frames, heads, keys, d), the source's and the edit's of one shape each. ``blocks``:
    (query rows per program, key columns per tile), powers of two >= 16 (None: chosen for
    the device)."""
    q_src, k_src, q, k = (_checked(x) for x in (q_src, k_src, q, k))
    frames, heads, n_queries, head_dim = q.shape
    n_keys = k.shape[-2]
    out = torch.empty(frames, heads, n_queries, dtype=torch.float32, device=q.device)
    block_m, block_n = blocks or _blocks(n_queries, n_keys)
    grid = (frames * heads, triton.cdiv(n_queries, block_m))
    strides = [s for x in (q_src, k_src, q, k) for s in x.stride()[:3]]
    _distance_kernel[grid](
        q_src, k_src, q, k, out,
        heads, n_queries, n_keys, head_dim, scale * math.log2(math.e),
        *strides,
        BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        UPCAST=triton.knobs.runtime.interpret,
    )  # fmt: skip
    return out
