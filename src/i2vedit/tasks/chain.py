"""Long videos: clip k > 0 of an edit is conditioned on the last edited frame of clip k-1
(its image and latent: a :class:`ChainLink`); a run may end with that link saved and a later
run continue from it; the clips of an edit are joined without repeating shared frames."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from i2vedit.errors import InputError
from i2vedit.files import atomic_path
from i2vedit.tasks.source import Clip


@dataclass
class ChainLink:
    """The last edited frame of a clip, which conditions the next clip of the same edit."""

    image: torch.Tensor  #: (1, 3, h, w) in [-1, 1] at the model's resolution
    latent: torch.Tensor  #: (1, C, h', w') its latent (scaled), taken before decoding
    frames: torch.Tensor  #: uint8 (overlay, H, W, 3): the clip's last frames as written


def link_from_tensors(tensors: dict[str, torch.Tensor], device: torch.device) -> ChainLink:
    """A saved or cached link (``image``, ``latent``, ``frames``) with its tensors on
    ``device`` (the frames stay on the CPU)."""
    return ChainLink(tensors["image"].to(device), tensors["latent"].to(device), tensors["frames"])


def join_clips(clips: list[torch.Tensor], overlay: int, continued: bool = False) -> torch.Tensor:
    """The frames of consecutive clips as one video, each shared frame once: every clip after
    the first drops its first ``overlay`` frames (the previous clip's last ones); a
    ``continued`` run drops them from its first clip too (an earlier run wrote them)."""
    first = clips[0][overlay:] if continued else clips[0]
    return torch.cat([first, *(c[overlay:] for c in clips[1:])])


def save_last_frame(path: Path, link: ChainLink, clip_id: int) -> None:
    """Save an edit's last frame (image, latent, overlap frames) so a later run can continue
    it from clip ``clip_id + 1`` (``long_video.load_from_last_frames_latents``)."""
    from safetensors.torch import save_file

    tensors = {"image": link.image, "latent": link.latent, "frames": link.frames}
    with atomic_path(path) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            tmp,
            {"clip_id": str(clip_id)},
        )


def load_last_frame(path: Path, begin_clip_id: int, clip: Clip) -> dict[str, torch.Tensor]:
    """Read and check a saved last frame: it must end the clip before ``begin_clip_id``."""
    from safetensors import safe_open

    key = "long_video.load_from_last_frames_latents"
    if not path.is_file():
        raise InputError(key, str(path), "file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            saved_clip = int(f.metadata()["clip_id"])
            tensors = {k: f.get_tensor(k) for k in ("image", "latent", "frames")}
    except Exception as err:  # any unreadable file is the user's bad input
        raise InputError(key, str(path), f"not a saved last frame ({type(err).__name__})") from None
    if saved_clip != begin_clip_id - 1:
        raise InputError(
            key,
            str(path),
            f"it ends clip {saved_clip}, so continue with data.begin_clip_id={saved_clip + 1} "
            f"(not {begin_clip_id})",
        )
    if tuple(tensors["frames"].shape[1:]) != tuple(clip.frames.shape[1:]):
        raise InputError(key, str(path), "saved from a video of another resolution")
    return tensors
