"""The accelerator tier (``pytest -m gpu``; skipped without a CUDA device, left out of
``make test``): a tiny edit on the accelerator, in fp32 and in the dtype ``dtype=auto`` picks
there (bf16), against the same edit on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import compose_edit

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

#: Mean absolute difference (0..255) allowed between the accelerator's frames and the CPU's
#: fp32 ones. Measured on the CPU for this edit (random tiny model, 3 steps): fp16 differs by
#: 0.56 (TF32 convolutions round like fp16, and only there), bf16 by 6.7, another ``seed`` by
#: 13 and another model (``model.seed=1``) by 36.5. So fp32 must agree closely; bf16 must
#: give the same kind of picture (not noise, not another model, not the zeros of a NaN).
FP32_MEAN_TOL = 1.0
LOW_MEAN_TOL = 20.0


def tiny_edit_frames(overrides: list[str], folder: Path, device: str, dtype: str) -> torch.Tensor:
    """The first clip of the tiny edit (model=tiny, built on ``device``), as float frames
    (F, H, W, 3) on the 0..255 scale, before any video coding. Each run has its own output and
    cache folders, so nothing computed on one device is reused on the other."""
    from i2vedit.tasks.edit import run_edit

    kept = [o for o in overrides if not o.startswith(("output_dir=", "paths.cache_dir="))]
    cfg = compose_edit(
        [
            *kept,
            f"device={device}",
            f"dtype={dtype}",
            f"output_dir={folder / 'out'}",
            f"paths.cache_dir={folder / 'cache'}",
        ]
    )
    result = run_edit(cfg)
    return result.clip_frames["blue"][0].float()


def test_tiny_edit_on_the_accelerator_matches_the_cpu(edit_overrides, tmp_path):
    cpu = tiny_edit_frames(edit_overrides, tmp_path / "cpu", "cpu", "fp32")
    assert cpu.std() > 1  # an image, not a constant
    # fp32 on the accelerator: the same numbers up to summation order (and TF32 convolutions)
    fp32 = tiny_edit_frames(edit_overrides, tmp_path / "fp32", "auto", "fp32")
    assert fp32.shape == cpu.shape
    assert (fp32 - cpu).abs().mean() < FP32_MEAN_TOL
    # the accelerator's own dtype (bf16 on CUDA): the same edit up to bf16 rounding
    low = tiny_edit_frames(edit_overrides, tmp_path / "auto", "auto", "auto")
    assert low.shape == cpu.shape
    assert (low - cpu).abs().mean() < LOW_MEAN_TOL
