"""The spatial blend without probability tensors (``attention_matching.kernel``).

The Triton kernel runs in Triton's CPU interpreter in a child process
(``tests/fused_interpreted.py``, with ``TRITON_INTERPRET=1`` in the child's environment only),
checked against the blocked torch blend, the oracle. The rest runs here: the identity the
fused blend rests on (with torch's own distances), and how the kernel is chosen and refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from i2vedit.attention import kernels
from i2vedit.attention.control import MatchingParams
from i2vedit.attention.kernels import TRITON_DEVICE_TYPE, resolve_kernel
from i2vedit.attention.matching import (
    attention_probs,
    blend_outputs,
    blocked_masked_attention,
    distance_mask,
    frame_thresholds,
)
from i2vedit.config import validate_edit_config
from i2vedit.errors import InputError
from i2vedit.runner import matching_params
from tests.conftest import compose_edit

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu").type


def _interpreted(*args: str) -> dict:
    """Run a check of ``tests.fused_interpreted`` under Triton's interpreter; its JSON."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "tests.fused_interpreted", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_blend_from_outputs_equals_the_blend_of_probabilities():
    # the identity the fused path rests on, with torch's distances and attention outputs:
    # (1 - M) (P0 V) + M (P V) with M from per-head row distances == ((1 - M) P0 + M P) V
    g = torch.Generator().manual_seed(3)
    frames, heads, n_q, n_k, dim = 3, 4, 23, 17, 8
    q_src, q = (torch.randn(frames, heads, n_q, dim, generator=g) for _ in range(2))
    k_src, k, v = (torch.randn(frames, heads, n_k, dim, generator=g) for _ in range(3))
    thr = frame_thresholds((0.2, 0.7), frames)
    p0, p = attention_probs(q_src, k_src, 0.4), attention_probs(q, k, 0.4)
    mask = distance_mask((p0 - p).abs().sum(dim=-1), thr)
    assert 0 < int((mask == 1).sum()) < mask.numel()  # both kinds of rows
    out = blend_outputs(p0 @ v, p @ v, mask)
    oracle = blocked_masked_attention(q_src, k_src, q, k, v, 0.4, thr, 5)
    assert (out - oracle).abs().max() < 1e-5


def test_triton_blend_equals_the_torch_blend_in_the_interpreter():
    shapes = _interpreted("blend")["shapes"]
    for r in shapes:
        # fp32: the unthresholded M within 3e-7 (measured), far below the closest approach
        # of any M to its threshold, so the thresholded masks are the same, not only close
        assert r["m_diff"] < 1e-6, r
        assert r["margin"] > 1e-3, r
        assert r["same_replaced"], r
        assert r["mask_diff"] < 1e-6, r
        assert r["out_diff"] < 1e-5, r  # measured 1.7e-6 at most
        # bf16 inputs: the fused blend is within 0.021 of the fp32 oracle (measured; the torch
        # blend run in bf16 is 0.023 from it where no mask row flips, 0.51 where one does)
        assert r["bf16_vs_fp32_oracle"] < 0.05, r
    # the shapes mix rows the mask replaces and rows it blends
    assert all(r["replaced"] > 0 and r["blended"] > 0 for r in shapes[:3])


def test_a_tiny_edit_with_the_triton_kernel_equals_the_torch_kernel(
    source_video, keyframe, tmp_path
):
    # two steps, matching on; masks blending 3% of the rows (mask_thr [0.75, 0.95]), the rest
    # replaced. Measured: 1.2e-4 (latents up to 3.2). The tiny random UNet amplifies
    # rounding: 1e-7 of noise added to the torch blend's outputs alone moves the latents by
    # the same 1.2e-4.
    r = _interpreted("edit", str(source_video), str(keyframe), str(tmp_path / "cache"))
    assert r["kernel_calls"] > 0  # the Triton kernel made the triton edit's masks
    assert r["blended_fraction"] > 0, r
    assert r["diff"] < 1e-3, r


def test_auto_is_torch_on_the_cpu_and_the_same_edit_as_before():
    assert resolve_kernel("auto", CPU) == "torch"
    assert resolve_kernel("torch", CPU) == "torch"
    # the default MatchingParams (what every caller built before the kernel existed) is torch
    assert MatchingParams(num_steps=4).kernel == "torch"
    cfg = compose_edit([])
    assert matching_params(cfg, (0.5, 0.8), (0.35, 0.35), torch.device(CPU)).kernel == "torch"


def test_triton_on_the_cpu_without_the_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(InputError, match=r"attention_matching\.kernel.*triton.*TRITON_INTERPRET"):
        resolve_kernel("triton", CPU)


def test_triton_without_triton_is_refused_before_any_model(monkeypatch, edit_overrides):
    monkeypatch.setattr(kernels, "triton_installed", lambda: False)
    assert resolve_kernel("auto", TRITON_DEVICE_TYPE) == "torch"
    cfg = compose_edit([*edit_overrides, "attention_matching.kernel=triton"])
    with pytest.raises(InputError, match=r"attention_matching\.kernel.*triton.*not installed"):
        validate_edit_config(cfg)


def test_an_unknown_kernel_is_refused(edit_overrides):
    cfg = compose_edit([*edit_overrides, "attention_matching.kernel=fast"])
    with pytest.raises(InputError, match=r"attention_matching\.kernel.*fast.*auto, torch, triton"):
        validate_edit_config(cfg)
    with pytest.raises(ValueError, match="kernel"):
        MatchingParams(num_steps=4, kernel="auto")
