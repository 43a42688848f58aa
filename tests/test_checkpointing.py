"""``lora.checkpointing`` on the tiny SVD: ``blocks`` wraps every transformer block and resnet
once, really recomputes them in backward, gives the loss and LoRA gradients of ``none`` (as
does ``diffusers``), and leaves the UNet exactly as it found it; the policy is checked and is
not part of the LoRA's cache key. Also the frozen weights' training dtype."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock, TemporalBasicTransformerBlock
from diffusers.models.resnet import SpatioTemporalResBlock

from i2vedit.config import CHECKPOINTING, check_lora
from i2vedit.core.edm import denoise
from i2vedit.core.lora import motion_lora_config
from i2vedit.errors import InputError
from i2vedit.models.tiny import build_tiny_pipeline
from i2vedit.tasks.keys import lora_root
from i2vedit.training.checkpointing import POLICIES, block_checkpointing, checkpointed_blocks
from i2vedit.training.module import (
    MotionLoRAModule,
    OneClipDataModule,
    frozen_weights_dtype,
    frozen_weights_in,
)
from tests.conftest import compose_train
from tests.test_training import FixedDraw, _clip_tensors


def test_blocks_are_every_transformer_block_and_resnet_once():
    unet = build_tiny_pipeline(0).unet
    blocks = checkpointed_blocks(unet)
    # the tiny UNet by its config: 6 TransformerSpatioTemporalModels (2 down, 1 mid, 3 up),
    # each one spatial and one temporal block; 2 + 2 down, 2 mid and 3 + 3 up resnets
    kinds = [type(b) for b in blocks]
    assert kinds.count(BasicTransformerBlock) == 6
    assert kinds.count(TemporalBasicTransformerBlock) == 6
    assert kinds.count(SpatioTemporalResBlock) == 12
    assert len(blocks) == 24
    inner = {id(m) for b in blocks for m in b.modules() if m is not b}
    assert not any(id(b) in inner for b in blocks)  # none is checkpointed twice


def test_block_checkpointing_is_undone_exactly():
    pipe = build_tiny_pipeline(0)
    unet = pipe.unet
    latents, cond = _clip_tensors(pipe)
    keys = list(unet.state_dict())
    with torch.no_grad():
        before = denoise(unet, latents + 0.5, 0.5, cond)
    with block_checkpointing(unet) as blocks:
        assert all("forward" in b.__dict__ for b in blocks)
        assert list(unet.state_dict()) == keys
        inside = denoise(unet, latents + 0.5, 0.5, cond)  # with gradients: checkpointed
    for block in checkpointed_blocks(unet):
        assert "forward" not in block.__dict__
        assert block.forward.__func__ is type(block).forward
    with torch.no_grad():
        after = denoise(unet, latents + 0.5, 0.5, cond)
    assert list(unet.state_dict()) == keys
    assert torch.equal(after, before)
    assert torch.equal(inside.detach(), before)


class StepProbe(L.Callback):
    """The loss and the LoRA gradients of the step (before the optimizer uses them)."""

    def __init__(self):
        self.loss, self.grads = None, None

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.grads = {
            n: p.grad.detach().clone() for n, p in module.unet.named_parameters() if "lora_" in n
        }

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.loss = float(outputs["loss"])


def _one_step(policy: str) -> tuple[float, dict, dict[str, int], torch.nn.Module]:
    """One training step of a fresh tiny UNet under ``policy`` (LoRA dropout on, the LoRA's B
    made non-zero so that every LoRA weight gets a gradient): loss, LoRA gradients, and how
    often a spatial block, a temporal block and a resnet ran inside."""
    torch.manual_seed(0)
    pipe = build_tiny_pipeline(0)
    unet = pipe.unet
    latents, cond = _clip_tensors(pipe)
    config = motion_lora_config(unet, rank=4, alpha=4, dropout=0.2)
    module = MotionLoRAModule(unet, config, 1e-3, 1e-2, 0, policy, FixedDraw(latents.shape))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.05)
    # in the last up block: behind LoRA layers, so backward reaches them (the blocks before
    # the first LoRA layer need no gradient, and nothing there is recomputed)
    up = unet.up_blocks[-1]
    probes = {
        "spatial": up.attentions[0].transformer_blocks[0].attn1,
        "temporal": up.attentions[0].temporal_transformer_blocks[0].attn1,
        "resnet": up.resnets[0].spatial_res_block,
    }
    calls = dict.fromkeys(probes, 0)
    for name, probe in probes.items():
        probe.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    step = StepProbe()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[step],
    )
    trainer.fit(module, OneClipDataModule(latents, cond, 1))
    return step.loss, step.grads, calls, unet


@pytest.fixture(scope="module")
def steps():
    return {policy: _one_step(policy) for policy in ("none", "diffusers", "blocks")}


@pytest.mark.parametrize(
    ("policy", "runs"),
    [
        ("none", {"spatial": 1, "temporal": 1, "resnet": 1}),
        # diffusers recomputes the resnets and the spatial blocks, not the temporal ones
        ("diffusers", {"spatial": 2, "temporal": 1, "resnet": 2}),
        ("blocks", {"spatial": 2, "temporal": 2, "resnet": 2}),
    ],
)
def test_checkpointing_recomputes_what_it_says(steps, policy, runs):
    assert steps[policy][2] == runs


@pytest.mark.parametrize("policy", ["diffusers", "blocks"])
def test_checkpointing_gives_the_same_loss_and_lora_gradients(steps, policy):
    loss, grads, _, _ = steps[policy]
    loss0, grads0, _, _ = steps["none"]
    assert abs(loss - loss0) <= 1e-5 * max(1.0, abs(loss0)), (loss, loss0)
    assert grads.keys() == grads0.keys() and len(grads) == 2 * 72
    assert all(g.abs().max() > 0 for g in grads0.values())  # every LoRA weight has a gradient
    # within 1e-5 of the gradients' scale (measured: bit-equal on the CPU; without the RNG
    # replay of the LoRA dropout they differ by 8e-4, against a largest gradient of 1.2e-3)
    scale = max(g.abs().max().item() for g in grads0.values())
    worst = max((grads[k] - grads0[k]).abs().max().item() for k in grads)
    assert worst <= 1e-5 * scale, (worst, scale)


@pytest.mark.parametrize("policy", ["diffusers", "blocks"])
def test_the_fit_leaves_no_checkpointing_behind(steps, policy):
    unet = steps[policy][3]
    assert not unet.is_gradient_checkpointing
    assert all("forward" not in b.__dict__ for b in checkpointed_blocks(unet))


def test_the_config_offers_the_policies_there_are():
    assert CHECKPOINTING == POLICIES


def test_bad_checkpointing_value_is_refused():
    cfg = compose_train(["lora.checkpointing=sometimes"])
    with pytest.raises(InputError) as err:
        check_lora(cfg)
    assert str(err.value).startswith("lora.checkpointing='sometimes': expected")
    assert "\n" not in str(err.value)


def test_lora_cache_key_does_not_depend_on_checkpointing(source_video):
    roots = {
        policy: lora_root(compose_train([f"lora.checkpointing={policy}"]), source_video, "32")
        for policy in ("none", "diffusers", "blocks")
    }
    assert roots["none"] == roots["diffusers"] == roots["blocks"]


def test_frozen_weights_train_in_the_compute_dtype_on_accelerators_only():
    cpu, accelerator = torch.device("cpu"), torch.device("meta")  # meta: any non-CPU device
    f32, bf16 = torch.float32, torch.bfloat16
    assert frozen_weights_dtype("bf16-mixed", cpu, f32) == f32  # the CPU keeps fp32
    assert frozen_weights_dtype("bf16-mixed", accelerator, f32) == bf16
    assert frozen_weights_dtype("16-mixed", accelerator, f32) == torch.float16
    assert frozen_weights_dtype("bf16-mixed", accelerator, bf16) == bf16  # loaded so already
    assert frozen_weights_dtype("32-true", accelerator, f32) == f32


def test_frozen_weights_in_casts_all_but_the_lora_and_restores_them_exactly():
    unet = build_tiny_pipeline(0).unet
    config = motion_lora_config(unet, rank=4, alpha=4, dropout=0.0)
    module = MotionLoRAModule(unet, config, 1e-3, 1e-2, 0, "none")
    lora = {id(p) for p in module.lora_params}
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    with frozen_weights_in(unet, torch.bfloat16, module.lora_params):
        for name, param in unet.named_parameters():
            expected = torch.float32 if id(param) in lora else torch.bfloat16
            assert param.dtype == expected, name
    for name, param in unet.named_parameters():
        assert param.dtype == torch.float32 and torch.equal(param, before[name]), name
