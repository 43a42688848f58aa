"""Hand-computed checks of the attention ideas: masked blend, thresholds, temporal schedule."""

from __future__ import annotations

import pytest
import torch

from i2vedit.attention.control import MatchingParams
from i2vedit.attention.layers import (
    SPATIAL,
    TEMPORAL,
    AttentionLayer,
    is_high_resolution,
    registered_layers,
)
from i2vedit.attention.matching import (
    attention_probs,
    blend_mask,
    frame_thresholds,
    masked_attention_blend,
)
from i2vedit.attention.schedule import MatchingSchedule, step_boundary, temporal_uses_source


def test_masked_blend_two_tokens():
    # one frame, one head, two query tokens over two keys
    p_src = torch.tensor([[[[0.9, 0.1], [0.5, 0.5]]]])
    p_edit = torch.tensor([[[[0.1, 0.9], [0.45, 0.55]]]])
    v = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    # query 0: sum |P0 - P| = 0.8 + 0.8 = 1.6 -> M = 0.8 >= 0.5 -> 1 (the edit's own attention)
    # query 1: sum |P0 - P| = 0.05 + 0.05 = 0.1 -> M = 0.05 < 0.5 stays 0.05
    mask = blend_mask(p_src, p_edit, torch.tensor([0.5]))
    assert torch.allclose(mask, torch.tensor([[1.0, 0.05]]))
    out = masked_attention_blend(p_src, p_edit, v, torch.tensor([0.5]))
    row1 = 0.95 * torch.tensor([0.5, 0.5]) + 0.05 * torch.tensor([0.45, 0.55])
    expected = torch.stack([torch.tensor([0.1, 0.9]), row1])
    assert torch.allclose(out[0, 0], expected, atol=1e-6)


def test_blend_mask_averages_heads_and_clamps():
    # two heads that disagree: mean over heads of |diff|, summed over keys, clamped to [0, 2] / 2
    p_src = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (frames 1, heads 2, q 1, k 2)
    p_edit = torch.tensor([[[[0.0, 1.0]], [[0.0, 1.0]]]])
    # head 0 differs by 2 in total, head 1 by 0 -> mean 1 -> M = 0.5; threshold 0.6 keeps 0.5
    assert torch.allclose(blend_mask(p_src, p_edit, torch.tensor([0.6])), torch.tensor([[0.5]]))
    # a threshold of 0.5 sets it to 1
    assert torch.allclose(blend_mask(p_src, p_edit, torch.tensor([0.5])), torch.tensor([[1.0]]))


def test_blend_with_identical_attention_is_plain_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 5, 4).unbind(0)
    p = attention_probs(q, k, 0.5)
    out = masked_attention_blend(p, p, v, frame_thresholds((0.35, 0.35), 2))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.5)
    assert torch.allclose(out, ref, atol=1e-5)


def test_frame_thresholds_never_reach_the_last_value():
    assert torch.allclose(frame_thresholds((0.2, 0.6), 4), torch.tensor([0.2, 0.3, 0.4, 0.5]))
    assert torch.allclose(frame_thresholds((0.35, 0.35), 3), torch.full((3,), 0.35))


def _svd_temporal_layers() -> list[AttentionLayer]:
    # the SVD UNet: 6 temporal layers down, 1 mid, 9 up
    down = [AttentionLayer(f"d{i}", "down", TEMPORAL, i) for i in range(6)]
    up = [AttentionLayer(f"u{i}", "up", TEMPORAL, i) for i in range(9)]
    return [*down, AttentionLayer("m", "mid", TEMPORAL, 0), *up]


def test_high_resolution_layers_of_svd():
    high = [layer.path for layer in _svd_temporal_layers() if is_high_resolution(layer)]
    assert high == ["d0", "d1", "d2", "d3", "u2", "u3", "u4", "u5", "u6", "u7", "u8"]


# Which temporal layers take the source's probabilities at each step, written out by hand from
# the reference's int() boundaries: A = all of them, L = only the low-resolution ones (the
# high-resolution layers use their own attention), N = none.
SCHEDULES = {
    # N = 25: (0.5, 0.8) -> int(12.5) = 12, int(20.0) = 20
    (25, (0.5, 0.8)): "AAAAAAAAAAAALLLLLLLLNNNNN",
    # (0.8, 0.9) -> int(20.0) = 20, int(22.5) = 22
    (25, (0.8, 0.9)): "AAAAAAAAAAAAAAAAAAAALLNNN",
    # (0.4, 0.5) -> int(10.0) = 10, int(12.5) = 12
    (25, (0.4, 0.5)): "AAAAAAAAAALLNNNNNNNNNNNNN",
    # N = 14: (0.5, 0.8) -> int(7.0) = 7, int(11.2) = 11
    (14, (0.5, 0.8)): "AAAAAAALLLLNNN",
    # (0.8, 0.9) -> int(11.2) = 11, int(12.6) = 12
    (14, (0.8, 0.9)): "AAAAAAAAAAALNN",
    # (0.4, 0.5) -> int(5.6) = 5, int(7.0) = 7
    (14, (0.4, 0.5)): "AAAAALLNNNNNNN",
}


