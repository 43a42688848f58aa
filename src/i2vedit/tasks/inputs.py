"""Reading an edit's inputs before any model loads: the source's clips, the edited first
frames with each one's matching settings (its own ``per_edit`` entry wins over the shared
``attention_matching`` values), and the saved last frames a run continues from."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from i2vedit.cache import content_digest
from i2vedit.data.video import load_image
from i2vedit.errors import InputError
from i2vedit.outputs import SOURCE_NAME
from i2vedit.tasks.chain import load_last_frame
from i2vedit.tasks.source import Source, read_source

log = logging.getLogger(__name__)


@dataclass
class Keyframe:
    """An edited first frame and its edit's own matching settings."""

    path: Path
    image: torch.Tensor  #: uint8 (H, W, 3)
    beta: tuple[float, float]
    mask_thr: tuple[float, float]

    @property
    def stem(self) -> str:
        return self.path.stem


@dataclass
class EditInputs:
    """Everything read from disk and checked before a model loads."""

    source: Source  #: the selected clips with their sampled source frames
    keyframes: list[Keyframe]
    #: per keyframe stem, the saved last frame of an earlier run that this run continues
    continued: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    continued_digests: dict[str, str] = field(default_factory=dict)

    @property
    def video_path(self) -> Path:
        return self.source.video_path

    @property
    def fps(self) -> float:
        return self.source.fps


def edit_settings(
    cfg: DictConfig, index: int, path: Path
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(beta, mask_thr) of the edit of keyframe ``index``: its ``attention_matching.per_edit``
    entry wins over the shared values (a warning says so when they differ, e.g. in a sweep
    over the shared value)."""
    am = cfg.attention_matching
    own = am.per_edit[index] if index < len(am.per_edit) else None
    beta = own.beta if own is not None and own.beta is not None else am.beta
    mask_thr = own.mask_thr if own is not None and own.mask_thr is not None else am.mask_thr
    for key, used, shared in (("beta", beta, am.beta), ("mask_thr", mask_thr, am.mask_thr)):
        if list(used) != list(shared):
            log.warning(
                "%s: attention_matching.per_edit[%d].%s=%s wins over attention_matching.%s=%s",
                Path(path).name,
                index,
                key,
                list(used),
                key,
                list(shared),
            )
    return (float(beta[0]), float(beta[1])), (float(mask_thr[0]), float(mask_thr[1]))


def read_inputs(cfg: DictConfig) -> EditInputs:
    """Decode and check the source video and keyframes (no model needed)."""
    source = read_source(cfg)
    keyframes = [
        Keyframe(path, load_image(path), *edit_settings(cfg, i, path))
        for i, path in enumerate(source.keyframe_paths)
    ]
    for keyframe in keyframes:
        if keyframe.stem == Path(SOURCE_NAME).stem:
            raise InputError(
                "data.keyframe_paths",
                str(keyframe.path),
                f"'{SOURCE_NAME}' is the resampled source's name",
            )
    continued, digests = {}, {}
    paths = cfg.long_video.load_from_last_frames_latents
    if paths:
        if len(paths) != len(keyframes):
            raise InputError(
                "long_video.load_from_last_frames_latents",
                list(paths),
                f"give one saved last frame per keyframe ({len(keyframes)})",
            )
        for keyframe, path in zip(keyframes, paths, strict=True):
            continued[keyframe.stem] = load_last_frame(
                Path(path), source.clips[0].clip_id, source.clips[0]
            )
            digests[keyframe.stem] = content_digest(path)
    return EditInputs(source, keyframes, continued, digests)
