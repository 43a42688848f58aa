"""The training task: a motion LoRA per selected clip, checkpointed into the artifact cache.

Also called by the edit task when the LoRA it asks for is missing (``lora.train_if_missing``).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from i2vedit.cache import EntryLock, write_manifest
from i2vedit.config import long_video_mode, validate_train_config
from i2vedit.core.edm import (
    Condition,
    ConditioningParams,
    decode_video,
    encode_condition,
    encode_video,
    guidance_scales,
    karras_sigmas,
    seeded_generator,
)
from i2vedit.core.lora import motion_lora_config, remove_lora
from i2vedit.data.resize import ResolutionPlan, to_model_frames, to_uint8_frames
from i2vedit.data.video import load_image, write_video
from i2vedit.files import write_text
from i2vedit.inversion.edm import edm_invert
from i2vedit.models.device import PRECISION_DTYPES, resolve_device, resolve_precision
from i2vedit.models.svd import LoadedModel, load_model
from i2vedit.outputs import CONFIG_NAME
from i2vedit.progress import CONSOLE
from i2vedit.sampling.sampler import sample
from i2vedit.tasks.keys import lora_root
from i2vedit.tasks.source import Clip, read_source
from i2vedit.training.module import (
    RESUME_NAME,
    AnchorClip,
    LoRACheckpoint,
    MotionLoRAModule,
    NoiseDraw,
    OneClipDataModule,
    StepReport,
    checkpoint_steps,
)

log = logging.getLogger(__name__)
# Lightning's own use of a torch API it has not caught up with; nothing a user can act on.
warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=DeprecationWarning)
# Every item of the one-clip dataloader is the same clip: where a resumed run restarts it is moot.
warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")


@dataclass
class TrainResult:
    clip_dirs: dict[int, Path] = field(default_factory=dict)  #: clip id -> its checkpoint folder
    checkpoints: dict[int, list[int]] = field(default_factory=dict)  #: clip id -> steps saved
    trained: list[int] = field(default_factory=list)  #: clips trained now (not cache hits)


class PreviewCallback(L.Callback):
    """Every ``every`` steps: sample from the inverted latents with the edited first frame and
    the LoRA being trained, and write the video into the run dir."""

    def __init__(self, every, pipe, inverted, cond, sigmas, guidance, plan, folder, fps) -> None:
        self.every, self.pipe, self.inverted, self.cond = every, pipe, inverted, cond
        self.sigmas, self.guidance, self.plan, self.folder, self.fps = (
            sigmas,
            guidance,
            plan,
            folder,
            fps,
        )
        self.last = -1

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.last or step % self.every or not trainer.is_global_zero:
            return
        self.last = step
        module.unet.eval()
        controller = module.kv_controller  # previews are plain chaining: no clip 0 attended
        extra = controller.kv_extra if controller is not None else None
        if controller is not None:
            controller.kv_extra = None
        with torch.no_grad():
            latents = sample(module.unet, self.inverted, self.cond, self.sigmas, self.guidance)
            frames = self.plan.inverse(decode_video(self.pipe, latents).cpu())
        if controller is not None:
            controller.kv_extra = extra
        module.unet.train()
        path = write_video(self.folder / f"step-{step}.mp4", to_uint8_frames(frames), self.fps)
        log.info("preview %s", path)


def _preview(
    cfg, model, clip_tensor, plan, keyframe_path, run_dir, clip_id, fps
) -> PreviewCallback:
    """Invert the clip once (without the LoRA) for the previews of its training."""
    pipe, params, n = model.pipe, ConditioningParams(**cfg.conditioning), cfg.lora.preview_steps
    frames = len(clip_tensor)
    sigmas = karras_sigmas(pipe, n)
    with torch.no_grad():
        source = encode_condition(
            pipe, clip_tensor[:1], params, frames, seeded_generator(cfg.seed), guided=False
        )
        inverted = edm_invert(model.unet, encode_video(pipe, clip_tensor), source, sigmas)
        image = load_image(keyframe_path)
        key_plan = ResolutionPlan.build(
            tuple(image.shape[:2]), tuple(clip_tensor.shape[-2:]), cfg.data.pad_to_fit
        )
        key = key_plan.forward(to_model_frames(image[None])).to(model.device)
        cond = encode_condition(pipe, key, params, frames, seeded_generator(cfg.seed), guided=True)
    folder = Path(run_dir) / "preview" / f"clip_{clip_id}"
    return PreviewCallback(
        cfg.lora.preview_every,
        pipe,
        inverted,
        cond,
        sigmas,
        guidance_scales(params, frames),
        plan,
        folder,
        fps,
    )


def train_clip(
    cfg: DictConfig,
    model: LoadedModel,
    clip: Clip,
    clip_dir: Path,
    precision: str,
    run_dir: Path,
    keyframe_path: Path | None = None,
    fps: float = 7.0,
    draw: NoiseDraw | None = None,
    callbacks: list[L.Callback] | None = None,
    first_clip: Clip | None = None,
    trained: list[int] | None = None,
) -> list[int]:
    """Train (or resume) the motion LoRA of one clip up to ``lora.max_steps``; returns the
    checkpoint steps present afterwards (and appends the clip's id to ``trained`` if this call
    trained it). The UNet is left exactly as it was.

    With ``long_video=skip_interval`` the temporal layers of a clip k > 0 also attend to the
    keys and values of ``first_clip`` (clip 0) at the same noise level.

    Trained once: a job that finds another job training the same clip waits for it (the lock
    ``.clip_<k>.lock`` beside ``clip_dir``), then takes its checkpoints."""
    args = (cfg, model, clip, clip_dir, precision, run_dir, keyframe_path, fps, draw, callbacks)
    if cfg.lora.max_steps not in checkpoint_steps(clip_dir):
        if rank_zero_only.rank != 0:  # a DDP rank: its rank 0 holds the lock for the job
            return _fit_clip(*args, first_clip)
        with EntryLock(clip_dir, f"motion LoRA of clip {clip.clip_id}"):
            if cfg.lora.max_steps not in checkpoint_steps(clip_dir):  # or trained meanwhile
                if trained is not None:
                    trained.append(clip.clip_id)
                return _fit_clip(*args, first_clip)
    log.info("cache hit: motion LoRA of clip %d (%s)", clip.clip_id, clip_dir)
    return checkpoint_steps(clip_dir)


def _fit_clip(
    cfg: DictConfig,
    model: LoadedModel,
    clip: Clip,
    clip_dir: Path,
    precision: str,
    run_dir: Path,
    keyframe_path: Path | None,
    fps: float,
    draw: NoiseDraw | None,
    callbacks: list[L.Callback] | None,
    first_clip: Clip | None,
) -> list[int]:
    """Train (or resume) the clip's LoRA: ``train_clip``'s work once the lock is held."""
    lora = cfg.lora
    existing = checkpoint_steps(clip_dir)
    unet = model.unet
    target = (int(lora.resolution[0]), int(lora.resolution[1]))
    plan = ResolutionPlan.build(tuple(clip.frames.shape[1:3]), target, cfg.data.pad_to_fit)
    frames, latents, cond, anchor = _encode_clip(cfg, model, clip, plan, first_clip)
    extra = list(callbacks or [])
    if lora.preview_every and keyframe_path is not None:
        extra.append(_preview(cfg, model, frames, plan, keyframe_path, run_dir, clip.clip_id, fps))
    resume = clip_dir / RESUME_NAME
    resume_from = resume if resume.is_file() else None
    if resume_from is not None:
        log.info("resuming clip %d from %s (checkpoints %s)", clip.clip_id, resume, existing)
    config = motion_lora_config(unet, lora.rank, lora.alpha, lora.dropout)
    module = MotionLoRAModule(
        unet,
        config,
        lora.lr,
        lora.weight_decay,
        cfg.seed,
        lora.checkpointing,
        draw,
        anchor,
    )
    trainer = _trainer(cfg, clip, clip_dir, precision, run_dir, extra)
    dm = OneClipDataModule(latents, cond, lora.max_steps * lora.accumulate_grad_batches)
    log.info(
        "training the motion LoRA of clip %d: %d steps at %dx%d, %s, checkpoints every %d into %s",
        clip.clip_id,
        lora.max_steps,
        *target,
        precision,
        lora.checkpoint_every,
        clip_dir,
    )
    try:
        trainer.fit(module, dm, ckpt_path=resume_from)
    finally:
        module.uninstall()  # done by the fit's end already; also if it never started
        remove_lora(unet)
        unet.eval()
        unet.requires_grad_(False)
        unet.to(model.device)
    steps = checkpoint_steps(clip_dir)
    if lora.max_steps in steps and resume.is_file():
        os.remove(resume)  # finished: the trainer state is no longer needed
    return steps


def _encode_clip(
    cfg: DictConfig,
    model: LoadedModel,
    clip: Clip,
    plan: ResolutionPlan,
    first_clip: Clip | None,
) -> tuple[torch.Tensor, torch.Tensor, Condition, AnchorClip | None]:
    """The clip at the training resolution: (frames, latents, its unguided condition, and with
    skip-interval attention for a clip k > 0, clip 0's latents and condition)."""
    pipe = model.pipe
    params = ConditioningParams(**cfg.conditioning)
    with torch.no_grad():
        frames = plan.forward(to_model_frames(clip.frames)).to(model.device)
        latents = encode_video(pipe, frames, cfg.model.decode_chunk_size)
        generator = seeded_generator(cfg.seed)
        cond = encode_condition(pipe, frames[:1], params, len(frames), generator, guided=False)
        if long_video_mode(cfg) != "skip_interval" or clip.clip_id == 0:
            return frames, latents, cond, None
        if first_clip is None:
            raise ValueError("skip-interval training of a later clip needs clip 0")
        anchor_frames = plan.forward(to_model_frames(first_clip.frames)).to(model.device)
        anchor = AnchorClip(
            encode_video(pipe, anchor_frames, cfg.model.decode_chunk_size),
            encode_condition(
                pipe,
                anchor_frames[:1],
                params,
                len(anchor_frames),
                seeded_generator(cfg.seed),
                False,
            ),
        )
    log.info("skip-interval attention: clip %d trains attending to clip 0", clip.clip_id)
    return frames, latents, cond, anchor


def _trainer(
    cfg: DictConfig,
    clip: Clip,
    clip_dir: Path,
    precision: str,
    run_dir: Path,
    callbacks: list[L.Callback],
) -> L.Trainer:
    """The Lightning trainer of one clip's LoRA: checkpoints into ``clip_dir``, step reports,
    CSV logs under ``run_dir``."""
    lora = cfg.lora
    return L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        strategy=cfg.trainer.strategy,
        num_nodes=cfg.trainer.num_nodes,
        precision=precision,
        max_steps=lora.max_steps,
        accumulate_grad_batches=lora.accumulate_grad_batches,
        logger=CSVLogger(run_dir / "logs", name=f"clip_{clip.clip_id}"),
        callbacks=[
            LoRACheckpoint(clip_dir, lora.checkpoint_every),
            StepReport(f"train clip {clip.clip_id}"),
            *callbacks,
        ]
        + ([RichProgressBar()] if CONSOLE.is_terminal else []),
        enable_progress_bar=CONSOLE.is_terminal,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        num_sanity_val_steps=0,
    )


