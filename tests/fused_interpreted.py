"""Checks of the Triton blend that run in Triton's CPU interpreter, in a child process.

``tests/test_fused_blend.py`` runs ``python -m tests.fused_interpreted <check> [args]`` with
``TRITON_INTERPRET=1`` in the child's environment only (Triton reads it when a kernel is
defined, so setting it inside the pytest process would leak into every later test); the child
prints one JSON line of measurements that the test asserts on. Not collected by pytest.

- ``blend``: the fused blend against the blocked torch blend (the oracle) on random inputs
  of several shapes, in fp32 and bf16;
- ``edit VIDEO KEYFRAME CACHE``: a whole tiny-model edit (inversion, then sampling) with
  ``attention_matching.kernel=triton`` and with ``=torch``.
"""

from __future__ import annotations

import json
import sys

import torch

from i2vedit.attention.distance_kernel import attention_row_distance
from i2vedit.attention.fused import fused_masked_attention
from i2vedit.attention.matching import (
    attention_probs,
    blend_mask,
    blocked_masked_attention,
    distance_mask,
    frame_thresholds,
)

#: (frames, heads, queries, keys, head dim): odd token counts, one frame, many heads, head
#: dims 8 and 40 (not powers of two above 16), more keys than one tile and queries than one
#: block (64 each)
SHAPES = [
    (2, 3, 37, 29, 8),
    (1, 8, 37, 37, 40),
    (2, 2, 70, 131, 40),
    (1, 1, 1, 1, 8),
]
SCALE = 0.35
#: mask thresholds on the first and the last frame
THRESHOLDS = (0.3, 0.6)


def _inputs(shape, seed):
    frames, heads, n_q, n_k, dim = shape
    g = torch.Generator().manual_seed(seed)
    q_src, q = (torch.randn(frames, heads, n_q, dim, generator=g) for _ in range(2))
    k_src, k, v = (torch.randn(frames, heads, n_k, dim, generator=g) for _ in range(3))
    # the edit departs from the source by a query-dependent amount, so the masks mix blended
    # rows (M < thr) and replaced ones (M >= thr -> 1)
    departure = torch.linspace(0, 1, n_q)[:, None] ** 2
    return q_src, k_src, q_src + departure * q, k_src + 0.1 * k, v


def _distances(q_src, k_src, q, k):
    """The kernel's row distances (what the mask is made of), blocks chosen as in an edit."""
    return attention_row_distance(q_src, k_src, q, k, SCALE)


def _oracle_m(q_src, k_src, q, k):
    """``M`` before and after thresholding, as ``blend_mask`` forms it."""
    p0, p = attention_probs(q_src, k_src, SCALE), attention_probs(q, k, SCALE)
    return (p0 - p).abs().mean(dim=1).sum(dim=-1).clamp(0, 2) / 2, blend_mask(p0, p, _thr(q))


def _thr(q):
    return frame_thresholds(THRESHOLDS, q.shape[0])


def blend() -> dict:
    """Per shape: the largest difference of the unthresholded ``M``, whether the thresholded
    masks are equal, the closest any ``M`` comes to a threshold, and the output differences
    (fp32 against the fp32 oracle; bf16 inputs against the oracle run on the same bf16
    inputs, and the fp32 oracle)."""
    results = []
    for i, shape in enumerate(SHAPES):
        q_src, k_src, q, k, v = _inputs(shape, i)
        thr = _thr(q)
        m_ref, mask_ref = _oracle_m(q_src, k_src, q, k)
        distances = _distances(q_src, k_src, q, k)
        # the smallest blocks: several query blocks and key tiles, masked at the edges
        small = attention_row_distance(q_src, k_src, q, k, SCALE, (16, 16))
        m = distances.mean(dim=1).clamp(0, 2) / 2
        mask = distance_mask(distances, thr)
        args = (SCALE, thr, 16)
        oracle = blocked_masked_attention(q_src, k_src, q, k, v, *args)
        fused = fused_masked_attention(q_src, k_src, q, k, v, SCALE, thr)
        half = [x.bfloat16() for x in (q_src, k_src, q, k, v)]
        oracle_bf16 = blocked_masked_attention(*half, *args).float()
        fused_bf16 = fused_masked_attention(*half, SCALE, thr).float()
        results.append(
            {
                "shape": shape,
                "m_diff": (m - m_ref).abs().max().item(),
                "small_blocks_diff": (small - distances).abs().max().item(),
                "same_replaced": torch.equal(mask == 1, mask_ref == 1),
                "mask_diff": (mask - mask_ref).abs().max().item(),
                "replaced": int((mask_ref == 1).sum()),
                "blended": int((mask_ref < 1).sum()),
                "margin": (m_ref - thr[:, None]).abs().min().item(),
                "out_diff": (fused - oracle).abs().max().item(),
                "bf16_vs_bf16_oracle": (fused_bf16 - oracle_bf16).abs().max().item(),
                "bf16_vs_fp32_oracle": (fused_bf16 - oracle).abs().max().item(),
                "bf16_oracle_vs_fp32_oracle": (oracle_bf16 - oracle).abs().max().item(),
            }
        )
    return {"shapes": results}


def edit(video: str, keyframe: str, cache: str) -> dict:
    """A tiny-model edit of the synthetic video, sampled with each kernel (from records of
    the same inversion): the largest latent difference, and how often the Triton kernel ran
    (so the agreement is the fused blend's, not a fallback's)."""
    from i2vedit.attention import distance_kernel, fused
    from i2vedit.config import register_configs
    from i2vedit.models.svd import LoadedModel
    from i2vedit.models.tiny import build_tiny_pipeline
    from tests.conftest import compose_edit
    from tests.test_stores import _edit_latents

    register_configs()
    pipe = build_tiny_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    model = LoadedModel(pipe, torch.device("cpu"), torch.float32, "tiny-seed0")
    overrides = [
        f"data.video_path={video}",
        f"data.keyframe_paths=[{keyframe}]",
        "data.sample_fps=12",
        "data.end_clip_id=0",
        "num_steps=2",
        # thresholds among the tiny model's M (0.47 to 1), so the masks blend some rows
        "attention_matching.mask_thr=[0.75,0.95]",
        f"paths.cache_dir={cache}",
    ]
    calls, blended = [], []
    kernel_distance, kernel_mask = distance_kernel.attention_row_distance, fused.distance_mask

    def counted(*args):
        calls.append(args[0].shape)
        return kernel_distance(*args)

    def mask_counted(*args):
        mask = kernel_mask(*args)
        blended.append((mask < 1).float().mean().item())
        return mask

    distance_kernel.attention_row_distance, fused.distance_mask = counted, mask_counted
    latents = {}
    for kernel in ("torch", "triton"):
        cfg = compose_edit([*overrides, f"attention_matching.kernel={kernel}"])
        latents[kernel], _ = _edit_latents(cfg, model, "memory", None)
    return {
        "diff": (latents["triton"] - latents["torch"]).abs().max().item(),
        "scale": latents["torch"].abs().max().item(),
        "kernel_calls": len(calls),
        "blended_fraction": sum(blended) / max(1, len(blended)),
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    check, *args = sys.argv[1:]
    sys.stdout.write(json.dumps({"blend": blend, "edit": edit}[check](*args)) + "\n")
