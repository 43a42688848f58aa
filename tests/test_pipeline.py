"""Oracles for the sampler and the inversion on the tiny SVD."""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from i2vedit.attention.control import (
    AttentionController,
    AttentionMatcher,
    AttentionRecorder,
    MatchingParams,
    controlled_attention,
)
from i2vedit.attention.store import MemoryStore
from i2vedit.core.edm import (
    ConditioningParams,
    decode_video,
    encode_condition,
    encode_video,
    guidance_scales,
    karras_sigmas,
)
from i2vedit.data.resize import to_model_frames
from i2vedit.inversion.edm import edm_invert
from i2vedit.sampling.sampler import sample

log = logging.getLogger(__name__)
FRAMES, H, W = 8, 32, 48


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((H, W, 3)) * 255).astype(np.uint8)


@torch.no_grad()
def test_sampler_matches_diffusers_pipeline(tiny_model):
    """Every control off, same seed and latents: our frames equal StableVideoDiffusionPipeline's."""
    pipe, params = (
        tiny_model.pipe,
        ConditioningParams(fps=9, motion_bucket_id=100, max_guidance_scale=2.5),
    )
    image = _image()
    latents = torch.randn(1, FRAMES, 4, H // 2, W // 2, generator=torch.Generator().manual_seed(1))
    expected = pipe(
        Image.fromarray(image),
        height=H,
        width=W,
        num_frames=FRAMES,
        num_inference_steps=5,
        min_guidance_scale=params.min_guidance_scale,
        max_guidance_scale=params.max_guidance_scale,
        fps=params.fps,
        motion_bucket_id=params.motion_bucket_id,
        noise_aug_strength=params.noise_aug_strength,
        generator=torch.Generator().manual_seed(7),
        latents=latents,
        output_type="pt",
    ).frames[0]
    cond = encode_condition(
        pipe,
        to_model_frames(torch.from_numpy(image)[None]),
        params,
        FRAMES,
        torch.Generator().manual_seed(7),
        True,
    )
    out = sample(pipe.unet, latents, cond, karras_sigmas(pipe, 5), guidance_scales(params, FRAMES))
    frames = (decode_video(pipe, out) + 1) / 2
    assert frames.shape == expected.shape
    assert (frames - expected).abs().max().item() < 1e-4


def _smooth_video() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    video = torch.rand(FRAMES, 3, H, W, generator=g) * 2 - 1
    return (torch.nn.functional.avg_pool2d(video, 5, 1, 2) * 3).clamp(-1, 1)


@torch.no_grad()
def test_inversion_reconstructs_and_matching_helps(tiny_model):
    """Invert the source, sample back with the SOURCE first frame: matching lowers the error."""
    pipe, params, steps = tiny_model.pipe, ConditioningParams(), 25
    video = _smooth_video()
    z0 = encode_video(pipe, video)
    sigmas = karras_sigmas(pipe, steps)
    store = MemoryStore()
    source = encode_condition(
        pipe, video[:1], params, FRAMES, torch.Generator().manual_seed(0), False
    )
    recorder = AttentionRecorder(store)
    with controlled_attention(pipe.unet, recorder):
        inverted = edm_invert(pipe.unet, z0, source, sigmas, recorder)
    assert store.indices() == list(range(steps))
    cond = encode_condition(pipe, video[:1], params, FRAMES, torch.Generator().manual_seed(0), True)
    guidance = guidance_scales(params, FRAMES)
    plain = sample(pipe.unet, inverted, cond, sigmas, guidance)
    matcher = AttentionMatcher(store, MatchingParams(num_steps=steps))
    with controlled_attention(pipe.unet, matcher):
        matched = sample(pipe.unet, inverted, cond, sigmas, guidance, matcher)
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(5))
    err_off = (plain - z0).pow(2).mean().item()
    err_on = (matched - z0).pow(2).mean().item()
    err_noise = (sample(pipe.unet, noise, cond, sigmas, guidance) - z0).pow(2).mean().item()
    log.info(
        "reconstruction MSE: matching off %.5f, on %.5f, from noise %.5f",
        err_off,
        err_on,
        err_noise,
    )
    assert err_on < err_off < err_noise, (err_on, err_off, err_noise)


@torch.no_grad()
def test_plain_controller_equals_diffusers_attention(tiny_model):
    """Our processor with a pass-through controller computes what diffusers' processors do."""
    pipe = tiny_model.pipe
    x = torch.randn(1, FRAMES, 8, H // 2, W // 2, generator=torch.Generator().manual_seed(2))
    emb = torch.randn(1, 1, 32, generator=torch.Generator().manual_seed(3))
    ids = torch.tensor([[6.0, 127.0, 0.02]])
    ref = pipe.unet(x, torch.tensor(0.5), emb, ids, return_dict=False)[0]
    with controlled_attention(pipe.unet, AttentionController()):
        out = pipe.unet(x, torch.tensor(0.5), emb, ids, return_dict=False)[0]
    assert torch.allclose(out, ref, atol=1e-5)


def test_processors_restored_after_control_even_on_error(tiny_model):
    unet = tiny_model.unet
    before = dict(unet.attn_processors)
    try:
        with controlled_attention(unet, AttentionController()):
            assert any(p is not before[k] for k, p in unet.attn_processors.items())
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    after = unet.attn_processors
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)
