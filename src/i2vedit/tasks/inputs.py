"""Reading an edit's inputs before any model loads: the source's clips, the edited first
frames with each one's matching settings (its own ``per_edit`` entry wins over the shared
``attention_matching`` values) and mask (``data.mask_paths``), and the saved last frames a run
continues from."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from i2vedit.cache import content_digest
from i2vedit.data.video import IMAGE_EXTENSIONS, load_image, read_video_frames
from i2vedit.errors import InputError
from i2vedit.masks import EditMask, auto_mask, propagate
from i2vedit.metrics import load_mask, resize_mask
from i2vedit.outputs import SOURCE_NAME
from i2vedit.tasks.chain import join_clips, load_last_frame
from i2vedit.tasks.source import Source, read_source

log = logging.getLogger(__name__)


@dataclass
class Keyframe:
    """An edited first frame and its edit's own matching settings."""

    path: Path
    image: torch.Tensor  #: uint8 (H, W, 3)
    beta: tuple[float, float]
    mask_thr: tuple[float, float]
    mask: EditMask | None = None  #: its edit mask (data.mask_paths); None: no mask

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


MASK_KEY = "data.mask_paths"


def mask_entries(cfg: DictConfig, count: int) -> list:
    """``data.mask_paths`` as one entry per keyframe (None: no mask); a longer list is refused."""
    masks = cfg.data.mask_paths
    if masks is None:
        return [None] * count
    if len(masks) > count:
        raise InputError(MASK_KEY, list(masks), f"{len(masks)} masks for {count} keyframe(s)")
    return [*masks, *[None] * (count - len(masks))]


def _mask_frames(path: Path, key: str, spec: str, folder_fps: float) -> np.ndarray:
    """Per-frame masks from a folder of images (any nonzero pixel) or a video (brighter than
    mid-grey, as compression blurs black and white): bool (N, H, W)."""
    try:
        frames = read_video_frames(path, key, folder_fps).numpy()
    except InputError:
        raise InputError(key, spec, "not a mask image, image folder or video") from None
    return frames.any(-1) if path.is_dir() else frames.mean(-1) > 127.5


def _read_mask_file(key: str, spec: str, size: tuple[int, int], folder_fps: float):
    """(kind, masks): "image" with bool (H, W) or "frames" with bool (N, H, W), at ``size``
    (resized nearest when the file's differs, logged)."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise InputError(key, spec, "file not found")
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        kind, masks = "image", load_mask(path, key)
    else:
        kind, masks = "frames", _mask_frames(path, key, spec, folder_fps)
    if masks.shape[-2:] != size:
        log.info(
            "%s=%s: %dx%d masks resized to the source's %dx%d (nearest)",
            key,
            spec,
            masks.shape[-1],
            masks.shape[-2],
            size[1],
            size[0],
        )
        masks = resize_mask(masks, *size)
    return kind, masks


def source_timeline(cfg: DictConfig, source: Source) -> torch.Tensor:
    """The selected clips' source frames joined, each shared frame once: the frames masks are
    given for (uint8 (T, H, W, 3))."""
    return join_clips([c.frames for c in source.clips], cfg.data.overlay_size)


def read_mask(
    cfg: DictConfig, index: int, image: torch.Tensor, timeline: torch.Tensor, first_only=False
) -> EditMask | None:
    """The mask of edit ``index`` (``data.mask_paths[index]``) over the ``timeline``: auto
    (the keyframe's difference from the source's first frame), a first-frame image, or
    per-frame masks used as given; first-frame masks are propagated (unless ``first_only``)."""
    data = cfg.data
    entries = data.mask_paths or []
    spec = entries[index] if index < len(entries) else None
    if spec is None:
        return None
    key, spec, size = f"{MASK_KEY}[{index}]", str(spec), tuple(timeline.shape[1:3])
    settings = {k: data[k] for k in ("mask_safety", "mask_feather", "mask_preserve")}
    if spec == "auto":
        kind = "auto"
        first = auto_mask(image, timeline[0], data.mask_threshold, data.mask_dilate)
        settings.update(threshold=data.mask_threshold, dilate=data.mask_dilate)
    else:
        kind, masks = _read_mask_file(key, spec, size, data.folder_fps)
        first = masks if kind == "image" else masks[0]
    if kind == "frames":
        if len(masks) != len(timeline):
            raise InputError(
                key,
                spec,
                f"{len(masks)} mask frames, but the selected clips hold {len(timeline)} frames",
            )
        return EditMask(kind, spec, first, masks, settings)
    frames = first[None] if first_only else propagate(first, timeline.numpy(), data.mask_safety)
    return EditMask(kind, spec, first, frames, settings)


def first_frame_mask(cfg: DictConfig, index: int = 0) -> np.ndarray | None:
    """The first-frame mask of edit ``index`` at the source's resolution (None: no mask),
    without propagating it and without a model (the app shows it before a run)."""
    source = read_source(cfg)
    mask_entries(cfg, len(source.keyframe_paths))
    image = load_image(source.keyframe_paths[index])
    found = read_mask(cfg, index, image, source_timeline(cfg, source), first_only=True)
    return None if found is None else found.first


def read_inputs(cfg: DictConfig) -> EditInputs:
    """Decode and check the source video, keyframes and masks (no model needed)."""
    source = read_source(cfg)
    mask_entries(cfg, len(source.keyframe_paths))
    timeline = source_timeline(cfg, source) if cfg.data.mask_paths else None
    keyframes = []
    for i, path in enumerate(source.keyframe_paths):
        image = load_image(path)
        mask = None if timeline is None else read_mask(cfg, i, image, timeline)
        keyframes.append(Keyframe(path, image, *edit_settings(cfg, i, path), mask))
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
