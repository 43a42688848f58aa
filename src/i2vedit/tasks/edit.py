"""The edit task: a pure function of the config that returns what it wrote.

``run_edit`` runs these stages, numbered as in docs/ARCHITECTURE.md:
1 check the config and 2 read the inputs and plan every clip (``tasks.plan``; no model yet),
3 load the model (unless every edit is cached) and write the resolved config, then per clip
4 invert the source clip and 5 sample each edit with the source's attention matched and
6 decode it (the per-clip stages are ``i2vedit.runner``'s), 7 join each edit's clips and write
the videos and last frames (``tasks.chain``), 8 metrics and the run record.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from i2vedit.attention.store import MemoryStore, store_from_tensors, store_to_tensors
from i2vedit.cache import MANIFEST, TensorEntry, write_manifest
from i2vedit.config import long_video_mode
from i2vedit.core.edm import karras_sigmas
from i2vedit.core.lora import load_lora, remove_lora
from i2vedit.data.resize import ResolutionPlan, to_model_frames
from i2vedit.data.video import read_video_frames, write_video
from i2vedit.files import write_json, write_text
from i2vedit.masks import composite, feather, latent_weights
from i2vedit.metrics import evaluate
from i2vedit.models.registry import model_kind
from i2vedit.models.svd import LoadedModel, load_model
from i2vedit.outputs import (
    CONFIG_NAME,
    METRICS_NAME,
    RUN_NAME,
    SOURCE_NAME,
    edited_name,
    last_frame_name,
    mask_name,
)
from i2vedit.runner import (
    CacheLog,
    KeyValues,
    SourceInversion,
    choose_store,
    decode_clip,
    edit_clip,
    edit_condition,
    invert_clip,
    matching_params,
    stopwatch,
)
from i2vedit.sampling.sampler import Preservation
from i2vedit.tasks.chain import ChainLink, join_clips, link_from_tensors, save_last_frame
from i2vedit.tasks.inputs import EditInputs, Keyframe
from i2vedit.tasks.plan import ClipPlan, PreparedEdit, prepare_edit, show_plan

log = logging.getLogger(__name__)


@dataclass
class EditResult:
    output_dir: Path
    edited: list[Path]  #: one video per keyframe, in keyframe order
    source: Path  #: the selected clips' resampled source frames, overlaps once
    config: Path
    plan: list[ClipPlan] = field(default_factory=list)
    #: per keyframe stem, per clip: the clip's frames at the source resolution (uint8)
    clip_frames: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    record_bytes_per_step: int = 0
    last_frames: list[Path] = field(default_factory=list)  #: per keyframe, to continue later
    cache: CacheLog = field(default_factory=CacheLog)
    #: per keyframe stem, the edit's metrics (empty with metrics.enabled=false)
    metrics: dict[str, dict] = field(default_factory=dict)
    metrics_path: Path | None = None
    run_path: Path | None = None  #: run.json: seconds, cache hits and computations, metrics
    #: per keyframe stem of a masked edit, its ``<stem>_mask.mp4`` (the masks it used)
    masks: dict[str, Path] = field(default_factory=dict)

    @property
    def written(self) -> list[Path]:
        extra = [p for p in (self.metrics_path, self.run_path) if p is not None]
        masks = list(self.masks.values())
        return [*self.edited, *masks, self.source, self.config, *self.last_frames, *extra]


def run_edit(
    cfg: DictConfig, model: LoadedModel | None = None, prepared: PreparedEdit | None = None
) -> EditResult:
    """Edit the selected clips of the source video once per keyframe, clip after clip, each
    clip conditioned on the previous clip's last edited frame; returns what it wrote.

    ``model`` lets a caller (tests, a long-lived app) pass components already loaded, and
    ``prepared`` the ``prepare_edit`` of the same config (the app shows its plan first).
    """
    started = time.perf_counter()
    prepared = prepared or prepare_edit(cfg, model)  # 1 check the config, 2 read and plan
    prepared.inputs.source.log_summary()
    show_plan(cfg, prepared.inputs, prepared.plans)
    run = EditRun.start(cfg, prepared, model)  # 3 the model, unless every edit is cached
    for index, clip_plan in enumerate(prepared.plans):
        run.edit(clip_plan, first=index == 0)  # 4 invert, 5 sample, 6 decode
    result = run.write_videos()  # 7 each edit's clips joined, its last frame saved
    if cfg.metrics.enabled:  # 8 metrics and the run record
        done = stopwatch(result.seconds, "metrics")
        result.metrics = edit_metrics(cfg, prepared.inputs, result)
        result.metrics_path = write_json(result.output_dir / METRICS_NAME, result.metrics)
        done()
    shown = ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items())
    log.info("seconds per stage: %s", shown)
    total = time.perf_counter() - started
    result.run_path = write_run_record(cfg, prepared.inputs, result, total)
    return result


@dataclass
class EditRun:
    """One ``run_edit`` across its clips: the model, the resolution plans, each edit's chain
    (the last edited frame that conditions its next clip) and written clips, and clip 0's keys
    and values for skip-interval attention."""

    cfg: DictConfig
    prepared: PreparedEdit
    model: LoadedModel | None
    out_dir: Path
    config_path: Path
    resolution: ResolutionPlan  #: source frames <-> the model's resolution
    keyframe_resolutions: dict[str, ResolutionPlan]  #: per keyframe stem
    seconds: dict[str, float]
    cache_log: CacheLog = field(default_factory=CacheLog)
    chains: dict[str, ChainLink] = field(default_factory=dict)  #: per keyframe stem
    outputs: dict[str, list[torch.Tensor]] = field(default_factory=dict)  #: written clips
    source_kv: MemoryStore | None = None  #: skip-interval: clip 0's source keys and values
    edit_kv: dict[str, MemoryStore] = field(default_factory=dict)  #: ... and each edit's
    backend: str | None = None  #: the attention store, chosen once the model is there
    record_bytes: int = 0

    @classmethod
    def start(cls, cfg: DictConfig, prepared: PreparedEdit, model: LoadedModel | None):
        """Load the model unless every edit is cached, then write the resolved config."""
        inputs, plans, seconds = prepared.inputs, prepared.plans, {}
        cached = all((e.folder / MANIFEST).is_file() for p in plans for e in p.edits.values())
        if model is None and not cached:
            done = stopwatch(seconds, "load")
            model = _load(cfg, prepared.device, prepared.dtype)
            done()
        out_dir = Path(cfg.output_dir)
        config_path = write_text(out_dir / CONFIG_NAME, OmegaConf.to_yaml(cfg, resolve=True))
        target = (int(cfg.data.output_res[0]), int(cfg.data.output_res[1]))
        resolution = ResolutionPlan.build(
            tuple(inputs.source.clips[0].frames.shape[1:3]), target, cfg.data.pad_to_fit
        )
        keyframe_resolutions = {
            k.stem: ResolutionPlan.build(tuple(k.image.shape[:2]), target, cfg.data.pad_to_fit)
            for k in inputs.keyframes
        }
        skip = long_video_mode(cfg) == "skip_interval"  # clips k > 0 also attend to clip 0
        return cls(
            cfg,
            prepared,
            model,
            out_dir,
            config_path,
            resolution,
            keyframe_resolutions,
            seconds,
            chains={
                stem: link_from_tensors(t, prepared.device) for stem, t in inputs.continued.items()
            },
            outputs={k.stem: [] for k in inputs.keyframes},
            source_kv=MemoryStore() if skip else None,
            edit_kv={k.stem: MemoryStore() for k in inputs.keyframes} if skip else {},
        )

    @property
    def skip(self) -> bool:
        return self.source_kv is not None

    def take_cached(self, plan: ClipPlan, first: bool, keyframe: Keyframe, cached) -> bool:
        """Use the cached edit of a clip, if it is there (and holds what is needed)."""
        if cached is None or (self.skip and first and "kv" not in cached):
            return False
        self.cache_log.hit(plan.edits[keyframe.stem])
        if self.skip and first:
            store_from_tensors(cached["kv"], self.prepared.device, self.edit_kv[keyframe.stem])
        if plan.anchor:
            return True  # clip 0 before a later start: only its keys and values are wanted
        written = cached["frames"]["frames"]
        overlay = self.cfg.data.overlay_size
        self.chains[keyframe.stem] = link_from_tensors(
            {**cached["link"], "frames": written[len(written) - overlay :]}, self.prepared.device
        )
        self.outputs[keyframe.stem].append(written)
        return True

    def edit(self, plan: ClipPlan, first: bool) -> None:
        """Stages 4-6 for one clip: what the cache does not hold is computed."""
        keyframes = self.prepared.inputs.keyframes
        pending = [
            k for k in keyframes if not self.take_cached(plan, first, k, plan.edits[k.stem].load())
        ]
        later = [e for p in self.prepared.plans[1:] for e in p.edits.values()]
        later_pending = not all((e.folder / MANIFEST).is_file() for e in later)
        if not pending and not (self.skip and first and later_pending):
            return
        frames = len(plan.clip.frames)
        sigmas = karras_sigmas(self.model.pipe, self.cfg.num_steps)
        scale = self.model.pipe.vae_scale_factor
        res = self.cfg.data.output_res
        h, w = int(res[0]) // scale, int(res[1]) // scale
        latent_shape = (1, frames, self.model.unet.config.out_channels, h, w)
        if self.backend is None:
            self.backend, why = choose_store(self.cfg, self.model, frames, (h, w))
            if self.cfg.attention_matching.enabled:
                log.info("attention store: %s (%s)", self.backend, why)
        self.train_lora(plan)
        masked = not plan.anchor and any(k.mask is not None for k in pending)
        with torch.inference_mode():
            source = self.invert(plan, first, sigmas, masked)  # 4
            try:
                if plan.lora is not None:  # inversion never runs with the LoRA
                    load_lora(self.model.unet, plan.lora.checkpoint, self.cfg.lora.scale)
                    log.info(
                        "motion LoRA: loaded %s (scale %g)",
                        plan.lora.checkpoint,
                        self.cfg.lora.scale,
                    )
                for keyframe in pending:
                    self.edit_keyframe(plan, first, keyframe, source, sigmas, latent_shape)
            finally:
                if plan.lora is not None:
                    remove_lora(self.model.unet)
                source.close()

    def train_lora(self, plan: ClipPlan) -> None:
        """The clip's motion LoRA: trained first when missing, else taken from the cache."""
        if plan.lora is None:
            return
        if not plan.lora.train:
            self.cache_log.hit(plan.lora.checkpoint)
            return
        done = stopwatch(self.seconds, "train")
        trained = _train_missing(self.cfg, self.model, self.prepared.inputs, plan, self.out_dir)
        done()
        (self.cache_log.compute if trained else self.cache_log.hit)(plan.lora.checkpoint)

    def invert(
        self, plan: ClipPlan, first: bool, sigmas: torch.Tensor, masked: bool = False
    ) -> SourceInversion:
        """Stage 4: the clip's inversion (from the cache, or computed once), with its
        trajectory when an edit of the clip is ``masked`` (latent preservation)."""
        frames = self.resolution.forward(to_model_frames(plan.clip.frames))
        kv = KeyValues(capture=self.source_kv) if first else KeyValues(extra=self.source_kv)
        source = invert_clip(
            self.cfg,
            self.model,
            frames.to(self.model.device),
            sigmas,
            self.seconds,
            plan.inversion,
            kv if self.skip else None,
            self.backend,
            self.cache_log,
            masked,
        )
        self.record_bytes = max(self.record_bytes, source.store.nbytes(0))
        return source

    def edit_keyframe(
        self,
        plan: ClipPlan,
        first: bool,
        keyframe: Keyframe,
        source: SourceInversion,
        sigmas: torch.Tensor,
        latent_shape: tuple[int, ...],
    ) -> None:
        """Stages 5 and 6 for one edit of one clip, computed once (other jobs wanting the same
        entry wait, then load it)."""
        entry = plan.edits[keyframe.stem]
        with entry.locked():
            if self.take_cached(plan, first, keyframe, entry.load()):
                return  # edited meanwhile by the job we waited for
            link = None if plan.anchor else self.chains.get(keyframe.stem)
            new_link, written = self._sample_and_decode(
                plan, first, keyframe, link, source, sigmas, latent_shape, entry
            )
        if not plan.anchor:
            self.chains[keyframe.stem] = new_link
            self.outputs[keyframe.stem].append(written)

    def _sample_and_decode(
        self,
        plan: ClipPlan,
        first: bool,
        keyframe: Keyframe,
        link: ChainLink | None,
        source: SourceInversion,
        sigmas: torch.Tensor,
        latent_shape: tuple[int, ...],
        entry: TensorEntry,
    ) -> tuple[ChainLink, torch.Tensor]:
        cfg, model, overlay = self.cfg, self.model, self.cfg.data.overlay_size
        done = stopwatch(self.seconds, "sampling")
        frames = latent_shape[1]
        if link is None:  # the first clip: the edited first frame
            image = self.keyframe_resolutions[keyframe.stem].forward(
                to_model_frames(keyframe.image[None])
            )
            cond = edit_condition(cfg, model, image.to(model.device), frames)
        else:  # later clips: the previous clip's last edited frame, and its latent
            cond = edit_condition(cfg, model, link.image, frames, link.latent)
        own = self.edit_kv.get(keyframe.stem)
        kv = KeyValues(capture=own) if first else KeyValues(extra=own)
        masks = self.clip_masks(plan, keyframe)
        latents = edit_clip(  # 5
            cfg,
            model,
            matching_params(cfg, keyframe.beta, keyframe.mask_thr),
            cond,
            source,
            sigmas,
            latent_shape,
            f"edit {keyframe.stem}, clip {plan.clip.clip_id}",
            kv if self.skip else None,
            None if masks is None else self.preservation(masks, source, latent_shape),
        )
        done()
        done = stopwatch(self.seconds, "decode")  # 6
        decoded, written = decode_clip(cfg, model, latents, self.resolution)
        last = decoded[-1:]
        if masks is not None:  # outside the feathered mask, exactly the source's pixels
            written = composite(written, plan.clip.frames, feather(masks, cfg.data.mask_feather))
            last = self.resolution.forward(to_model_frames(written[-1:])).to(last)
        if link is not None and overlay:  # the shared frames: exactly the previous clip's
            written[:overlay] = link.frames
        new_link = ChainLink(last, latents[0, -1:], written[len(written) - overlay :])
        files = {
            "frames": {"frames": written},
            "link": {"image": new_link.image, "latent": new_link.latent},
        }
        if self.skip and first:
            files["kv"] = store_to_tensors(self.edit_kv[keyframe.stem])
        entry.save(files)
        self.cache_log.compute(entry)
        done()
        return new_link, written

    def clip_masks(self, plan: ClipPlan, keyframe: Keyframe) -> np.ndarray | None:
        """The edit's masks (F, H, W) over the clip's frames; None: unmasked (or an anchor)."""
        if keyframe.mask is None or plan.anchor:
            return None
        return keyframe.mask.frames[plan.mask_start : plan.mask_start + len(plan.clip.frames)]

    def preservation(
        self, masks: np.ndarray, source: SourceInversion, latent_shape: tuple[int, ...]
    ) -> Preservation | None:
        """Latent preservation of a masked edit: the first ``data.mask_preserve`` of the steps
        keep the source's inversion trajectory outside the latent-resolution mask."""
        steps = int(self.cfg.data.mask_preserve * self.cfg.num_steps)
        if source.trajectory is None:
            log.warning("no inversion trajectory (inversion.method=none): compositing only")
            return None
        scale = self.model.pipe.vae_scale_factor
        weights = latent_weights(masks, self.resolution, scale)[None]
        assert weights.shape[-2:] == latent_shape[-2:], (weights.shape, latent_shape)
        return Preservation(weights.to(self.model.device), source.trajectory, steps)

    def write_masks(self) -> dict[str, Path]:
        """Each masked edit's masks, one per frame of its video, as ``<stem>_mask.mp4``
        (white: the edit region; a video a later run can take as ``data.mask_paths``)."""
        inputs, overlay = self.prepared.inputs, self.cfg.data.overlay_size
        written = {}
        for keyframe in inputs.keyframes:
            if keyframe.mask is None:
                continue
            frames = keyframe.mask.frames[overlay if inputs.continued else 0 :]
            video = np.repeat(frames[..., None], 3, -1).astype(np.uint8) * 255
            path = write_video(self.out_dir / mask_name(keyframe.stem), video, inputs.fps)
            log.info("wrote %s (%s mask, %d frames)", path, keyframe.mask.kind, len(video))
            written[keyframe.stem] = path
        return written

    def write_videos(self) -> EditResult:
        """Stage 7: each edit's clips joined without repeating shared frames, written with its
        last frame (to continue later), and the source's frames the same way."""
        inputs, plans = self.prepared.inputs, self.prepared.plans
        overlay, continued = self.cfg.data.overlay_size, bool(inputs.continued)
        edited, last_frames = [], []
        for keyframe in inputs.keyframes:
            video = join_clips(self.outputs[keyframe.stem], overlay, continued)
            edited.append(write_video(self.out_dir / edited_name(keyframe.stem), video, inputs.fps))
            log.info("wrote %s (%d frames)", edited[-1], len(video))
            last_frames.append(self.out_dir / last_frame_name(keyframe.stem))
            save_last_frame(last_frames[-1], self.chains[keyframe.stem], plans[-1].clip.clip_id)
        source_clips = [c.clip.frames for c in plans if not c.anchor]
        source_video = join_clips(source_clips, overlay, continued)
        source_path = write_video(self.out_dir / SOURCE_NAME, source_video, inputs.fps)
        result = EditResult(
            self.out_dir,
            edited,
            source_path,
            self.config_path,
            plans,
            self.outputs,
            self.seconds,
            self.record_bytes,
            last_frames,
            self.cache_log,
        )
        result.masks = self.write_masks()
        return result


