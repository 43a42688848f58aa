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
from i2vedit.cache import write_manifest
from i2vedit.config import validate_edit_config
from i2vedit.data.resize import ResolutionPlan, to_model_frames, to_uint8_frames
from i2vedit.data.video import load_image, write_video
from i2vedit.errors import InputError
from i2vedit.inversion.edm import edm_invert
from i2vedit.inversion.sarp import sarp
from i2vedit.models.device import precision_of, resolve_device, resolve_dtype
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
from i2vedit.tasks.source import Clip, Source, lora_root, read_source
from i2vedit.training.lora import load_lora, remove_lora
from i2vedit.training.module import checkpoint_steps

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

    source: Source
    clip: Clip  #: the clip to edit: its sampled source frames
    keyframes: list[Keyframe]
    fps: float  #: output frame rate

    @property
    def frames(self) -> torch.Tensor:
        return self.clip.frames

    @property
    def video_path(self) -> Path:
        return self.source.video_path


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
    source = read_source(cfg)
    (clip,) = source.clips
    am = cfg.attention_matching
    keyframes = []
    for i, path in enumerate(source.keyframe_paths):
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
    return EditInputs(source, clip, keyframes, source.fps)


@dataclass
class LoraPlan:
    """Which motion-LoRA checkpoint the edit loads, and whether it must be trained first."""

    clip_dir: Path
    checkpoint: Path
    train: bool
    precision: str
    inputs: dict


def plan_lora(cfg: DictConfig, inputs: EditInputs, dtype: torch.dtype) -> LoraPlan | None:
    """Find the requested checkpoint before any model loads; refuse what cannot exist."""
    lora = cfg.lora
    if lora.checkpoint is None:
        return None
    precision = precision_of(dtype)
    root, key_inputs = lora_root(cfg, inputs.video_path, precision)
    clip_dir = root / f"clip_{inputs.clip.clip_id}"
    step = int(lora.checkpoint)
    checkpoint = clip_dir / f"checkpoint-{step}"
    existing = checkpoint_steps(clip_dir)
    if step in existing:
        return LoraPlan(clip_dir, checkpoint, False, precision, key_inputs)
    trainable = step <= lora.max_steps and step % lora.checkpoint_every == 0
    if lora.train_if_missing and trainable:
        return LoraPlan(clip_dir, checkpoint, True, precision, key_inputs)
    listed = ", ".join(f"checkpoint-{s}" for s in existing) or "none"
    if lora.train_if_missing:
        reason = (
            f"training saves every lora.checkpoint_every={lora.checkpoint_every} steps up to "
            f"lora.max_steps={lora.max_steps}, so {checkpoint} will never exist; existing: {listed}"
        )
    else:
        reason = f"missing {checkpoint} (lora.train_if_missing=false); existing: {listed}"
    raise InputError("lora.checkpoint", step, reason)


def _model(cfg: DictConfig, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    name = "tiny" if cfg.model.kind == "tiny" else cfg.model.path
    log.info("model %s on %s (%s)", name, device, dtype)
    m = cfg.model
    return load_model(m.kind, m.path, m.seed, m.variant, device, dtype)


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
    device = model.device if model is not None else resolve_device(cfg.device)
    dtype = model.dtype if model is not None else resolve_dtype(cfg.dtype, device)
    lora_plan = plan_lora(cfg, inputs, dtype)
    inputs.source.log_summary()
    seconds: dict[str, float] = {}
    done = _stopwatch(seconds, "load")
    model = model or _model(cfg, device, dtype)  # 3
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
    if lora_plan is not None and lora_plan.train:
        done = _stopwatch(seconds, "train")
        from i2vedit.tasks.train import train_clip  # Lightning loads only when training

        write_manifest(lora_plan.clip_dir.parent, "motion-lora", lora_plan.inputs)
        first = inputs.keyframes[0].path
        train_clip(
            cfg,
            model,
            inputs.clip,
            lora_plan.clip_dir,
            lora_plan.precision,
            out_dir / "train",
            first,
            inputs.fps,
        )
        done()
    edited = []
    with torch.inference_mode():
        clip = plan.forward(to_model_frames(inputs.frames)).to(model.device)
        source = invert_source(cfg, model, clip, sigmas, seconds)  # 4 (never with the LoRA)
        if lora_plan is not None:
            load_lora(model.unet, lora_plan.checkpoint, cfg.lora.scale)
            log.info("motion LoRA: loaded %s (scale %g)", lora_plan.checkpoint, cfg.lora.scale)
        try:
            for keyframe, keyframe_plan in zip(inputs.keyframes, keyframe_plans, strict=True):
                done = _stopwatch(seconds, "sampling")
                image = keyframe_plan.forward(to_model_frames(keyframe.image[None])).to(
                    model.device
                )
                latents = edit_clip(cfg, model, image, keyframe, source, sigmas, latent_shape)  # 5
                done()
                done = _stopwatch(seconds, "decode")  # 6
                frames = decode_video(pipe, latents, cfg.model.decode_chunk_size).cpu()
                path = out_dir / f"{keyframe.stem}.mp4"
                edited.append(write_video(path, to_uint8_frames(plan.inverse(frames)), inputs.fps))
                done()
                log.info("wrote %s", path)
        finally:
            if lora_plan is not None:
                remove_lora(model.unet)
        source_path = write_video(out_dir / SOURCE_NAME, inputs.frames, inputs.fps)
    log.info("seconds per stage: %s", ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    return EditResult(out_dir, edited, source_path, config_path, seconds, source.store.nbytes(0))
