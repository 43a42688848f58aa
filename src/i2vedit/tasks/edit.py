"""The edit task: a pure function of the config that returns what it wrote.

Stages (numbered as they run): 1 check the config, 2 read and check the inputs, 3 load the
model, 4 SARP and EDM inversion of the source clip with attention recording, 5 guided sampling
of each edit with attention matching, 6 decode and write.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from i2vedit.attention.control import (
    AttentionController,
    AttentionMatcher,
    AttentionRecorder,
    MatchingParams,
    controlled_attention,
)
from i2vedit.attention.store import MemoryStore
from i2vedit.config import is_demo, validate_edit_config
from i2vedit.data.demo import ensure_demo_assets
from i2vedit.data.resize import ResolutionPlan, to_model_frames, to_uint8_frames
from i2vedit.data.video import clip_ranges, load_image, sample_video, select_clips, write_video
from i2vedit.errors import InputError
from i2vedit.inversion.edm import edm_invert
from i2vedit.inversion.sarp import sarp
from i2vedit.models.device import resolve_device, resolve_dtype
from i2vedit.models.svd import LoadedModel, load_model
from i2vedit.progress import step_progress
from i2vedit.sampling.edm import (
    ConditioningParams,
    decode_video,
    encode_condition,
    encode_video,
    guidance_scales,
    karras_sigmas,
)
from i2vedit.sampling.sampler import sample

log = logging.getLogger(__name__)

SOURCE_NAME = "source.mp4"
CONFIG_NAME = "config.yaml"


@dataclass
class Keyframe:
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

    video_path: Path
    frames: torch.Tensor  #: uint8 (F, H, W, 3): the clip's sampled source frames
    times: list[float]
    clip_id: int
    keyframes: list[Keyframe]
    fps: float  #: output frame rate


@dataclass
class EditResult:
    output_dir: Path
    edited: list[Path]  #: one video per keyframe, in keyframe order
    source: Path  #: the clip's resampled source frames
    config: Path
    seconds: dict[str, float] = field(default_factory=dict)
    record_bytes_per_step: int = 0

    @property
    def written(self) -> list[Path]:
        return [*self.edited, self.source, self.config]


def read_inputs(cfg: DictConfig) -> EditInputs:
    """Decode and check the source video and keyframes (stage 2; no model needed)."""
    data = cfg.data
    if is_demo(cfg):
        video_path, keyframe_path = ensure_demo_assets(cfg.paths.cache_dir)
        keyframe_paths = [keyframe_path]
    else:
        video_path, keyframe_paths = Path(data.video_path), [Path(p) for p in data.keyframe_paths]
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
    end = data.begin_clip_id if data.end_clip_id is None else data.end_clip_id
    ((clip_id, frame_range),) = select_clips(ranges, data.begin_clip_id, end + 1)
    am = cfg.attention_matching
    keyframes = []
    for i, path in enumerate(keyframe_paths):
        own = am.per_edit[i] if i < len(am.per_edit) else None
        beta = own.beta if own is not None and own.beta is not None else am.beta
        mask_thr = own.mask_thr if own is not None and own.mask_thr is not None else am.mask_thr
        keyframes.append(
            Keyframe(
                path,
                load_image(path),
                (float(beta[0]), float(beta[1])),
                (float(mask_thr[0]), float(mask_thr[1])),
            )
        )
    for keyframe in keyframes:
        if keyframe.stem == Path(SOURCE_NAME).stem:
            raise InputError(
                "data.keyframe_paths",
                str(keyframe.path),
                f"'{SOURCE_NAME}' is the resampled source's name",
            )
    frames = sampled.frames[frame_range.start : frame_range.stop]
    times = sampled.times[frame_range.start : frame_range.stop]
    log.info(
        "clip %d: %d frames from %s, t = %.2f..%.2f s (%d sampled in all)",
        clip_id,
        len(frames),
        video_path,
        times[0],
        times[-1],
        len(sampled.frames),
    )
    return EditInputs(
        video_path, frames, times, clip_id, keyframes, data.output_fps or data.sample_fps
    )


def _model(cfg: DictConfig) -> LoadedModel:
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    log.info(
        "model %s on %s (%s)",
        cfg.model.kind if cfg.model.kind == "tiny" else cfg.model.path,
        device,
        dtype,
    )
    return load_model(
        cfg.model.kind, cfg.model.path, cfg.model.seed, cfg.model.variant, device, dtype
    )


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass
class SourceInversion:
    """What stage 4 hands to stage 5."""

    latents: torch.Tensor | None  #: inverted latents at unit scale; None with inversion=none
    store: MemoryStore  #: attention records of the source (empty without matching)


def _stopwatch(seconds: dict[str, float], name: str):
    start = time.perf_counter()
    return lambda: seconds.__setitem__(name, seconds.get(name, 0.0) + time.perf_counter() - start)


def invert_source(
    cfg: DictConfig,
    model: LoadedModel,
    clip: torch.Tensor,
    sigmas: torch.Tensor,
    seconds: dict[str, float],
) -> SourceInversion:
    """Stage 4: SARP, VAE encoding and EDM inversion of the clip (F, 3, h, w), recording the
    source's attention when matching is on."""
    am, store = cfg.attention_matching, MemoryStore(dtype=model.dtype)
    if cfg.inversion.method == "none":
        return SourceInversion(None, store)
    done = _stopwatch(seconds, "sarp")
    if cfg.sarp.enabled:
        clip = sarp(clip, cfg.sarp.noise_scale, cfg.sarp.threshold, _generator(cfg.seed))
    done()
    done = _stopwatch(seconds, "inversion")
    pipe = model.pipe
    latents = encode_video(pipe, clip, cfg.model.decode_chunk_size)
    params = ConditioningParams(**cfg.conditioning)
    cond = encode_condition(pipe, clip[:1], params, len(clip), _generator(cfg.seed), guided=False)
    recorder = AttentionRecorder(store) if am.enabled else AttentionController()
    with (
        controlled_attention(model.unet, recorder),
        step_progress("inversion", cfg.num_steps) as advance,
    ):
        inverted = edm_invert(
            model.unet,
            latents,
            cond,
            sigmas,
            recorder,
            extra_record=am.pairing == "exact",
            on_step=advance,
        )
    done()
    if am.enabled:
        log.info("attention records: %.1f MB per step", store.nbytes(0) / 1e6)
    return SourceInversion(inverted, store)


