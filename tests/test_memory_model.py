"""The memory model of ``experiments/memory_model.py``: its live-bytes tracker on cases whose
peaks are known by hand (fast), and a small edit modeled on fake tensors against
``MemTracker`` on the real run (slow)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
if str(EXPERIMENTS) not in sys.path:
    sys.path.insert(0, str(EXPERIMENTS))

import memory_model as mm  # noqa: E402


def test_live_bytes_counts_each_storage_once_until_it_is_freed():
    tracker = mm.LiveBytes("cpu")
    with tracker:
        a = torch.empty(1000, dtype=torch.float32)  # 4000 B
        b = torch.empty(250, dtype=torch.float64)  # 2000 B
        view = a.view(10, 100)  # a's storage: nothing more
        del a  # the view keeps it
        c = torch.empty(100, dtype=torch.bfloat16)  # 200 B: 6200 live, the peak
        del view  # 4000 B freed
        assert (tracker.live, tracker.peak) == (2200, 6200)
        tracker.reset_peak()
        d = torch.ones(50, dtype=torch.uint8) + 1  # ones (50 B) then the sum (50 B)
    assert (tracker.live, tracker.peak) == (2250, 2300)
    del b, c, d
    assert tracker.live == 0


def test_live_bytes_rounds_to_the_allocator_block_and_skips_other_devices():
    tracker = mm.LiveBytes("cpu", block=512)
    with tracker:
        keep = [torch.empty(1000, dtype=torch.float32), torch.empty(1, dtype=torch.uint8)]
        torch.empty(10, device="meta")  # another device: not counted
    assert tracker.live == 4096 + 512
    del keep
    assert tracker.live == 0


def test_fake_accelerator_counts_device_tensors_and_runs_host_work_for_real():
    """On the modeled accelerator nothing is allocated: a 16 GiB fake tensor counts, host
    bookkeeping runs on real tensors (its values are there) and is not counted."""
    fake = mm.FakeDevice(mm.ACCELERATOR, mm.LiveBytes(mm.ACCELERATOR.type, mm.ALLOCATOR_BLOCK))
    with fake.active():
        big = torch.empty(2**32, dtype=torch.float32, device=mm.ACCELERATOR)
        host = torch.arange(4.0) * 2  # real: its values can be read
        assert float(host.sum()) == 12.0
        moved = host.to(mm.ACCELERATOR)  # 16 B, one 512-byte block
        assert fake.tracker.live == 2**34 + 512
        q = torch.empty(2, 5, 4608, 64, dtype=torch.bfloat16, device=mm.ACCELERATOR)
        fake.tracker.reset_peak()
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        # the fused kernel: beside its output, its fp32 log-sum-exp and two RNG scalars
        # (one 512-byte block each); no 4608 x 4608 attention matrix (424 MB)
        lse = 2 * 5 * 4608 * 4
        assert fake.tracker.peak - fake.tracker.live == lse + 2 * mm.ALLOCATOR_BLOCK
        assert out.shape == q.shape
    del big, moved


def test_cuda_autocast_policy_runs_cudas_fp32_functions_in_fp32():
    x = torch.randn(4, 8)
    with mm.cuda_autocast_policy(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.nn.Linear(8, 8)(x)
        assert y.dtype == torch.bfloat16  # matmuls in bf16, as on CUDA
        assert torch.nn.functional.layer_norm(y, (8,)).dtype == torch.float32
        assert torch.nn.functional.group_norm(y.view(1, 4, 8), 2).dtype == torch.float32
    assert torch.nn.functional.layer_norm is not None


def test_gpu_check_and_json_options_parse():
    args = mm.parse_args(["--gpu-check", "--json", "--device", "cuda:1"])
    assert args.gpu_check and args.json and args.device == "cuda:1"
    assert mm.parse_args([]).rows == ["edit", "before", "train"]


@pytest.mark.slow
def test_model_of_a_small_edit_agrees_with_memtracker_on_the_real_run():
    """The tiny edit (recompute store, 2 steps) modeled on fake CPU tensors against the same
    edit run for real under MemTracker: every stage's peak within 1% (measured: equal)."""
    rows, worst, info = mm.compare(*mm.CHECK_EDIT, torch.device("cpu"))
    assert len(rows) == 5 and info == {}
    assert worst <= 0.01, rows
