"""The EDM training objective of the motion LoRA."""

from __future__ import annotations

import math

import torch

SIGMA_DATA = 0.5
IMAGE_D = 64
NOISE_D_LOW, NOISE_D_HIGH = 32, 64
SIGMA_MIN, SIGMA_MAX = 0.002, 700.0


def _logsnr_cosine_shifted(u: torch.Tensor, shift: float) -> torch.Tensor:
    logsnr_min = -2 * math.log(SIGMA_MAX / SIGMA_DATA)
    logsnr_max = -2 * math.log(SIGMA_MIN / SIGMA_DATA)
    t_min = math.atan(math.exp(-0.5 * (logsnr_max - shift)))
    t_max = math.atan(math.exp(-0.5 * (logsnr_min - shift)))
    return -2 * torch.log(torch.tan(t_min + u * (t_max - t_min))) + shift


def cosine_interpolated_sigma(u: torch.Tensor) -> torch.Tensor:
    """Sigma of the "cosine interpolated" log-SNR distribution at uniform ``u`` in [0, 1].

    The shifted-cosine log-SNRs for noise_d 32 and 64 are mixed with weight ``1 - u`` on the
    64 one: at ``u = 0`` (the low-noise end) noise_d 64 alone governs, at ``u = 1`` (the
    high-noise end) noise_d 32 alone, as k-diffusion's ``rand_cosine_interpolated`` does.
    Sigma quantiles 1% / 50% / 99%: about 0.0099 / 0.709 / 58.1."""
    u = u.double()
    low = _logsnr_cosine_shifted(u, 2 * math.log(NOISE_D_LOW / IMAGE_D))
    high = _logsnr_cosine_shifted(u, 2 * math.log(NOISE_D_HIGH / IMAGE_D))
    logsnr = torch.lerp(low, high, 1 - u)
    return (SIGMA_DATA * torch.exp(-logsnr / 2)).float()


def edm_loss(denoised: torch.Tensor, clean: torch.Tensor, sigma: float) -> torch.Tensor:
    """``mean((1 + sigma^2) / sigma^2 * (D(x; sigma) - z0)^2)``."""
    weight = (1 + sigma**2) / sigma**2
    return (weight * (denoised.float() - clean.float()) ** 2).mean()
