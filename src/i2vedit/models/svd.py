"""Stable Video Diffusion components, loaded once per run whatever their kind.

``load_model`` reads the kind's entry in ``i2vedit.models.registry`` (tiny: a seeded random SVD
of the real diffusers classes; toy: the shipped trained one; pretrained: a diffusers folder or
hub id of stable-video-diffusion-img2vid(-xt)) and readies the pipeline for a run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)

from i2vedit.models.base import svd_scheduler
from i2vedit.models.compile import compile_repeated_blocks
from i2vedit.models.registry import model_identity, model_kind
from i2vedit.models.tiny import build_tiny_pipeline

#: names importers take from here: the tasks (``model_identity``), the experiments
#: (``build_tiny_pipeline``, ``svd_scheduler``); they live in registry, tiny and base
__all__ = [
    "LoadedModel",
    "build_tiny_pipeline",
    "describe",
    "load_model",
    "model_identity",
    "svd_scheduler",
]


@dataclass
class LoadedModel:
    """The SVD pipeline whose components a run uses, on its device and dtype."""

    pipe: StableVideoDiffusionPipeline
    device: torch.device
    dtype: torch.dtype
    identity: str  #: stable id of the weights (path or tiny seed), for caches and logs

    @property
    def unet(self) -> UNetSpatioTemporalConditionModel:
        return self.pipe.unet

    @property
    def vae(self) -> AutoencoderKLTemporalDecoder:
        return self.pipe.vae


def load_model(
    kind: str,
    path: str | None,
    seed: int,
    variant: str | None,
    device: torch.device,
    dtype: torch.dtype,
    compile: bool = False,
) -> LoadedModel:
    """Load (or build) the SVD components once, frozen, in eval mode, on ``device``; with
    ``compile`` (the ``compile`` key), the UNet's repeated blocks compiled in place."""
    model = model_kind(kind)
    model.check(path)
    pipe = model.load(path, seed, variant, dtype)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.image_encoder):
        module.requires_grad_(False)
        module.eval()
    pipe.to(device=device)
    if pipe.unet.dtype != dtype:  # the tiny model is built in fp32
        pipe.to(dtype=dtype)
    if dtype == torch.float16 and getattr(pipe.vae.config, "force_upcast", False):
        pipe.vae.to(dtype=torch.float32)  # the SVD VAE overflows in fp16
    if compile:
        compile_repeated_blocks(pipe.unet)
    return LoadedModel(pipe, device, dtype, model.identity(path, seed))


def describe(pipe: StableVideoDiffusionPipeline) -> str:
    """A short fingerprint of the architecture (for logs and benchmark tables)."""
    n = sum(p.numel() for p in pipe.unet.parameters())
    config = json.dumps(dict(pipe.unet.config), sort_keys=True, default=str)
    return f"unet {n / 1e6:.1f}M params, config {hashlib.sha1(config.encode()).hexdigest()[:8]}"
