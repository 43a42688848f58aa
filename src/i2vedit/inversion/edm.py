"""EDM Euler inversion: the sampling ODE run backwards from the clean latents to sigma_max."""

from __future__ import annotations

import torch

from i2vedit.attention.control import AttentionController, controlled_attention
from i2vedit.core.edm import Condition, StepCallback, denoise, euler_step, init_noise_sigma


def inversion_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """The sampling schedule reversed, with its final 0 replaced by
    ``sigma_{N-1}^2 / sigma_{N-2}``: ``s_0 < s_1 = sigma_{N-1} < ... < s_N = sigma_0``."""
    descending = sigmas[:-1]
    first = descending[-1] ** 2 / descending[-2]
    return torch.cat([first.view(1), descending.flip(0)])


@torch.no_grad()
def edm_invert(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    cond: Condition,
    sigmas: torch.Tensor,
    controller: AttentionController | None = None,
    extra_record: bool = False,
    on_step: StepCallback | None = None,
    trajectory: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Invert clean ``latents`` (1, F, C, h, w) with the unguided condition ``cond``, with
    ``controller`` (if any) installed on the UNet's registered attention layers meanwhile.

    Step i evaluates the UNet at ``s_i`` (the controller records at index i). With
    ``extra_record`` one more evaluation at ``s_N = sigma_max`` records attention there too
    (for exact pairing). Returns latents at unit scale, ready to sample from. ``trajectory``,
    when given, receives ``x_i`` (the latent evaluated at ``s_i``) for i = 0..N.
    """
    s = inversion_sigmas(sigmas)
    x = latents.float().contiguous()  # one layout: the trajectory is stored (and reused) so
    steps = len(s) - 1
    with controlled_attention(unet, controller):
        for i in range(steps):
            if trajectory is not None:
                trajectory.append(x)
            if controller is not None:
                controller.step = i
                controller.guided = False
            denoised = denoise(unet, x, s[i], cond)
            x = euler_step(x, denoised, s[i], s[i + 1])
            if on_step is not None:
                on_step(i)
        if trajectory is not None:
            trajectory.append(x)
        if extra_record and controller is not None:
            controller.step = steps
            controller.guided = False
            denoise(unet, x, s[steps], cond)
    # contiguous: the UNet's outputs come in a channels-last-like layout, and the same values
    # read back from the cache come contiguous; the sampler must see one layout, or its
    # kernels sum in another order and a resumed edit drifts from a live one in the last bit
    return (x / init_noise_sigma(s[steps])).contiguous()
