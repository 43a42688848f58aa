"""bf16, as a GPU run uses it, checked on the CPU: the tiny model's edit (inversion, matching,
sampling, decode) and a motion-LoRA training step give finite values, and the edited frames
stay close to the fp32 run's."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from safetensors.torch import load_file

from i2vedit.data.video import read_video_frames
from i2vedit.metrics import psnr
from i2vedit.models.svd import LoadedModel
from i2vedit.models.tiny import build_tiny_pipeline
from i2vedit.tasks.edit import run_edit
from i2vedit.tasks.source import Clip
from i2vedit.tasks.train import train_clip
from tests.conftest import compose_edit, moving_square_frames

#: PSNR (dB) of the bf16 edit's frames against the fp32 edit's: measured 25.5 on this tiny
#: random model (4 steps, one 8-frame clip); a broken bf16 path (NaNs, a wrong cast) falls far
#: below, so the margin is wide.
BF16_PSNR_MIN = 20.0


@pytest.fixture(scope="module")
def bf16_model() -> LoadedModel:
    pipe = build_tiny_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(dtype=torch.bfloat16)
    return LoadedModel(pipe, torch.device("cpu"), torch.bfloat16, "tiny-seed0")


def test_bf16_edit_is_finite_and_close_to_fp32(tiny_model, bf16_model, edit_overrides, tmp_path):
    overrides = [o for o in edit_overrides if not o.startswith(("output_dir", "paths."))]
    frames = {}
    for name, model in (("fp32", tiny_model), ("bf16", bf16_model)):
        cfg = compose_edit(
            [
                *overrides,
                "num_steps=4",
                "metrics=off",
                "attention_matching.store=memory",
                f"output_dir={tmp_path / name}",
                f"paths.cache_dir={tmp_path / name / 'cache'}",
            ]
        )
        result = run_edit(cfg, model=model)
        plan = result.plan[0]
        inverted = plan.inversion.load()
        edited = plan.edits["blue"].load()
        for tensor in (
            inverted["latents"]["latents"],
            *inverted["records"].values(),
            edited["link"]["latent"],
            edited["link"]["image"],
        ):
            assert torch.isfinite(tensor.float()).all(), name
        frames[name] = read_video_frames(result.edited[0]).numpy()
    assert frames["bf16"].shape == frames["fp32"].shape
    assert psnr(frames["bf16"], frames["fp32"]) >= BF16_PSNR_MIN


def test_bf16_training_step_is_finite(tiny_model, edit_overrides, tmp_path):
    """One motion-LoRA step under Lightning's bf16-mixed precision on the CPU: a finite loss
    and finite LoRA weights."""
    cfg = compose_edit(
        [*edit_overrides, "lora.max_steps=1", "lora.checkpoint_every=1", "lora.rank=4"]
    )
    clip = Clip(0, torch.from_numpy(moving_square_frames(8)), [i / 12 for i in range(8)])
    folder = tmp_path / "lora"
    assert train_clip(cfg, tiny_model, clip, folder, "bf16-mixed", tmp_path / "run") == [1]
    weights = load_file(folder / "checkpoint-1" / "adapter_model.safetensors")
    assert weights and all(torch.isfinite(w.float()).all() for w in weights.values())
    (log,) = (tmp_path / "run" / "logs").rglob("metrics.csv")
    rows = list(csv.DictReader(log.open()))
    losses = [float(r["loss"]) for r in rows if r.get("loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    # the shared fp32 tiny UNet is back to its plain fp32 self
    assert all(p.dtype == torch.float32 for p in tiny_model.unet.parameters())
