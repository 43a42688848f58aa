"""The toy model: a small SVD of the real diffusers classes, trained by the project's own
script (``python -m i2vedit.toy.pretrain``) on the procedural world of ``i2vedit.toy.world``,
and shipped as one half-precision safetensors file inside the package.

Architecture (64x64 frames, 8 frames a clip):
- VAE: diffusers' ``AutoencoderKL`` with 8 GroupNorm groups (its ``norm_num_groups`` is
  configurable; the temporal VAE fixes 32, which at 32-64 channels turns into per-channel
  instance norm and erases flat colours), downsampling by 4 to 16x16x4 latents;
- UNet: ``UNetSpatioTemporalConditionModel`` with 96 channels at both levels (3 channels per
  GroupNorm group), spatial and temporal attention at the 16x16 level;
- image encoder: a small random ``CLIPVisionModelWithProjection``, frozen during training
  (its embedding is a fixed function of the first frame).
The SVD pipeline decodes through the VAE's own signature (``AutoencoderKL`` takes no
``num_frames``), so the rest of the package runs on it unchanged.

Light to import (torch and diffusers load inside the functions that build or save weights):
the config checks ask ``check_toy_weights`` before anything loads.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from i2vedit.errors import InputError
from i2vedit.files import atomic_path

if TYPE_CHECKING:
    from diffusers import StableVideoDiffusionPipeline

log = logging.getLogger(__name__)

TOY_VERSION = "v1"
#: the shipped weights (package data)
TOY_WEIGHTS = Path(__file__).resolve().parent / "weights" / f"toy-{TOY_VERSION}.safetensors"
TOY_SIZE = (64, 64)
TOY_FRAMES = 8
COMPONENTS = ("unet", "vae", "image_encoder")


def build_toy_pipeline(seed: int = 0) -> StableVideoDiffusionPipeline:
    """The toy architecture, randomly initialised from ``seed`` (training starts here)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )

    from i2vedit.models.base import svd_scheduler, tiny_image_encoder

    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=16,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(96, 96),
        layers_per_block=1,
        cross_attention_dim=32,
        num_attention_heads=(3, 3),
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=TOY_SIZE[0],
    )
    image_encoder, feature_extractor = tiny_image_encoder(seed + 2)
    return StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=svd_scheduler(),
        feature_extractor=feature_extractor,
    )


def save_toy_weights(
    pipe: StableVideoDiffusionPipeline, path: Path, metadata: dict[str, object]
) -> Path:
    """All three trained components in one fp16 safetensors file (atomic), with the VAE's
    scaling factor and ``metadata`` (training facts) in its header."""
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for name in COMPONENTS:
        for key, value in getattr(pipe, name).state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().to(torch.float16).cpu().contiguous()
    header = {
        "version": TOY_VERSION,
        "scaling_factor": repr(float(pipe.vae.config.scaling_factor)),
        "training": json.dumps(metadata, default=str),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, header)
    return path


def check_toy_weights(path: Path = TOY_WEIGHTS) -> None:
    if not path.is_file():
        raise InputError(
            "model",
            "toy",
            f"weights missing at {path} (train them: python -m i2vedit.toy.pretrain)",
        )


def toy_identity(path: Path = TOY_WEIGHTS) -> str:
    """Names the trained weights by content: ``toy-v1-<first 12 hex of their SHA-256>`` (hashed
    once per file version: a run asks for it for every clip's cache keys)."""
    stat = path.stat()
    return _toy_identity(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _toy_identity(path: Path, mtime_ns: int, size: int) -> str:
    from i2vedit.cache import file_sha256

    return f"toy-{TOY_VERSION}-{file_sha256(path)[:12]}"


def load_toy_pipeline(path: Path = TOY_WEIGHTS) -> StableVideoDiffusionPipeline:
    """The toy architecture with the trained weights (fp32)."""
    from safetensors import safe_open

    check_toy_weights(path)
    pipe = build_toy_pipeline(0)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    for name in COMPONENTS:
        prefix = f"{name}."
        state = {k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        getattr(pipe, name).load_state_dict(state, strict=True)
    pipe.vae.register_to_config(scaling_factor=float(header.get("scaling_factor", "1.0")))
    log.info("toy model %s loaded from %s", header.get("version", "?"), path)
    return pipe


def describe_weights(path: Path = TOY_WEIGHTS) -> dict[str, object]:
    """The training facts stored in the weights' header."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    return json.loads(header.get("training", "{}"))