def _load(cfg: DictConfig, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    name = cfg.model.path if model_kind(cfg.model.kind).named_by_path else cfg.model.kind
    log.info("model %s on %s (%s)", name, device, dtype)
    m = cfg.model
    return load_model(m.kind, m.path, m.seed, m.variant, device, dtype, cfg.compile)


def _train_missing(cfg, model, inputs: EditInputs, plan: ClipPlan, out_dir: Path) -> bool:
    """Train the clip's LoRA; False if another job trained it meanwhile (waited for)."""
    from i2vedit.tasks.train import train_clip  # Lightning loads only when training

    write_manifest(plan.lora.clip_dir.parent, "motion-lora", plan.lora.inputs)
    first = inputs.keyframes[0].path
    run_dir = out_dir / "train"
    trained: list[int] = []
    train_clip(
        cfg,
        model,
        plan.clip,
        plan.lora.clip_dir,
        plan.lora.precision,
        run_dir,
        first,
        inputs.fps,
        first_clip=inputs.source.first_clip,
        trained=trained,
    )
    return bool(trained)


def edit_metrics(cfg: DictConfig, inputs: EditInputs, result: EditResult) -> dict[str, dict]:
    """Per keyframe, the metrics of the written edit against the written source (decoded from
    the files, so ``i2vedit-eval`` on the same files gives the same numbers)."""
    m = cfg.metrics
    source = read_video_frames(result.source, "source")
    out = {}
    for keyframe, path in zip(inputs.keyframes, result.edited, strict=True):
        mask = keyframe.mask
        used = None  # unmasked: preservation outside the difference of the first frames
        if mask is not None:
            used = mask.frames[cfg.data.overlay_size if inputs.continued else 0 :]
        out[keyframe.stem] = evaluate(
            read_video_frames(path, "edited"),
            source,
            keyframe.image,
            used,
            clip_path=m.clip_path,
            flow=m.flow,
            raft_weights=m.raft_weights,
            mask_threshold=m.mask_threshold,
        )
        if mask is not None:  # which mask preservation_psnr was measured outside of
            out[keyframe.stem].update(mask_source=mask.kind, mask=mask_name(keyframe.stem))
        shown = ", ".join(
            f"{k} {v:.4g}" for k, v in out[keyframe.stem].items() if isinstance(v, float)
        )
        log.info("metrics of %s: %s", keyframe.stem, shown)
    return out


def job_overrides() -> list[str]:
    """The command-line overrides of this Hydra job ([] outside Hydra, e.g. in tests)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def write_run_record(
    cfg: DictConfig, inputs: EditInputs, result: EditResult, total_seconds: float
) -> Path:
    """``run.json``: what this run did, for sweep reports (one per job)."""
    record = {
        "status": "ok",
        "overrides": job_overrides(),
        "seconds": {**result.seconds, "total": total_seconds},
        "cache_hits": result.cache.hits,
        "computed": result.cache.computed,
        "edits": {
            keyframe.stem: {
                "video": path.name,
                "beta": list(keyframe.beta),
                "mask_thr": list(keyframe.mask_thr),
                **({} if keyframe.mask is None else {"mask": keyframe.mask.spec}),
                "metrics": result.metrics.get(keyframe.stem, {}),
            }
            for keyframe, path in zip(inputs.keyframes, result.edited, strict=True)
        },
    }
    return write_json(result.output_dir / RUN_NAME, record)  # atomic JSON, NaN as null
