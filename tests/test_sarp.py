"""SARP: flat regions perturbed, edges untouched, clamped to [-1, 1]."""

from __future__ import annotations

import torch

from i2vedit.inversion.sarp import gradient_magnitude, sarp


def _half_and_half() -> torch.Tensor:
    """One 3x8x8 frame: left half -0.5, right half 1.0 (a vertical edge between columns 3 and 4)."""
    frame = torch.full((1, 3, 8, 8), -0.5)
    frame[..., 4:] = 1.0
    return frame


def test_gradient_magnitude_hand_computed():
    g = gradient_magnitude(_half_and_half())[0, 0]
    # Sobel x across a step of 1.5: (1 + 2 + 1) * 1.5 = 6 on both columns beside the edge
    assert torch.allclose(g[:, 3], torch.full((8,), 6.0))
    assert torch.allclose(g[:, 4], torch.full((8,), 6.0))
    assert torch.all(g[:, :3] == 0) and torch.all(g[:, 5:] == 0)


def test_flat_perturbed_edges_untouched_and_clamped():
    frame = _half_and_half()
    out = sarp(frame, noise_scale=0.1, threshold=0.001, generator=torch.Generator().manual_seed(0))
    diff = out - frame
    assert torch.all(diff[..., 3:5] == 0)  # the edge columns: untouched
    assert diff[..., :3].abs().min() > 0  # flat left: every value moved
    assert diff[..., :3].std() > 0.05  # by noise of about the given scale
    assert out.max() <= 1.0 and out.min() >= -1.0  # the right half sits at 1.0: clamped
    assert torch.all(out[..., 5:] <= 1.0) and (out[..., 5:] < 1.0).any()


def test_sarp_is_seeded():
    frame = _half_and_half()
    a = sarp(frame, 0.005, 0.001, torch.Generator().manual_seed(3))
    b = sarp(frame, 0.005, 0.001, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