def run_train(cfg: DictConfig, model: LoadedModel | None = None, **train_kwargs) -> TrainResult:
    """Train the motion LoRA of every selected clip (cache hits are skipped)."""
    validate_train_config(cfg)
    source = read_source(cfg)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.trainer.precision, device)
    root, inputs = lora_root(cfg, source.video_path, precision)
    source.log_summary()
    if model is None:
        model = load_model(
            cfg.model.kind,
            cfg.model.path,
            cfg.model.seed,
            cfg.model.variant,
            device,
            PRECISION_DTYPES[precision],
            cfg.compile,
        )
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / CONFIG_NAME, OmegaConf.to_yaml(cfg, resolve=True))
    write_manifest(root, "motion-lora", inputs)
    keyframe = source.keyframe_paths[0] if source.keyframe_paths else None
    result = TrainResult()
    for clip in source.clips:
        clip_dir = root / f"clip_{clip.clip_id}"
        steps = train_clip(
            cfg,
            model,
            clip,
            clip_dir,
            precision,
            run_dir,
            keyframe,
            source.fps,
            first_clip=source.first_clip,
            trained=result.trained,
            **train_kwargs,
        )
        result.clip_dirs[clip.clip_id] = clip_dir
        result.checkpoints[clip.clip_id] = steps
    return result
