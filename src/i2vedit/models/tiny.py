"""The tiny model (``model.kind=tiny``): a seeded, randomly initialised SVD of the very same
diffusers classes, small enough to run the whole method on a CPU in seconds (tests, the demo)."""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)

from i2vedit.models.base import svd_scheduler, tiny_image_encoder

#: Gain on the initial query/key projections of the tiny UNet's self-attention. At default
#: init the logits are so small that every attention map is near uniform and carries no
#: layout, which would leave attention control nothing to act on; trained SVD attention is
#: peaked. With this gain the tiny model's maps depend on content, as real ones do.
TINY_ATTENTION_GAIN = 4.0


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
