"""The full-size SVD architectures, beside the tiny and the toy ones: the component configs of
stable-video-diffusion-img2vid(-xt) and a builder of the pipeline with random weights, for
measuring time, memory and record sizes at real scale without the checkpoint.

Light to import: the specs are plain dicts; torch, diffusers and transformers are imported
when a pipeline is built.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from diffusers import StableVideoDiffusionPipeline

log = logging.getLogger(__name__)

#: stable-video-diffusion-img2vid unet/config.json (the diffusers class defaults, plus the
#: sample size and the 14 frames of img2vid; num_frames does not change the weights).
SVD_UNET = dict(
    sample_size=96,
    in_channels=8,
    out_channels=4,
    down_block_types=(
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "DownBlockSpatioTemporal",
    ),
    up_block_types=(
        "UpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
    ),
    block_out_channels=(320, 640, 1280, 1280),
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=768,
    layers_per_block=2,
    cross_attention_dim=1024,
    transformer_layers_per_block=1,
    num_attention_heads=(5, 10, 20, 20),
    num_frames=14,
)

#: stable-video-diffusion-img2vid-xt unet/config.json: the same weights' shapes, 25 frames.
SVD_XT_UNET = {**SVD_UNET, "num_frames": 25}

#: stable-video-diffusion-img2vid vae/config.json. Unlike the UNet, these are NOT the class
#: defaults (which are a one-block toy VAE): the SD 2.x encoder, 4 levels of 2 layers.
SVD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=768,
    scaling_factor=0.18215,
    force_upcast=True,
)

#: stable-video-diffusion-img2vid image_encoder/config.json: OpenCLIP ViT-H/14 vision tower.
SVD_CLIP = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=16,
    patch_size=14,
    image_size=224,
    projection_dim=1024,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
)

#: stable-video-diffusion-img2vid feature_extractor: CLIP inputs at 224.
SVD_FEATURE_EXTRACTOR = dict(crop_size=224, size={"shortest_edge": 224})

#: the UNet spec of each full-size ``conf/model`` option
FULL_SIZE_UNETS = {"svd": SVD_UNET, "svd_xt": SVD_XT_UNET}


@contextlib.contextmanager
def building(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on ``device`` in ``dtype`` (no fp32 copy in host memory)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


def gather(module: torch.nn.Module, device: torch.device) -> None:
    """Move what the device context missed onto ``device``: tensors made by the legacy
    ``torch.Tensor([...])`` constructor (the AlphaBlender mix factors) stay on the CPU."""
    tensors = [*module.parameters(), *module.buffers()]
    strays = sum(t.device != device for t in tensors)
    if strays:
        log.info("%s: %d tensors built off %s, moved", type(module).__name__, strays, device)
        module.to(device=device)


def build_full_size_pipeline(
    device: torch.device, dtype: torch.dtype, seed: int, option: str = "svd"
) -> StableVideoDiffusionPipeline:
    """The full-size SVD img2vid components (``option``: svd or svd_xt) with random weights,
    built on ``device`` (the meta device too: shapes only), frozen, in eval mode."""
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from i2vedit.models.base import svd_scheduler

    torch.manual_seed(seed)
    with building(device, dtype):
        unet = UNetSpatioTemporalConditionModel(**FULL_SIZE_UNETS[option])
    # as load_model does: the SVD VAE overflows in fp16, so it stays in fp32 there
    vae_dtype = torch.float32 if dtype == torch.float16 else dtype
    with building(device, vae_dtype):
        vae = AutoencoderKLTemporalDecoder(**SVD_VAE)
    with building(device, dtype):
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**SVD_CLIP))
    pipe = StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=svd_scheduler(),
        feature_extractor=CLIPImageProcessor(**SVD_FEATURE_EXTRACTOR),
    )
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.image_encoder):
        module.requires_grad_(False)
        module.eval()
        gather(module, device)
    return pipe
