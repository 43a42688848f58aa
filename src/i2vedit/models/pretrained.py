"""Pretrained SVD (``model.kind=pretrained``): a local diffusers folder or a hub id of
stable-video-diffusion-img2vid(-xt). Light to import: the config checks read it, and diffusers
loads only with the weights."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from i2vedit.errors import InputError

if TYPE_CHECKING:
    import torch
    from diffusers import StableVideoDiffusionPipeline

log = logging.getLogger(__name__)

#: Sub-folders a diffusers SVD folder must have, with the file that proves each one.
REQUIRED_COMPONENTS = {
    "unet": "config.json",
    "vae": "config.json",
    "image_encoder": "config.json",
    "feature_extractor": "preprocessor_config.json",
    "scheduler": "scheduler_config.json",
}


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


def pretrained_identity(path: str) -> str:
    """Names the weights: the resolved local folder, or the hub id."""
    return str(Path(path).expanduser().resolve()) if _is_local(path) else path


def load_pretrained_pipeline(
    path: str, variant: str | None, dtype: torch.dtype
) -> StableVideoDiffusionPipeline:
    """The SVD pipeline of a complete diffusers folder or a hub id, in ``dtype``."""
    from diffusers import StableVideoDiffusionPipeline

    check_model_path(path or "")
    log.info("loading SVD from %s", path)
    return StableVideoDiffusionPipeline.from_pretrained(
        str(Path(path).expanduser()) if _is_local(path) else path,
        torch_dtype=dtype,
        variant=variant,
    )
