"""Reading the source: the demo item or the user's video, sampled and cut into the selected
clips. No model is needed."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from i2vedit.config import is_demo
from i2vedit.data.demo import ensure_demo_assets
from i2vedit.data.video import clip_ranges, sample_video, select_clips

log = logging.getLogger(__name__)


@dataclass
class Clip:
    clip_id: int
    frames: torch.Tensor  #: uint8 (F, H, W, 3) sampled source frames
    times: list[float]  #: their source timestamps (s)
    indices: list[int] = field(default_factory=list)  #: their positions among the sampled frames


@dataclass
class Source:
    video_path: Path
    keyframe_paths: list[Path]
    clips: list[Clip]  #: the selected clips, in order
    fps: float  #: frame rate of written videos
    num_sampled: int  #: frames sampled in all
    num_clips: int  #: clips the sampled frames make in all
    first_clip: Clip  #: clip 0, selected or not (skip-interval attention attends to it)
    model_frames: int  #: the frame count the model was made for (model.num_frames)

    def log_summary(self) -> None:
        """Say which frames each selected clip holds, and (in one line) when the clips' frame
        count is not the model's (once every check has passed)."""
        lengths = sorted({len(c.frames) for c in self.clips}, reverse=True)
        if lengths != [self.model_frames]:
            log.info(
                "clips of %s frames on a model made for model.num_frames=%d (it samples any count)",
                " and ".join(map(str, lengths)),
                self.model_frames,
            )
        for clip in self.clips:
            log.info(
                "clip %d: %d frames from %s, t = %.2f..%.2f s (%d sampled, %d clips in all)",
                clip.clip_id,
                len(clip.frames),
                self.video_path,
                clip.times[0],
                clip.times[-1],
                self.num_sampled,
                self.num_clips,
            )


def source_paths(cfg: DictConfig) -> tuple[Path, list[Path]]:
    """The source video and the edited first frames the config names: its files, or the
    generated ones of the embedded demo and of the toy items (made on first use)."""
    data = cfg.data
    if is_demo(cfg):
        video_path, keyframe_path = ensure_demo_assets(cfg.paths.cache_dir)
        return video_path, [keyframe_path]
    if data.toy_case is not None:
        from i2vedit.toy.items import ensure_toy_case

        case = ensure_toy_case(cfg.paths.cache_dir, data.toy_case, data.toy_frames)
        return case["video"], [case["keyframe"]]
    return Path(data.video_path), [Path(p) for p in data.keyframe_paths or []]


def read_source(cfg: DictConfig) -> Source:
    """Decode and sample the source; select the clips from data.begin_clip_id to
    data.end_clip_id (inclusive; None: the last clip). Frames after the last full clip make a
    shorter last clip, so every sampled frame is edited."""
    data = cfg.data
    video_path, keyframe_paths = source_paths(cfg)
    sampled = sample_video(
        video_path, data.sample_fps, data.start_t, data.end_t, folder_fps=data.folder_fps
    )
    ranges = clip_ranges(
        len(sampled.frames),
        data.chunk_size,
        data.overlay_size,
        value=data.end_t,
        context=f"between data.start_t={data.start_t} and data.end_t={data.end_t} "
        f"at data.sample_fps={data.sample_fps}",
    )
    end = len(ranges) - 1 if data.end_clip_id is None else data.end_clip_id
    clips = [
        Clip(k, sampled.frames[r.start : r.stop], sampled.times[r.start : r.stop], list(r))
        for k, r in select_clips(ranges, data.begin_clip_id, end + 1)
    ]
    fps = data.output_fps or data.sample_fps
    r = ranges[0]
    first = Clip(0, sampled.frames[r.start : r.stop], sampled.times[r.start : r.stop], list(r))
    return Source(
        video_path,
        keyframe_paths,
        clips,
        fps,
        len(sampled.frames),
        len(ranges),
        first,
        cfg.model.num_frames,
    )