@pytest.mark.parametrize(("num_steps", "beta"), list(SCHEDULES))
def test_temporal_schedule_table(num_steps, beta):
    layers = _svd_temporal_layers()
    low = {layer.path for layer in layers if not is_high_resolution(layer)}
    assert low == {"d4", "d5", "m", "u0", "u1"}
    expected = {"A": {layer.path for layer in layers}, "L": low, "N": set()}
    table = SCHEDULES[(num_steps, beta)]
    assert len(table) == num_steps
    for step, phase in enumerate(table):
        uses = {
            layer.path for layer in layers if temporal_uses_source(layer, step, num_steps, beta)
        }
        assert uses == expected[phase], (num_steps, beta, step)
    # the spatial layers (all steps at the default spatial_self_replace_steps=1.0) and the
    # records read: every step with a source-taking layer reads one
    params = MatchingParams(num_steps=num_steps, beta=beta)
    assert all(params.active(SPATIAL, step) for step in range(num_steps))
    assert not params.active(SPATIAL, num_steps)
    params = MatchingParams(num_steps=num_steps, beta=beta, spatial_steps=0.0)
    assert [params.reads_records(step) for step in range(num_steps)] == [
        phase != "N" for phase in table
    ]


@pytest.mark.parametrize(("num_steps", "beta"), list(SCHEDULES))
@pytest.mark.parametrize("pairing", ["reference", "exact"])
def test_matching_schedule_reproduces_the_table(num_steps, beta, pairing):
    layers = _svd_temporal_layers()
    spatial = AttentionLayer("s0", "down", SPATIAL, 0)
    schedule = MatchingSchedule(num_steps, beta, pairing=pairing)
    table = SCHEDULES[(num_steps, beta)]
    low = {layer.path for layer in layers if not is_high_resolution(layer)}
    expected = {"A": {layer.path for layer in layers}, "L": low, "N": set()}
    for step, phase in enumerate(table):
        assert {layer.path for layer in layers if schedule.matches(layer, step)} == expected[phase]
        assert schedule.matches(spatial, step) and schedule.reads_records(step)
        assert schedule.record_index(step) == num_steps - step - (pairing == "reference")
    assert not schedule.matches(spatial, num_steps) and not schedule.reads_records(num_steps)
    no_spatial = MatchingSchedule(num_steps, beta, spatial=0.0, pairing=pairing)
    assert [no_spatial.reads_records(step) for step in range(num_steps)] == [
        phase != "N" for phase in table
    ]
    assert not any(no_spatial.matches(spatial, step) for step in range(num_steps))


def _reference_rule(layer, step, num_steps, beta, spatial, temporal) -> bool:
    # the reference's rule written out once more with plain int() boundaries
    if layer.kind == SPATIAL:
        return step < int(spatial * num_steps)
    if step >= int(temporal * num_steps) or step >= int(beta[1] * num_steps):
        return False
    return step < int(beta[0] * num_steps) or not is_high_resolution(layer)


@pytest.mark.parametrize("num_steps", [14, 25, 50])
@pytest.mark.parametrize("beta", [(0.5, 0.8), (0.8, 0.9), (0.4, 0.5)])
@pytest.mark.parametrize("fraction", [1.0, 0.58])
def test_matching_schedule_follows_the_reference_rule(num_steps, beta, fraction):
    layers = [*_svd_temporal_layers(), AttentionLayer("s0", "up", SPATIAL, 3)]
    for spatial, temporal in [(fraction, 1.0), (1.0, fraction), (fraction, fraction)]:
        schedule = MatchingSchedule(num_steps, beta, spatial, temporal)
        params = MatchingParams(
            num_steps=num_steps, beta=beta, spatial_steps=spatial, temporal_steps=temporal
        )
        assert params.schedule == schedule
        for step in range(num_steps + 1):
            rule = [
                _reference_rule(lay, step, num_steps, beta, spatial, temporal) for lay in layers
            ]
            assert [schedule.matches(layer, step) for layer in layers] == rule, (step, spatial)
            assert schedule.reads_records(step) == any(rule) == params.reads_records(step)
            for layer in layers:
                if layer.kind == TEMPORAL:
                    assert schedule.takes_source(layer, step) == temporal_uses_source(
                        layer, step, num_steps, beta
                    )
    # the truncation at its sharpest: 0.58 * 50 is 28.999..., so step 28 is already past it
    if (num_steps, fraction) == (50, 0.58):
        assert MatchingSchedule(50, beta, 0.58, 0.58).spatial_end == 28


def test_step_boundaries_truncate_like_the_reference():
    assert 0.58 * 50 < 29 and step_boundary(0.58, 50) == 28 == int(0.58 * 50)
    assert step_boundary(0.5, 25) == 12
    params = MatchingParams(num_steps=50, spatial_steps=0.58, temporal_steps=0.58)
    assert params.active(SPATIAL, 27) and not params.active(SPATIAL, 28)
    assert params.active(TEMPORAL, 27) and not params.active(TEMPORAL, 28)
    # step 12 of 25 at beta (0.5, 0.8) is already the middle phase: a high-resolution layer
    # (the first down-path temporal layer) uses its own attention there
    high = AttentionLayer("d0", "down", TEMPORAL, 0)
    assert temporal_uses_source(high, 11, 25, (0.5, 0.8))
    assert not temporal_uses_source(high, 12, 25, (0.5, 0.8))


def test_registered_layers_of_tiny_unet(tiny_model):
    layers = registered_layers(tiny_model.unet)
    assert [(lay.place, lay.kind, lay.index) for lay in layers if lay.kind == TEMPORAL] == [
        ("down", TEMPORAL, 0),
        ("down", TEMPORAL, 1),
        ("mid", TEMPORAL, 0),
        ("up", TEMPORAL, 0),
        ("up", TEMPORAL, 1),
        ("up", TEMPORAL, 2),
    ]
    assert len(layers) == 12
    assert all(layer.path.endswith("attn1") for layer in layers)
