"""Tests for i2vedit.data.resize: resolution plans and frame converters."""

from __future__ import annotations

import pytest
import torch

from i2vedit.data.resize import ResolutionPlan, to_model_frames, to_uint8_frames
from i2vedit.errors import InputError


def random_frames(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 2 - 1


def ramp_frames(h: int, w: int) -> torch.Tensor:
    """(1, 3, h, w) ramps in pixel units: channel 0 = column index, channel 1 = row index."""
    xx = torch.arange(w, dtype=torch.float32).view(1, w).expand(h, w)
    yy = torch.arange(h, dtype=torch.float32).view(h, 1).expand(h, w)
    return torch.stack([xx, yy, xx + yy]).unsqueeze(0)


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------


def test_build_pads_width_hand_computed() -> None:
    # 640x480 into 1024x576 (16:9): ideal width 480 * 16 / 9 = 853.33 -> pad 213 = 106 + 107
    plan = ResolutionPlan.build((480, 640), (576, 1024), pad_to_fit=True)
    assert plan.source_hw == (480, 640)
    assert plan.target_hw == (576, 1024)
    assert plan.pad == (106, 107, 0, 0)
    assert plan.padded_hw == (480, 853)


def test_build_pads_height_hand_computed() -> None:
    # 1000x500 into 512x512: pad 500 rows, 250 top, 250 bottom
    assert ResolutionPlan.build((500, 1000), (512, 512), True).pad == (0, 0, 250, 250)
    # 48x41 into 48x48: pad 7 rows, split 3 / 4
    assert ResolutionPlan.build((41, 48), (48, 48), True).pad == (0, 0, 3, 4)


def test_build_without_padding_or_same_aspect() -> None:
    assert ResolutionPlan.build((480, 640), (576, 1024), pad_to_fit=False).pad == (0, 0, 0, 0)
    assert ResolutionPlan.build((720, 1280), (576, 1024), pad_to_fit=True).pad == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ((480, 640), (576, 1024)),
        ((1080, 1920), (512, 512)),
        ((37, 53), (64, 96)),
        ((101, 7), (320, 576)),
        ((300, 301), (1024, 576)),
        ((5, 3), (8, 16)),
    ],
)
def test_padded_aspect_is_the_closest_possible(source, target) -> None:
    h, w = source
    th, tw = target
    plan = ResolutionPlan.build(source, target, pad_to_fit=True)
    left, right, top, bottom = plan.pad
    assert min(plan.pad) >= 0
    assert abs(left - right) <= 1 and abs(top - bottom) <= 1
    assert (left == right == 0) or (top == bottom == 0)  # only one axis is padded
    ph, pw = plan.padded_hw
    assert (ph, pw) == (h + top + bottom, w + left + right)
    err = abs(pw / ph - tw / th)
    # no other padding of a single axis gets closer to the target aspect
    best = min(
        [abs((w + p) / h - tw / th) for p in range(0, 4 * (h + w))]
        + [abs(w / (h + p) - tw / th) for p in range(0, 4 * (h + w))]
    )
    assert err <= best + 1e-12


@pytest.mark.parametrize(
    "target", [(500, 512), (512, 500), (0, 512), (-8, 512), (512,), "big", (512.5, 512)]
)
def test_build_rejects_bad_target(target) -> None:
    with pytest.raises(InputError) as exc:
        ResolutionPlan.build((480, 640), target, pad_to_fit=True)
    assert exc.value.key == "data.output_res"
    with pytest.raises(InputError) as exc:
        ResolutionPlan.build((480, 640), target, pad_to_fit=False, key="model.resolution")
    assert exc.value.key == "model.resolution"


# --------------------------------------------------------------------------------------------
# forward / inverse
# --------------------------------------------------------------------------------------------


def test_identity_plan_returns_input_unchanged() -> None:
    x = random_frames(2, 16, 24)
    plan = ResolutionPlan.build((16, 24), (16, 24), pad_to_fit=True)
    assert plan.pad == (0, 0, 0, 0)
    assert plan.forward(x) is x
    assert plan.inverse(x) is x


def test_pad_only_inverse_is_exact() -> None:
    # 40x48 -> 48x48: padded size equals the target, so nothing is interpolated
    x = random_frames(3, 40, 48)
    plan = ResolutionPlan.build((40, 48), (48, 48), pad_to_fit=True)
    assert plan.pad == (0, 0, 4, 4) and plan.padded_hw == plan.target_hw
    y = plan.forward(x)
    assert y.shape == (3, 3, 48, 48)
    # edge replication: the padded rows repeat the first/last source row, centre is untouched
    assert torch.equal(y[:, :, :4], x[:, :, :1].expand(-1, -1, 4, -1))
    assert torch.equal(y[:, :, -4:], x[:, :, -1:].expand(-1, -1, 4, -1))
    assert torch.equal(y[:, :, 4:44], x)
    assert torch.equal(plan.inverse(y), x)


