"""Stable Video Diffusion components: loaded once per run, or built tiny and seeded.

Real use loads the diffusers folder (or hub id) of stable-video-diffusion-img2vid(-xt).
``build_tiny_pipeline`` makes a randomly initialised SVD of the very same diffusers classes,
small enough to run the whole method on a CPU in seconds (tests, the demo).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from i2vedit.errors import InputError

log = logging.getLogger(__name__)

#: Sub-folders a diffusers SVD folder must have, with the file that proves each one.
REQUIRED_COMPONENTS = {
    "unet": "config.json",
    "vae": "config.json",
    "image_encoder": "config.json",
    "feature_extractor": "preprocessor_config.json",
    "scheduler": "scheduler_config.json",
}


def svd_scheduler() -> EulerDiscreteScheduler:
    """The Euler scheduler SVD ships with (Karras sigmas in [0.002, 700], v-prediction)."""
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        interpolation_type="linear",
        use_karras_sigmas=True,
        sigma_min=0.002,
        sigma_max=700.0,
        timestep_spacing="leading",
        timestep_type="continuous",
        steps_offset=1,
    )


#: Gain on the initial query/key projections of the tiny UNet's self-attention. At default
#: init the logits are so small that every attention map is near uniform and carries no
#: layout, which would leave attention control nothing to act on; trained SVD attention is
#: peaked. With this gain the tiny model's maps depend on content, as real ones do.
TINY_ATTENTION_GAIN = 4.0


def tiny_image_encoder(seed: int) -> tuple[CLIPVisionModelWithProjection, CLIPImageProcessor]:
    """A small seeded CLIP image encoder (32-dim embeddings; inputs resized to 224 as SVD's)
    and its image processor, for the tiny and toy models."""
    torch.manual_seed(seed)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            projection_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=224,
            patch_size=32,
        )
    )
    return image_encoder, CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224})


def build_tiny_pipeline(seed: int = 0) -> StableVideoDiffusionPipeline:
    """A seeded random SVD of the real classes: 2-level UNet, 2-block temporal VAE, small CLIP.

    The VAE downsamples by 2 (one down block), so frames must be multiples of 8 with
    latents of even size; 32x48 frames give 16x24 latents.
    """
    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=16,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        cross_attention_dim=32,
        num_attention_heads=(2, 4),
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24,
    )
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("attn1"):
                module.to_q.weight.mul_(TINY_ATTENTION_GAIN)
                module.to_k.weight.mul_(TINY_ATTENTION_GAIN)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
    )
    image_encoder, feature_extractor = tiny_image_encoder(seed + 2)
    return StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=svd_scheduler(),
        feature_extractor=feature_extractor,
    )


def _is_local(path: str) -> bool:
    p = Path(path).expanduser()
    return p.exists() or path.startswith((".", "/", "~")) or path.count("/") != 1


def check_model_path(path: str, key: str = "model.path") -> None:
    """Refuse a local folder that is not a complete diffusers SVD folder (before loading)."""
    if not path:
        raise InputError(key, path, "give a local diffusers folder or a hub id of SVD")
    if not _is_local(path):
        return  # a hub id: resolved (or refused) by diffusers when loading
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise InputError(key, path, "model folder not found")
    for part, proof in REQUIRED_COMPONENTS.items():
        if not (folder / part / proof).is_file():
            raise InputError(
                key, path, f"model folder is missing the '{part}' component ({part}/{proof})"
            )


def model_identity(kind: str, path: str | None, seed: int) -> str:
    """What names the weights, known before loading: the tiny seed, a folder, or a hub id."""
    if kind == "tiny":
        return f"tiny-seed{seed}"
    if kind == "toy":
        from i2vedit.models.toy import check_toy_weights, toy_identity

        check_toy_weights()
        return toy_identity()
    return str(Path(path).expanduser().resolve()) if _is_local(path) else path


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
) -> LoadedModel:
    """Load (or build) the SVD components once, frozen, in eval mode, on ``device``."""
    if kind == "tiny":
        pipe = build_tiny_pipeline(seed)
    elif kind == "toy":
        from i2vedit.models.toy import load_toy_pipeline

        pipe = load_toy_pipeline()
    elif kind == "pretrained":
        check_model_path(path or "")
        log.info("loading SVD from %s", path)
        pipe = StableVideoDiffusionPipeline.from_pretrained(
            str(Path(path).expanduser()) if _is_local(path) else path,
            torch_dtype=dtype,
            variant=variant,
        )
    else:
        raise InputError("model.kind", kind, "expected tiny, toy or pretrained")
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.image_encoder):
        module.requires_grad_(False)
        module.eval()
    pipe.to(device=device)
    if pipe.unet.dtype != dtype:  # the tiny model is built in fp32
        pipe.to(dtype=dtype)
    if dtype == torch.float16 and getattr(pipe.vae.config, "force_upcast", False):
        pipe.vae.to(dtype=torch.float32)  # the SVD VAE overflows in fp16
    return LoadedModel(pipe, device, dtype, model_identity(kind, path, seed))


def describe(pipe: StableVideoDiffusionPipeline) -> str:
    """A short fingerprint of the architecture (for logs and benchmark tables)."""
    n = sum(p.numel() for p in pipe.unet.parameters())
    config = json.dumps(dict(pipe.unet.config), sort_keys=True, default=str)
    return f"unet {n / 1e6:.1f}M params, config {hashlib.sha1(config.encode()).hexdigest()[:8]}"
