"""Smooth Area Random Perturbation: a tiny noise on flat regions before inversion."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def gradient_magnitude(frames: torch.Tensor) -> torch.Tensor:
    """``mean_c(|Sobel_x| + |Sobel_y|)`` per pixel of frames (N, C, H, W): (N, 1, H, W).
    Borders are replicated, so a flat region stays flat up to the image edge."""
    n, c, h, w = frames.shape
    kx = _SOBEL_X.to(frames.device, frames.dtype)
    kernels = torch.stack([kx, kx.t()])[:, None]  # (2, 1, 3, 3)
    padded = F.pad(frames.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    grads = F.conv2d(padded, kernels).abs().sum(dim=1)  # |gx| + |gy|: (N*C, H, W)
    return grads.reshape(n, c, h, w).mean(dim=1, keepdim=True)


def sarp(
    frames: torch.Tensor, noise_scale: float, threshold: float, generator: torch.Generator
) -> torch.Tensor:
    """Add ``noise_scale * N(0, 1)`` where the gradient magnitude is ``<= threshold``, then clamp
    to [-1, 1]. ``frames``: (N, 3, H, W) in [-1, 1]."""
    flat = gradient_magnitude(frames) <= threshold
    noise = torch.randn(frames.shape, generator=generator, dtype=frames.dtype).to(frames.device)
    return torch.where(flat, frames + noise_scale * noise, frames).clamp(-1.0, 1.0)
