"""EDM maths of SVD in one place: conditioning, preconditioning, the Euler step, VAE codecs.

Used by inversion, sampling and training, so all three condition identically.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import StableVideoDiffusionPipeline
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    _resize_with_antialiasing,
)
from diffusers.utils.torch_utils import randn_tensor

from i2vedit.core.conditioning import ConditioningParams

CLIP_SIZE = (224, 224)

#: called with the index of each finished step (progress bars, the app's step listener)
StepCallback = Callable[[int], None]


@dataclass
class Condition:
    """UNet conditioning for one video; batch ``[uncond, cond]`` when ``guided``."""

    embeddings: torch.Tensor  #: (B, 1, D) CLIP image embedding
    image_latents: torch.Tensor  #: (B, F, C, h, w) unscaled VAE latents of the first frame
    time_ids: torch.Tensor  #: (B, 3) fps id, motion bucket, noise augmentation
    guided: bool


def encode_condition(
    pipe: StableVideoDiffusionPipeline,
    image: torch.Tensor,
    params: ConditioningParams,
    num_frames: int,
    generator: torch.Generator,
    guided: bool,
    latent: torch.Tensor | None = None,
) -> Condition:
    """Condition on a first frame ``image`` (1, 3, H, W) in [-1, 1], as the SVD pipeline does:
    CLIP on the image resized to 224, pixel-space noise augmentation before the VAE, and zero
    embedding and latents for the unconditional half.

    With ``latent`` (1, C, h, w), the frame's VAE latent scaled by ``scaling_factor`` (the last
    edited frame of the previous clip), the image latents come from it directly, with the
    noise augmentation added in latent space: no VAE round trip.
    """
    device = pipe.unet.device
    image = image.to(device=device, dtype=torch.float32)
    clip_input = (_resize_with_antialiasing(image, CLIP_SIZE) + 1.0) / 2.0
    embeddings = pipe._encode_image(clip_input.cpu(), device, 1, guided)
    if latent is None:
        noise = randn_tensor(image.shape, generator=generator, device=device, dtype=image.dtype)
        augmented = image + params.noise_aug_strength * noise
        latents = pipe._encode_vae_image(augmented, device, 1, guided).to(embeddings.dtype)
    else:
        latent = latent.to(device=device, dtype=torch.float32) / pipe.vae.config.scaling_factor
        noise = randn_tensor(latent.shape, generator=generator, device=device, dtype=latent.dtype)
        latents = (latent + params.noise_aug_strength * noise).to(embeddings.dtype)
        if guided:
            latents = torch.cat([torch.zeros_like(latents), latents])
    time_ids = pipe._get_add_time_ids(
        params.fps - 1,
        params.motion_bucket_id,
        params.noise_aug_strength,
        embeddings.dtype,
        1,
        1,
        guided,
    ).to(device)
    latents = latents.unsqueeze(1).repeat(1, num_frames, 1, 1, 1)
    return Condition(embeddings, latents, time_ids, guided)


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (noise augmentation, SARP, initial noise): the
    same draws on every device."""
    return torch.Generator().manual_seed(seed)


def guidance_scales(params: ConditioningParams, num_frames: int) -> torch.Tensor:
    """Per-frame guidance, linear from ``min`` on frame 0 to ``max`` on the last: (1, F, 1, 1, 1)."""
    scales = torch.linspace(params.min_guidance_scale, params.max_guidance_scale, num_frames)
    return scales.view(1, num_frames, 1, 1, 1)


def karras_sigmas(pipe: StableVideoDiffusionPipeline, num_steps: int) -> torch.Tensor:
    """The scheduler's sampling sigmas ``sigma_0 > ... > sigma_{N-1} > 0``, plus the final 0."""
    pipe.scheduler.set_timesteps(num_steps)
    return pipe.scheduler.sigmas.detach().clone().float()


def init_noise_sigma(sigma_max: float) -> float:
    """The pipeline's scale of initial latents, ``sqrt(sigma_max^2 + 1)``."""
    return math.sqrt(float(sigma_max) ** 2 + 1.0)


def precondition(sigma: float) -> tuple[float, float, float, float]:
    """EDM preconditioning of SVD (v-prediction, sigma_data = 1): c_skip, c_out, c_in, c_noise."""
    s = float(sigma)
    return (
        1.0 / (s * s + 1.0),
        -s / math.sqrt(s * s + 1.0),
        1.0 / math.sqrt(s * s + 1.0),
        0.25 * math.log(s),
    )


def denoise(
    unet: torch.nn.Module,
    x: torch.Tensor,
    sigma: float,
    cond: Condition,
    guidance: torch.Tensor | None = None,
) -> torch.Tensor:
    """``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, cond)`` with classifier-free
    guidance on ``F`` (per frame) when ``cond.guided``."""
    c_skip, c_out, c_in, c_noise = precondition(sigma)
    model_in = torch.cat([x, x]) if cond.guided else x
    model_in = torch.cat([model_in * c_in, cond.image_latents], dim=2).to(cond.embeddings.dtype)
    timestep = torch.tensor(c_noise, dtype=torch.float32, device=x.device)
    out = unet(
        model_in,
        timestep,
        encoder_hidden_states=cond.embeddings,
        added_time_ids=cond.time_ids,
        return_dict=False,
    )[0].float()
    if cond.guided:
        uncond, conditional = out.chunk(2)
        out = uncond + guidance.to(out.device) * (conditional - uncond)
    return (c_skip * x + c_out * out).contiguous()  # one layout, whatever the UNet's


def euler_step(
    x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float
) -> torch.Tensor:
    """One Euler step of the probability-flow ODE from ``sigma`` to ``sigma_next``:
    ``x + (sigma_next - sigma) (x - D) / sigma``. Sampling steps down, inversion steps up."""
    return x + (float(sigma_next) - float(sigma)) * (x - denoised) / float(sigma)


def encode_video(
    pipe: StableVideoDiffusionPipeline, frames: torch.Tensor, chunk: int = 8
) -> torch.Tensor:
    """VAE latents ``mode() * scaling_factor`` of frames (F, 3, H, W) in [-1, 1]: (1, F, C, h, w)."""
    vae = pipe.vae
    frames = frames.to(device=vae.device, dtype=vae.dtype)
    latents = [
        vae.encode(frames[i : i + chunk]).latent_dist.mode() for i in range(0, len(frames), chunk)
    ]
    return (torch.cat(latents) * vae.config.scaling_factor).float().unsqueeze(0)


def decode_video(
    pipe: StableVideoDiffusionPipeline, latents: torch.Tensor, chunk: int = 8
) -> torch.Tensor:
    """Frames (F, 3, H, W) in [-1, 1] (float32) of latents (1, F, C, h, w)."""
    frames = pipe.decode_latents(latents.to(pipe.vae.dtype), latents.shape[1], chunk)
    return frames[0].permute(1, 0, 2, 3).clamp(-1, 1)
