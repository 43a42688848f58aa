"""What the tiny and the toy SVD share: SVD's own Euler scheduler and a small seeded CLIP image
encoder (both builders import it; neither imports the other)."""

from __future__ import annotations

import torch
from diffusers import EulerDiscreteScheduler
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection


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