def test_odd_pad_only_inverse_is_exact() -> None:
    x = random_frames(2, 24, 17)
    plan = ResolutionPlan.build((24, 17), (24, 24), pad_to_fit=True)
    assert plan.pad == (3, 4, 0, 0)
    y = plan.forward(x)
    assert torch.equal(y[..., 3:20], x)
    assert torch.equal(plan.inverse(y), x)


@pytest.mark.parametrize("pad_to_fit", [True, False])
@pytest.mark.parametrize(
    ("source", "target"), [((37, 53), (64, 96)), ((90, 160), (48, 64)), ((33, 20), (64, 64))]
)
def test_output_sizes(source, target, pad_to_fit: bool) -> None:
    x = random_frames(2, *source)
    plan = ResolutionPlan.build(source, target, pad_to_fit=pad_to_fit)
    y = plan.forward(x)
    assert y.shape == (2, 3, *target) and y.dtype == x.dtype
    z = plan.inverse(y)
    assert z.shape == (2, 3, *source)


@pytest.mark.parametrize(
    ("source", "target"),
    [((60, 80), (120, 216)), ((80, 60), (128, 128)), ((90, 160), (144, 256)), ((37, 53), (64, 96))],
)
def test_round_trip_is_aligned(source, target) -> None:
    # Upscale then downscale ramps measured in pixels: the round trip is close to the
    # identity, while a crop misplaced by even one pixel would be off by 1 everywhere.
    x = ramp_frames(*source)
    plan = ResolutionPlan.build(source, target, pad_to_fit=True)
    z = plan.inverse(plan.forward(x))
    assert z.shape == x.shape
    err = (z - x).abs()
    assert err[:, :2].max() < 0.3
    assert err[:, :2, 2:-2, 2:-2].max() < 0.1


def test_forward_has_no_artificial_border() -> None:
    x = torch.full((1, 3, 30, 40), 0.7)
    plan = ResolutionPlan.build((30, 40), (64, 64), pad_to_fit=True)
    assert plan.pad == (0, 0, 5, 5)
    y = plan.forward(x)
    assert torch.allclose(y, torch.full_like(y, 0.7), atol=1e-6)
    assert torch.allclose(plan.inverse(y), x, atol=1e-6)


def test_half_precision_keeps_dtype() -> None:
    x = random_frames(1, 20, 30).half()
    plan = ResolutionPlan.build((20, 30), (32, 48), pad_to_fit=False)
    assert plan.forward(x).dtype == torch.float16
    assert plan.inverse(plan.forward(x)).dtype == torch.float16


def test_wrong_frame_size_is_rejected() -> None:
    plan = ResolutionPlan.build((20, 30), (32, 48), pad_to_fit=False)
    with pytest.raises(ValueError):
        plan.forward(random_frames(1, 32, 48))
    with pytest.raises(ValueError):
        plan.inverse(random_frames(1, 20, 30))


# --------------------------------------------------------------------------------------------
# converters
# --------------------------------------------------------------------------------------------


def test_to_model_frames_hand_computed() -> None:
    u = torch.tensor([0, 255, 128, 1], dtype=torch.uint8).view(1, 1, 4, 1).repeat(2, 1, 1, 3)
    u[1, ..., 1] = 51
    x = to_model_frames(u)
    assert x.shape == (2, 3, 1, 4) and x.dtype == torch.float32
    expected = torch.tensor([-1.0, 1.0, 128 / 127.5 - 1, 1 / 127.5 - 1])
    assert torch.allclose(x[0, 0, 0], expected, atol=1e-7)
    assert torch.allclose(x[1, 1, 0], torch.full((4,), 51 / 127.5 - 1), atol=1e-7)
    assert to_model_frames(u, dtype=torch.float16).dtype == torch.float16


def test_to_uint8_frames_hand_computed() -> None:
    x = torch.tensor([-1.0, 1.0, 0.0, 2.0, -3.0, 0.5, float("nan"), -0.999]).view(1, 1, 1, 8)
    x = x.repeat(1, 3, 1, 1)
    u = to_uint8_frames(x)
    assert u.shape == (1, 1, 8, 3) and u.dtype == torch.uint8
    # (x + 1) * 127.5, rounded half to even, clamped; NaN maps to 0.0 -> 128
    assert u[0, 0, :, 0].tolist() == [0, 255, 128, 255, 0, 191, 128, 0]


def test_converters_round_trip_every_value() -> None:
    u = torch.arange(256, dtype=torch.uint8).view(1, 16, 16, 1).repeat(2, 1, 1, 3)
    assert torch.equal(to_uint8_frames(to_model_frames(u)), u)


def test_converters_reject_wrong_layout() -> None:
    with pytest.raises(ValueError):
        to_model_frames(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError):
        to_model_frames(torch.zeros(1, 8, 8, 3))
    with pytest.raises(ValueError):
        to_uint8_frames(torch.zeros(1, 8, 8, 3))
