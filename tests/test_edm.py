"""EDM maths by hand: preconditioning, the Euler (inversion) step, the inversion schedule."""

from __future__ import annotations

import math

import torch

from i2vedit.core.edm import Condition, euler_step, init_noise_sigma, precondition
from i2vedit.inversion.edm import edm_invert, inversion_sigmas


def test_precondition_values():
    c_skip, c_out, c_in, c_noise = precondition(2.0)
    assert math.isclose(c_skip, 1 / 5)
    assert math.isclose(c_out, -2 / math.sqrt(5))
    assert math.isclose(c_in, 1 / math.sqrt(5))
    assert math.isclose(c_noise, 0.25 * math.log(2.0))


def test_euler_step_both_ways():
    x, d = torch.tensor([1.0]), torch.tensor([0.5])
    # inversion step from sigma 1 up to 3: x + (3 - 1) * (1 - 0.5) / 1 = 2
    assert euler_step(x, d, 1.0, 3.0).item() == 2.0
    # sampling step from 3 down to 0 lands on D
    assert euler_step(x, d, 3.0, 0.0).item() == 0.5


def test_inversion_sigmas():
    sigmas = torch.tensor([700.0, 10.0, 0.5, 0.0])
    assert torch.allclose(inversion_sigmas(sigmas), torch.tensor([0.025, 0.5, 10.0, 700.0]))


class _ConstantUNet(torch.nn.Module):
    """F(...) = 1 everywhere: D(x; s) = c_skip x + c_out, computable by hand."""

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, return_dict=False):
        return (torch.ones_like(sample[:, :, :4]),)


def test_one_inversion_step_by_hand():
    cond = Condition(
        torch.zeros(1, 1, 8), torch.zeros(1, 1, 4, 2, 2), torch.zeros(1, 3), guided=False
    )
    sigmas = torch.tensor([2.0, 1.0, 0.0])  # inversion runs 0.5 -> 1 -> 2
    x0 = torch.full((1, 1, 4, 2, 2), 0.3)
    out = edm_invert(_ConstantUNet(), x0, cond, sigmas)

    def step(x, s, s_next):
        c_skip, c_out, _, _ = precondition(s)
        d = c_skip * x + c_out
        return x + (s_next - s) * (x - d) / s

    x = step(step(0.3, 0.5, 1.0), 1.0, 2.0)
    assert torch.allclose(out, torch.full_like(out, x / init_noise_sigma(2.0)))
