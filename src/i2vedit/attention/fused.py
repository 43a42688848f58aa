"""The spatial masked blend without probability tensors (``attention_matching.kernel``).

The blend ``((1 - M) P0 + M P) V`` (``matching.masked_attention_blend``) has a per-query
scalar ``M``, so it equals ``(1 - M) (P0 V) + M (P V)``:

- ``P0 V = sdpa(q_src, k_src, v)`` and ``P V = sdpa(q, k, v)`` (the edit's ``V`` in both)
  come from the fused attention kernels;
- ``M`` needs, per query and head, the row distance ``d = sum_keys |P0 - P|``: a Triton kernel
  (``distance_kernel``) streams the keys in tiles and never writes a probability to memory;
- then ``M = clamp(mean_heads d, 0, 2) / 2``, the per-frame threshold rule
  (``matching.distance_mask``) and the combination (``matching.blend_outputs``), elementwise.

Bytes, finest SVD level at 576x1024 (9,216 tokens, 14 frames, 5 heads of 64, bf16): one
(frames, heads, queries, keys) fp32 probability tensor is 14 * 5 * 9216^2 * 4 B = 23.8 GB;
the torch kernel forms two per layer (in query blocks) and passes over each several times
(scores, softmax, difference, blend, product): on the order of 2 TB per step over the layers
of that level. The fused path reads Q and K of both passes and V (5 tensors of 14 * 5 *
9216 * 64 * 2 B = 83 MB), writes the two attention outputs and the (frames, heads, queries)
fp32 distances (2.6 MB), then combines the outputs in fp32 (165 MB per tensor): about 3 GB
per layer by this count, two thirds of it the elementwise combination.

The rows' log-sum-exps: the kernel computes them itself, in a first stream over the keys (an
online max and sum in fp32), then streams the keys again for the distance. The public
``scaled_dot_product_attention`` does not return them. The aten ops that do are private and
differ by backend: ``_scaled_dot_product_flash_attention_for_cpu`` (natural log, (B, H, L);
measured equal to ``torch.logsumexp`` of the scores within 4.8e-7 in fp32), the CUDA flash
op (half types only), the memory-efficient op (its lse padded to a multiple of 32 rows),
cuDNN's (its own layout); which of them SDPA would run is ``_fused_sdp_choice``'s call.
Taking the lse from them means redoing SDPA's dispatch, with CUDA branches that no test
without a GPU reaches, to save the first stream: two QK^T tile products and exponentials per
key tile, no extra memory traffic (a frame-head's K, 9216 * 64 * 2 B = 1.2 MB, is read again
from cache). What that first stream costs on a GPU is not measured yet (no GPU was at hand);
if it matters, the lse can come from the fused ops and the kernel keep only its second loop.

Temporal layers ("the same look"): no probabilities are materialised where a fused call
serves. The records of a temporal layer are its probabilities ``p``, rows x heads x 14 x 14
(9216 * 5 * 196 = 9.0 M values at the finest level: 36 MB in fp32, 18 MB as a bf16 record),
smaller than its Q or K (9216 * 5 * 14 * 64 = 41 M values, 83 MB each in bf16): the recorder
has to form ``p`` to keep it, and computes its output from the same ``p`` (a fused call
would read Q and K again, more bytes than ``p``, and would change inversion's numerics). The matcher's output is the recorded ``p`` times the
edit's V, a product with no QK^T to fuse; every temporal output that is not matched (the
unconditional half, the layers outside the schedule) already comes from the fused kernel.

Triton is imported only when the kernel runs, so the package imports where Triton is absent;
which kernel runs is ``attention.kernels`` (``auto`` picks ``torch`` without Triton).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from i2vedit.attention.matching import blend_outputs, distance_mask


def fused_masked_attention(
    q_src: torch.Tensor,
    k_src: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    thresholds: torch.Tensor,
) -> torch.Tensor:
    """``blocked_masked_attention`` without probability tensors: the same arguments (the
    source's records are cast to the edit's dtype) and shapes, all frames at once; returns
    (frames, heads, queries, dv) in ``v``'s dtype."""
    from i2vedit.attention.distance_kernel import attention_row_distance

    q_src, k_src = q_src.to(q.dtype), k_src.to(k.dtype)
    mask = distance_mask(attention_row_distance(q_src, k_src, q, k, scale), thresholds)
    out_src = F.scaled_dot_product_attention(q_src, k_src, v, scale=scale)
    out_edit = F.scaled_dot_product_attention(q, k, v, scale=scale)
    return blend_outputs(out_src, out_edit, mask)