def edit_clip(
    cfg: DictConfig,
    model: LoadedModel,
    image: torch.Tensor,
    keyframe: Keyframe,
    source: SourceInversion,
    sigmas: torch.Tensor,
    latent_shape: tuple[int, ...],
) -> torch.Tensor:
    """Stage 5: guided sampling of one edit (first frame ``image``, (1, 3, h, w)), from the
    inverted latents and with the source's attention matched. Returns clean latents."""
    am, pipe, n = cfg.attention_matching, model.pipe, cfg.num_steps
    params = ConditioningParams(**cfg.conditioning)
    num_frames = latent_shape[1]
    cond = encode_condition(pipe, image, params, num_frames, _generator(cfg.seed), guided=True)
    start = source.latents
    if start is None:
        start = torch.randn(latent_shape, generator=_generator(cfg.seed)).to(model.device)
    controller = None
    if am.enabled:
        matching = MatchingParams(
            num_steps=n,
            beta=keyframe.beta,
            mask_thr=keyframe.mask_thr,
            spatial_steps=am.spatial_self_replace_steps,
            temporal_steps=am.temporal_self_replace_steps,
            frames_per_chunk=am.spatial_attention_chunk_size,
            pairing=am.pairing,
        )
        controller = AttentionMatcher(source.store, matching)
    with (
        controlled_attention(model.unet, controller or AttentionController()),
        step_progress(f"edit {keyframe.stem}", n) as advance,
    ):
        guidance = guidance_scales(params, num_frames)
        return sample(model.unet, start, cond, sigmas, guidance, controller, on_step=advance)


def run_edit(cfg: DictConfig, model: LoadedModel | None = None) -> EditResult:
    """Edit one clip of the source video once per keyframe; returns the paths written.

    ``model`` lets a caller (tests, a long-lived app) pass components already loaded.
    """
    validate_edit_config(cfg)  # 1
    inputs = read_inputs(cfg)  # 2
    target_hw = (int(cfg.data.output_res[0]), int(cfg.data.output_res[1]))
    plan = ResolutionPlan.build(tuple(inputs.frames.shape[1:3]), target_hw, cfg.data.pad_to_fit)
    keyframe_plans = [
        ResolutionPlan.build(tuple(k.image.shape[:2]), target_hw, cfg.data.pad_to_fit)
        for k in inputs.keyframes
    ]
    seconds: dict[str, float] = {}
    done = _stopwatch(seconds, "load")
    model = model or _model(cfg)  # 3
    done()

    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / CONFIG_NAME
    config_path.write_text(OmegaConf.to_yaml(cfg, resolve=True))

    pipe = model.pipe
    sigmas = karras_sigmas(pipe, cfg.num_steps)
    scale = pipe.vae_scale_factor
    latent_shape = (
        1,
        len(inputs.frames),
        model.unet.config.out_channels,
        target_hw[0] // scale,
        target_hw[1] // scale,
    )
    edited = []
    with torch.inference_mode():
        clip = plan.forward(to_model_frames(inputs.frames)).to(model.device)
        source = invert_source(cfg, model, clip, sigmas, seconds)  # 4
        for keyframe, keyframe_plan in zip(inputs.keyframes, keyframe_plans, strict=True):
            done = _stopwatch(seconds, "sampling")
            image = keyframe_plan.forward(to_model_frames(keyframe.image[None])).to(model.device)
            latents = edit_clip(cfg, model, image, keyframe, source, sigmas, latent_shape)  # 5
            done()
            done = _stopwatch(seconds, "decode")  # 6
            frames = decode_video(pipe, latents, cfg.model.decode_chunk_size).cpu()
            path = out_dir / f"{keyframe.stem}.mp4"
            edited.append(write_video(path, to_uint8_frames(plan.inverse(frames)), inputs.fps))
            done()
            log.info("wrote %s", path)
        source_path = write_video(out_dir / SOURCE_NAME, inputs.frames, inputs.fps)
    log.info("seconds per stage: %s", ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    return EditResult(out_dir, edited, source_path, config_path, seconds, source.store.nbytes(0))
