"""Resolution control: map source frames to the model's resolution and back.

A :class:`ResolutionPlan` optionally pads the source (by edge replication, centred) to the
target's aspect ratio, then resizes to the target size. :meth:`ResolutionPlan.inverse` undoes
it: resize back to the padded size and crop the padding off, so edited frames come back at
exactly the source size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from i2vedit.errors import InputError

logger = logging.getLogger(__name__)

# Spatial sizes handed to the model must be multiples of this (VAE downsampling factor).
SIZE_MULTIPLE = 8


def _check_target(target_hw: tuple[int, int], key: str) -> tuple[int, int]:
    try:
        th, tw = (int(v) for v in target_hw)
        ok = all(int(v) == v for v in target_hw)
    except (TypeError, ValueError) as exc:
        raise InputError(key, target_hw, "must be a pair [height, width]") from exc
    if not ok:
        raise InputError(key, target_hw, "height and width must be integers")
    if th <= 0 or tw <= 0 or th % SIZE_MULTIPLE or tw % SIZE_MULTIPLE:
        raise InputError(
            key,
            target_hw,
            f"height and width must be positive multiples of {SIZE_MULTIPLE}",
        )
    return th, tw


def _best_pad(fixed: int, current: int, num: int, den: int) -> int:
    """Pad p >= 0 minimising |(current + p) / fixed - num / den|."""
    ideal = fixed * num / den - current
    if ideal <= 0:
        return 0
    lo = int(np.floor(ideal))
    # Integer comparison of |(current + p) * den - fixed * num| for the two neighbours.
    return min((lo, lo + 1), key=lambda p: (abs((current + p) * den - fixed * num), p))


@dataclass(frozen=True)
class ResolutionPlan:
    """How source frames of ``source_hw`` become model frames of ``target_hw``.

    ``pad`` is (left, right, top, bottom) in source pixels.
    """

    source_hw: tuple[int, int]
    target_hw: tuple[int, int]
    pad: tuple[int, int, int, int]

    @classmethod
    def build(
        cls,
        source_hw: tuple[int, int],
        target_hw: tuple[int, int],
        pad_to_fit: bool,
        *,
        key: str = "data.output_res",
    ) -> ResolutionPlan:
        """Plan a resize; with ``pad_to_fit`` pad the source to the target's aspect ratio first.

        Without ``pad_to_fit`` the source is stretched to the target size (aspect may change).
        """
        th, tw = _check_target(target_hw, key)
        h, w = (int(v) for v in source_hw)
        if h <= 0 or w <= 0:
            raise ValueError(f"source size must be positive, got {source_hw}")
        left = right = top = bottom = 0
        if pad_to_fit:
            # Compare aspect ratios exactly: w / h against tw / th.
            if w * th < tw * h:  # source is narrower: pad the width
                total = _best_pad(h, w, tw, th)
                left, right = total // 2, total - total // 2
            elif w * th > tw * h:  # source is wider: pad the height
                total = _best_pad(w, h, th, tw)
                top, bottom = total // 2, total - total // 2
        plan = cls(source_hw=(h, w), target_hw=(th, tw), pad=(left, right, top, bottom))
        logger.debug("resolution plan: %s", plan)
        return plan

    @property
    def padded_hw(self) -> tuple[int, int]:
        """Source size after padding, before resizing."""
        left, right, top, bottom = self.pad
        return self.source_hw[0] + top + bottom, self.source_hw[1] + left + right

    @property
    def is_identity(self) -> bool:
        return self.source_hw == self.target_hw and not any(self.pad)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) source frames in [-1, 1] -> (N, 3, th, tw) model frames."""
        _check_frames(frames, self.source_hw, "source")
        if self.is_identity:
            return frames
        x = frames
        if any(self.pad):
            x = F.pad(x, self.pad, mode="replicate")
        return _resize(x, self.target_hw)

    def inverse(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, th, tw) model frames -> (N, 3, H, W) at the source size, padding removed."""
        _check_frames(frames, self.target_hw, "target")
        if self.is_identity:
            return frames
        x = _resize(frames, self.padded_hw)
        left, _, top, _ = self.pad
        h, w = self.source_hw
        return x[..., top : top + h, left : left + w]


def _check_frames(frames: torch.Tensor, hw: tuple[int, int], what: str) -> None:
    if frames.ndim != 4 or frames.shape[1] != 3 or tuple(frames.shape[-2:]) != tuple(hw):
        raise ValueError(
            f"expected (N, 3, {hw[0]}, {hw[1]}) frames at the {what} size, "
            f"got {tuple(frames.shape)}"
        )


def _resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    dtype = x.dtype
    y = F.interpolate(
        x.float(), size=tuple(hw), mode="bilinear", antialias=True, align_corners=False
    )
    return y.to(dtype)


def to_model_frames(frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, H, W, 3) frames -> float (N, 3, H, W) in [-1, 1] (0 -> -1, 255 -> 1)."""
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 (N, H, W, 3) frames, got {frames.dtype} {tuple(frames.shape)}"
        )
    x = frames.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0
    return x.to(dtype).contiguous()


def to_uint8_frames(frames: torch.Tensor) -> torch.Tensor:
    """float (N, 3, H, W) frames in [-1, 1] -> uint8 (N, H, W, 3), rounded and clamped."""
    if frames.ndim != 4 or frames.shape[1] != 3 or not frames.is_floating_point():
        raise ValueError(
            f"expected float (N, 3, H, W) frames, got {frames.dtype} {tuple(frames.shape)}"
        )
    x = torch.nan_to_num(frames.to(torch.float32), nan=0.0)
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous()
