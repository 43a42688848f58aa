"""Motion-LoRA training on the tiny SVD: the loss falls, only the LoRA moves, checkpoints round
trip, and an interrupted run resumes to the same weights."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from i2vedit.core.edm import ConditioningParams, encode_condition, encode_video
from i2vedit.core.lora import (
    load_lora,
    lora_state_dict,
    motion_lora_config,
    remove_lora,
    save_lora,
    temporal_linear_layers,
)
from i2vedit.models.tiny import build_tiny_pipeline
from i2vedit.tasks.source import Clip
from i2vedit.tasks.train import train_clip
from i2vedit.training.loss import cosine_interpolated_sigma, edm_loss
from i2vedit.training.module import MotionLoRAModule, OneClipDataModule, checkpoint_steps
from tests.conftest import compose_edit, moving_square_frames


def test_cosine_interpolated_sigma_ends_and_middle():
    sigma = cosine_interpolated_sigma(torch.tensor([0.0, 1.0]))
    assert torch.allclose(sigma, torch.tensor([0.002, 700.0]), rtol=1e-4)
    u = torch.linspace(0, 1, 101)
    assert torch.all(cosine_interpolated_sigma(u).diff() > 0)  # monotone in u


def test_cosine_interpolated_sigma_quantiles_match_the_reference():
    # The reference draws with k-diffusion's rand_cosine_interpolated; its sigma quantiles
    # 1% / 50% / 99% are 0.0099 / 0.709 / 58.1. The map u -> sigma is monotone, so the q
    # quantile of sigma is sigma(q) on a fine grid of u. (The earlier lerp weight u gave
    # 0.018 / 0.709 / 30.7.)
    u = torch.linspace(0, 1, 100_001)
    sigma = cosine_interpolated_sigma(u)
    for q, expected in ((0.01, 0.0099), (0.5, 0.709), (0.99, 58.1)):
        measured = sigma[round(q * (len(u) - 1))].item()
        assert abs(math.log(measured / expected)) < math.log(1.05), (q, measured, expected)


def test_edm_loss_weight():
    d, z = torch.ones(2, 2), torch.zeros(2, 2)
    assert edm_loss(d, z, 2.0).item() == pytest.approx((1 + 4) / 4)


class FixedDraw:
    """Ten fixed (sigma, noise) pairs, cycled: steps k and k+10 see the same draw."""

    def __init__(self, shape):
        g = torch.Generator().manual_seed(11)
        self.sigmas = [0.05, 0.1, 0.2, 0.35, 0.5, 0.8, 1.2, 2.0, 3.5, 6.0]
        self.noise = [torch.randn(shape, generator=g) for _ in self.sigmas]

    def __call__(self, step, latents):
        return self.sigmas[step % 10], self.noise[step % 10].to(latents)


class LossLog(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _clip_tensors(pipe):
    frames = (
        torch.from_numpy(moving_square_frames(8, 32, 48)).permute(0, 3, 1, 2).float() / 127.5 - 1
    )
    with torch.no_grad():
        latents = encode_video(pipe, frames)
        cond = encode_condition(
            pipe, frames[:1], ConditioningParams(), 8, torch.Generator().manual_seed(0), False
        )
    return latents, cond


def _trainer(steps, callbacks=()):
    return L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )


@pytest.fixture(scope="module")
def trained():
    """60 steps of training on a synthetic clip with a fixed sigma/noise cycle."""
    pipe = build_tiny_pipeline(0)
    latents, cond = _clip_tensors(pipe)
    base = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    config = motion_lora_config(pipe.unet, rank=8, alpha=8, dropout=0.0)
    module = MotionLoRAModule(pipe.unet, config, 2e-3, 1e-2, 0, "none", FixedDraw(latents.shape))
    lora_before = {k: v.clone() for k, v in lora_state_dict(pipe.unet).items()}
    log = LossLog()
    _trainer(60, [log]).fit(module, OneClipDataModule(latents, cond, 60))
    pipe.unet.eval()
    return pipe, module, config, base, lora_before, log.losses, latents, cond


def test_loss_decreases(trained):
    losses = trained[5]
    assert len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first, (first, last)


def test_only_lora_parameters_change(trained):
    pipe, _, _, base, lora_before = trained[:5]
    for name, param in pipe.unet.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(param, base[key]), name
    after = lora_state_dict(pipe.unet)
    assert after.keys() == lora_before.keys()
    assert len(after) == 2 * len(temporal_linear_layers(build_tiny_pipeline(0).unet)) == 2 * 72
    assert all(not torch.equal(after[k], lora_before[k]) for k in after)


def _unet_out(unet, latents, cond):
    x = torch.cat([latents, cond.image_latents], dim=2)
    with torch.no_grad():
        return unet(x, torch.tensor(0.3), cond.embeddings, cond.time_ids, return_dict=False)[0]


def test_checkpoint_round_trip_and_scale_zero(trained, tmp_path):
    pipe, module, config, _, _, _, latents, cond = trained
    expected = _unet_out(pipe.unet, latents, cond)
    folder = save_lora(pipe.unet, config, tmp_path / "checkpoint-60")
    assert {p.name for p in folder.iterdir()} == {
        "adapter_model.safetensors",
        "adapter_config.json",
    }
    fresh = build_tiny_pipeline(0).unet.eval()
    base_out = _unet_out(fresh, latents, cond)
    load_lora(fresh, folder)
    assert (_unet_out(fresh, latents, cond) - expected).abs().max() < 1e-5
    remove_lora(fresh)
    load_lora(fresh, folder, scale=0.0)
    assert torch.allclose(_unet_out(fresh, latents, cond), base_out, atol=1e-6)
    remove_lora(fresh)
    assert torch.equal(_unet_out(fresh, latents, cond), base_out)
    assert not (_unet_out(fresh, latents, cond) - expected).abs().max() < 1e-5


class StopAfter(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_interrupted_training_resumes_to_the_same_weights(tiny_model, edit_overrides, tmp_path):
    cfg = compose_edit(
        [*edit_overrides, "lora.max_steps=4", "lora.checkpoint_every=1", "lora.rank=4"]
    )
    clip = Clip(0, torch.from_numpy(moving_square_frames(8)), [i / 12 for i in range(8)])
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train_clip(cfg, tiny_model, clip, whole, "32", tmp_path / "run") == [1, 2, 3, 4]
    assert train_clip(
        cfg, tiny_model, clip, parts, "32", tmp_path / "run", callbacks=[StopAfter(2)]
    ) == [1, 2]
    assert (parts / "resume.ckpt").is_file()
    assert train_clip(cfg, tiny_model, clip, parts, "32", tmp_path / "run") == [1, 2, 3, 4]
    assert not (parts / "resume.ckpt").exists()
    for step in (2, 4):
        a = load_file_dict(whole / f"checkpoint-{step}")
        b = load_file_dict(parts / f"checkpoint-{step}")
        assert a.keys() == b.keys()
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    # the shared tiny UNet is back to its plain self
    assert not any("lora_" in n for n, _ in tiny_model.unet.named_parameters())
    assert checkpoint_steps(whole) == [1, 2, 3, 4]


def load_file_dict(folder):
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def test_preview_written_during_training(tiny_model, edit_overrides, keyframe, tmp_path):
    cfg = compose_edit(
        [
            *edit_overrides,
            "lora.max_steps=2",
            "lora.checkpoint_every=2",
            "lora.rank=4",
            "lora.preview_every=1",
            "lora.preview_steps=2",
        ]
    )
    clip = Clip(0, torch.from_numpy(moving_square_frames(8)), [i / 12 for i in range(8)])
    train_clip(cfg, tiny_model, clip, tmp_path / "lora", "32", tmp_path / "run", keyframe, fps=12)
    from i2vedit.data.video import read_video_frames

    previews = sorted((tmp_path / "run" / "preview" / "clip_0").glob("step-*.mp4"))
    assert [p.name for p in previews] == ["step-1.mp4", "step-2.mp4"]
    assert read_video_frames(previews[-1]).shape == (8, 48, 64, 3)


def test_skip_interval_training_attends_to_clip_0(
    tiny_model, edit_overrides, tmp_path, monkeypatch
):
    """Clip 1's LoRA trains with clip 0's keys and values beside its own (block checkpointing
    on, so backward recomputes the temporal blocks with them too); plain chaining does not;
    the UNet's own processors are back afterwards."""
    from i2vedit.attention.control import AttentionController

    seen = []
    original = AttentionController.temporal_kv

    def spy(self, layer, k, v):
        k2, v2 = original(self, layer, k, v)
        if layer.kind == "temporal":
            seen.append((self.kv_capture is not None, k2.shape[-2], torch.is_grad_enabled()))
        return k2, v2

    monkeypatch.setattr(AttentionController, "temporal_kv", spy)
    frames = torch.from_numpy(moving_square_frames(16))
    first = Clip(0, frames[:8], [i / 12 for i in range(8)])
    later = Clip(1, frames[8:], [i / 12 for i in range(8, 16)])
    processors = {k: type(v) for k, v in tiny_model.unet.attn_processors.items()}
    weights = {}
    for mode in ("skip_interval", "autoregressive"):
        cfg = compose_edit(
            [
                *edit_overrides,
                f"long_video={mode}",
                "lora.max_steps=2",
                "lora.checkpoint_every=2",
                "lora.rank=4",
                "lora.checkpointing=blocks",
            ]
        )
        seen.clear()
        folder = tmp_path / mode
        steps = train_clip(cfg, tiny_model, later, folder, "32", tmp_path / "run", first_clip=first)
        assert steps == [2]
        weights[mode] = load_file_dict(folder / "checkpoint-2")
        if mode == "skip_interval":
            captured = {n for cap, n, _ in seen if cap}
            trained = {(n, grad) for cap, n, grad in seen if not cap}
            assert captured == {8}  # clip 0's own pass, which records its keys and values
            assert trained == {(16, True)}  # clip 1 attends to 8 + 8 frames, with gradients
            # each temporal layer runs twice a step (forward, and its recomputation in
            # backward), both times with clip 0's keys and values; clip 0's pass once
            assert sum(not cap for cap, _, _ in seen) == 2 * sum(cap for cap, _, _ in seen)
        else:
            assert seen == []  # no controller installed at all
        assert {k: type(v) for k, v in tiny_model.unet.attn_processors.items()} == processors
    a, b = weights["skip_interval"], weights["autoregressive"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) > 1e-6


def test_training_covers_a_short_last_clip(tiny_model, source_video, tmp_path, monkeypatch):
    """12 sampled frames with chunk 8 and overlay 1: clip 0 (8 frames) and a shorter clip 1
    (5 frames) each get their motion LoRA, as the edit of the same frames expects."""
    from i2vedit.tasks import train as train_task
    from tests.conftest import compose_train

    trained = []
    original = train_task.train_clip

    def spy(cfg, model, clip, *args, **kwargs):
        trained.append((clip.clip_id, len(clip.frames)))
        return original(cfg, model, clip, *args, **kwargs)

    monkeypatch.setattr(train_task, "train_clip", spy)
    cfg = compose_train(
        [
            f"data.video_path={source_video}",
            "data.sample_fps=12",
            "data.end_t=0.95",
            "lora.max_steps=1",
            "lora.checkpoint_every=1",
            "lora.rank=4",
            f"output_dir={tmp_path / 'out'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ]
    )
    result = train_task.run_train(cfg, model=tiny_model)
    assert trained == [(0, 8), (1, 5)]
    assert result.checkpoints == {0: [1], 1: [1]}
