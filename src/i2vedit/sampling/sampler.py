"""The guided Euler sampler of SVD, with an optional attention controller and optional latent
preservation outside an edit mask."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from i2vedit.attention.control import AttentionController, controlled_attention
from i2vedit.core.edm import Condition, StepCallback, denoise, euler_step, init_noise_sigma


@dataclass
class Preservation:
    """Latent preservation: for the first ``steps`` sampling steps, the latents outside the edit
    follow the source's inversion trajectory at the same sigma."""

    weights: torch.Tensor  #: (1, F, 1, h, w) in [0, 1]: 1 in the edit, 0 outside, feathered
    #: (N+1, 1, F, C, h, w): the inversion's latent at each of its sigmas, ascending
    #: (``inversion.edm.edm_invert``'s ``trajectory``)
    trajectory: torch.Tensor
    steps: int


def preserve_latents(x: torch.Tensor, t: int, preservation: Preservation | None) -> torch.Tensor:
    """The latents about to be denoised at step ``t`` (at ``sigmas[t]``), with the source's
    latent at that sigma (the inversion's ``N - t``) outside the edit, blended by the weights."""
    if preservation is None or t >= preservation.steps:
        return x
    trajectory = preservation.trajectory
    source = trajectory[len(trajectory) - 1 - t].to(x.device, x.dtype)
    return source + preservation.weights.to(x.device, x.dtype) * (x - source)


@torch.no_grad()
def sample(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    cond: Condition,
    sigmas: torch.Tensor,
    guidance: torch.Tensor | None,
    controller: AttentionController | None = None,
    on_step: StepCallback | None = None,
    preservation: Preservation | None = None,
) -> torch.Tensor:
    """Euler sampling from ``latents`` (unit scale, as the pipeline's ``latents=``) down the
    schedule ``sigmas`` (N+1 values ending at 0), with ``controller`` (if any) installed on
    the UNet's registered attention layers for the duration, and ``preservation`` (if any)
    applied before each step's denoising. Returns the clean latents (1, F, C, h, w)."""
    x = latents.float().contiguous() * init_noise_sigma(sigmas[0])  # one layout in, always
    with controlled_attention(unet, controller):
        for t in range(len(sigmas) - 1):
            if controller is not None:
                controller.step = t
                controller.guided = cond.guided
                controller.prepare(t)
            x = preserve_latents(x, t, preservation)
            denoised = denoise(unet, x, sigmas[t], cond, guidance)
            x = euler_step(x, denoised, sigmas[t], sigmas[t + 1])
            if on_step is not None:
                on_step(t)
    return x.contiguous()
