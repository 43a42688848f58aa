"""``experiments/gpu_suite.py`` and ``experiments/cost_model.py`` without a GPU: the suite's
``--dry`` chain end to end (so the first GPU run cannot fail on a typo), its budget, and the
cost model on hand-computable cases."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
if str(EXPERIMENTS) not in sys.path:
    sys.path.insert(0, str(EXPERIMENTS))

import cost_model  # noqa: E402
import gpu_suite  # noqa: E402

#: ``av`` blocked (the device image has no av): any import of it, direct or not, fails
NO_AV = (
    "import runpy, sys; sys.modules['av'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def test_dry_run_writes_every_part_without_av(tmp_path):
    out = tmp_path / "suite.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", NO_AV, str(EXPERIMENTS / "gpu_suite.py"), "--dry"]
    done = subprocess.run([*command, "--out", str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "## GPU suite, dry run, tiny model, CPU" in text
    assert "--dry --out" in text  # the command is in the section
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in row] for row in rows[1:]]
    parts = {(c[0], c[1]) for c in cells}
    for store in gpu_suite.STORES:
        assert ("edit", f"{store}/torch") in parts
        whole = [c for c in cells if c[:3] == ["edit", f"{store}/torch", "whole edit"]]
        assert whole and float(whole[0][3]) > 0 and whole[0][7]  # measured, cost model beside
    assert ("plain", "diffusers pipeline") in parts
    assert any(part == "xt" for part, _ in parts)
    for policy in ("none", "diffusers"):
        train = [c for c in cells if c[:2] == ["train", f"checkpointing {policy}"]]
        assert train and float(train[0][3]) > 0 and float(train[0][5]) > 0  # seconds, peak
    # the kernel the CPU cannot run is a row that says why, not a failure
    assert any(c[1] == "memory/triton" and "skipped" in c[-1] for c in cells)
    # --dry writes nowhere unless told
    again = subprocess.run(
        [*command, "--budget-s", "0"], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite.md"]


def test_a_spent_budget_skips_each_part_and_says_so(tmp_path, tiny_model):
    args = argparse.Namespace(dry=True, budget_s=0.0, gpu="h200", out=tmp_path / "b.md")
    args.section = "budget"
    cfg = gpu_suite.bench_config("edit", "tiny", ["device=cpu"])
    suite = gpu_suite.Suite(args, cfg, torch.device("cpu"), gpu_suite.Budget(0.0), gpu_suite.DRY)
    suite.plain_seconds = 1.0  # any part's estimate is then positive
    frames, keyframe = gpu_suite.bench_edit.synthetic_clip(4, *cfg.model.resolution)
    gpu_suite.part_edits(suite, tiny_model, frames, keyframe, ("torch",))
    gpu_suite.part_xt(suite, frames, keyframe, "torch")
    gpu_suite.part_train(suite, tiny_model)
    skipped = [r for r in suite.rows if r.note == "skipped: budget"]
    assert [(r.part, r.setting) for r in skipped] == [
        ("edit", "memory/torch"),
        ("edit", "disk/torch"),
        ("edit", "recompute/torch"),
        ("xt", "tiny x4"),
        ("train", "checkpointing none"),
        ("train", "checkpointing diffusers"),
        ("train", "checkpointing blocks"),
    ]
    assert all(r.seconds is None for r in suite.rows)
    assert text_has(args.out, "skipped: budget")


def text_has(path: Path, needle: str) -> bool:
    return needle in path.read_text()


# --------------------------------------------------------------------------- cost model


def test_flop_count_of_a_linear_and_a_convolution():
    linear = torch.nn.Linear(8, 4, device="meta")
    x = torch.empty(3, 8, device="meta")
    assert cost_model.count_flops(lambda: linear(x)) == 2 * 3 * 8 * 4
    conv = torch.nn.Conv2d(2, 3, 3, padding=1, device="meta")
    image = torch.empty(1, 2, 5, 5, device="meta")
    assert cost_model.count_flops(lambda: conv(image)) == 2 * (2 * 3 * 3) * 3 * 25


def test_matching_bytes_by_hand():
    # the torch path's passes in bf16, read + written per probability element (both blocks):
    # reads 2a+8+8+8+4+4+4+4+8+4+a, writes a+a+8+8+8+4+4+4+4+4+a, with a = 2: 58 + 50
    assert cost_model.torch_blend_bytes_per_element(2) == 108
    frames, heads, tokens, dim, a = 2, 3, 4, 5, 2
    one = frames * heads * tokens * dim * a  # 240 B: one of Q0, K0, Q, K, V, the output
    probs = frames * heads * tokens * tokens  # 96 elements
    torch_bytes = cost_model.spatial_match_bytes("torch", frames, heads, tokens, dim, a)
    assert torch_bytes == probs * 108 + 6 * one == 11808
    # fused (attention/fused.py), per (F, H, T, d) element: the distance kernel reads Q0 and Q
    # once, K0 and K in two streams (6a); each fused attention reads 3a and writes a; the blend
    # upcasts both outputs (reads 2a, writes 8), scales each (4 + 4 twice), sums (8 + 4), casts
    # back (4 + a): 14a + 20 read + 3a + 20 written = 74 B with a = 2; the fp32 distances
    # (F, H, T) are written and read (8 B)
    triton_bytes = cost_model.spatial_match_bytes("triton", frames, heads, tokens, dim, a)
    assert triton_bytes == 120 * 74 + 24 * 8 == 9072
    # products: torch Q0 K0^T, Q K^T, P~ V; triton two fused attentions and two streams of both
    assert cost_model.spatial_match_flops("torch", frames, heads, tokens, dim) == 3 * 2 * 480
    assert cost_model.spatial_match_flops("triton", frames, heads, tokens, dim) == 8 * 2 * 480
    # temporal: the recorded probabilities (tokens x heads x F x F) + V read + output written
    temporal = cost_model.temporal_match_bytes(frames, heads, tokens, dim, a)
    assert temporal == tokens * heads * frames * frames * a + 2 * tokens * heads * frames * dim * a
    with pytest.raises(ValueError, match="kernel"):
        cost_model.spatial_match_bytes("cuda", frames, heads, tokens, dim, a)


def test_implied_seconds_are_flops_at_peak_plus_bytes_at_bandwidth():
    gpu = cost_model.GPU("test", bf16_flops=1e12, bandwidth=1e9)
    stage = cost_model.StageCost("s", "", 3e12, {"torch": 2e9, "triton": 5e8}, {"triton": 1e12})
    assert stage.seconds(gpu, "torch") == pytest.approx(5.0)
    assert stage.seconds(gpu, "triton") == pytest.approx(4.5)
    assert cost_model.StageCost("plain", "", 1e12).seconds(gpu, "triton") == pytest.approx(1.0)
