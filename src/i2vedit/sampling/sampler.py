"""The guided Euler sampler of SVD, with an optional attention controller."""

from __future__ import annotations

import torch

from i2vedit.attention.control import AttentionController, controlled_attention
from i2vedit.core.edm import Condition, StepCallback, denoise, euler_step, init_noise_sigma


@torch.no_grad()
def sample(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    cond: Condition,
    sigmas: torch.Tensor,
    guidance: torch.Tensor | None,
    controller: AttentionController | None = None,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Euler sampling from ``latents`` (unit scale, as the pipeline's ``latents=``) down the
    schedule ``sigmas`` (N+1 values ending at 0), with ``controller`` (if any) installed on
    the UNet's registered attention layers for the duration. Returns the clean latents
    (1, F, C, h, w)."""
    x = latents.float().contiguous() * init_noise_sigma(sigmas[0])  # one layout in, always
    with controlled_attention(unet, controller):
        for t in range(len(sigmas) - 1):
            if controller is not None:
                controller.step = t
                controller.guided = cond.guided
                controller.prepare(t)
            denoised = denoise(unet, x, sigmas[t], cond, guidance)
            x = euler_step(x, denoised, sigmas[t], sigmas[t + 1])
            if on_step is not None:
                on_step(t)
    return x.contiguous()
