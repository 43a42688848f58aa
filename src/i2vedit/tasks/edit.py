"""The edit task: a pure function of the config that returns what it wrote.

Stages (numbered as they run): 1 check the config, 2 read and check the inputs, 3 load the
model, 4 SARP and EDM inversion of the source clip with attention recording, 5 guided sampling
of each edit with attention matching, 6 decode and write.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from i2vedit.attention.control import (
    AttentionController,
    AttentionMatcher,
    AttentionRecorder,
    MatchingParams,
    controlled_attention,
)
from i2vedit.attention.layers import record_bytes_per_step
from i2vedit.attention.store import (
    RECORDS_DIR,
    AttentionStore,
    DiscardStore,
    DiskStore,
    MemoryStore,
    store_from_tensors,
    store_to_tensors,
)
from i2vedit.cache import MANIFEST, TensorEntry, content_digest, write_manifest
from i2vedit.config import validate_edit_config
from i2vedit.data.resize import ResolutionPlan, to_model_frames, to_uint8_frames
from i2vedit.data.video import load_image, read_video_frames, write_video
from i2vedit.errors import InputError
from i2vedit.inversion.edm import edm_invert, inversion_sigmas
from i2vedit.inversion.recompute import RecomputeStore
from i2vedit.inversion.sarp import sarp
from i2vedit.metrics import evaluate, write_metrics
from i2vedit.models.device import precision_of, resolve_device, resolve_dtype
from i2vedit.models.svd import LoadedModel, load_model, model_identity
from i2vedit.progress import CONSOLE, step_progress
from i2vedit.sampling.edm import (
    Condition,
    ConditioningParams,
    decode_video,
    encode_condition,
    encode_video,
    guidance_scales,
    karras_sigmas,
)
from i2vedit.sampling.sampler import sample
from i2vedit.tasks.source import Clip, Source, item_name, lora_root, read_source
from i2vedit.training.lora import load_lora, remove_lora
from i2vedit.training.module import checkpoint_steps

log = logging.getLogger(__name__)

SOURCE_NAME = "source.mp4"
CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.json"
RUN_NAME = "run.json"  #: what the run did (seconds, cache hits, metrics), read by sweep reports


@dataclass
class CacheLog:
    """Which artifacts a run took from the cache and which it computed (logged as it goes)."""

    hits: list[str] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)

    def hit(self, artifact: object) -> None:
        log.info("cache hit: %s", artifact)
        self.hits.append(str(artifact))

    def compute(self, artifact: object) -> None:
        self.computed.append(str(artifact))


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


@dataclass
class ClipPlan:
    """What the run will do for one clip (printed before any heavy work)."""

    clip: Clip
    lora: LoraPlan | None
    first_output_frame: int  #: index of its first new frame in the output video
    new_frames: int  #: frames it adds to the output (its overlap with the previous is dropped)
    inversion: TensorEntry | None = None  #: its cache entry
    edits: dict[str, TensorEntry] = field(default_factory=dict)  #: per keyframe stem
    #: clip 0 of a skip-interval run that starts later: edited (or taken from the cache) for
    #: its keys and values only, not part of the output
    anchor: bool = False


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

    @property
    def written(self) -> list[Path]:
        extra = [p for p in (self.metrics_path, self.run_path) if p is not None]
        return [*self.edited, self.source, self.config, *self.last_frames, *extra]


def read_inputs(cfg: DictConfig) -> EditInputs:
    """Decode and check the source video and keyframes (stage 2; no model needed)."""
    source = read_source(cfg)
    am = cfg.attention_matching
    keyframes = []
    for i, path in enumerate(source.keyframe_paths):
        own = am.per_edit[i] if i < len(am.per_edit) else None
        beta = own.beta if own is not None and own.beta is not None else am.beta
        mask_thr = own.mask_thr if own is not None and own.mask_thr is not None else am.mask_thr
        for key, used, shared in (("beta", beta, am.beta), ("mask_thr", mask_thr, am.mask_thr)):
            if list(used) != list(shared):  # e.g. a sweep over the shared value
                log.warning(
                    "%s: attention_matching.per_edit[%d].%s=%s wins over attention_matching.%s=%s",
                    Path(path).name,
                    i,
                    key,
                    list(used),
                    key,
                    list(shared),
                )
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


@dataclass
class LoraPlan:
    """Which motion-LoRA checkpoint a clip's edit loads, and whether it must be trained first."""

    clip_dir: Path
    checkpoint: Path
    train: bool
    precision: str
    inputs: dict


def plan_lora(cfg: DictConfig, video_path: Path, clip: Clip, dtype: torch.dtype) -> LoraPlan | None:
    """Find the requested checkpoint before any model loads; refuse what cannot exist."""
    lora = cfg.lora
    if lora.checkpoint is None:
        return None
    precision = precision_of(dtype)
    root, key_inputs = lora_root(cfg, video_path, precision)
    clip_dir = root / f"clip_{clip.clip_id}"
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


def plan_clips(
    cfg: DictConfig, inputs: EditInputs, identity: str, dtype: torch.dtype
) -> list[ClipPlan]:
    """Per clip: its LoRA, its cache entries and the frames it adds to the output (all known
    before any model loads)."""
    plans, position = [], 0
    source = inputs.source
    if cfg.long_video.mode == "skip_interval" and source.clips[0].clip_id > 0:
        first = source.first_clip  # its keys and values are attended to by every later clip
        lora = plan_lora(cfg, inputs.video_path, first, dtype)
        inversion = inversion_entry(cfg, inputs, first, identity, dtype)
        edits = {k.stem: edit_entry(cfg, inversion, k, lora, None) for k in inputs.keyframes}
        plans.append(ClipPlan(first, lora, 0, 0, inversion, edits, anchor=True))
    previous = {stem: digest for stem, digest in inputs.continued_digests.items()}
    for i, clip in enumerate(source.clips):
        new = len(clip.frames) - (cfg.data.overlay_size if i or inputs.continued else 0)
        lora = plan_lora(cfg, inputs.video_path, clip, dtype)
        inversion = inversion_entry(cfg, inputs, clip, identity, dtype)
        edits = {
            k.stem: edit_entry(cfg, inversion, k, lora, previous.get(k.stem))
            for k in inputs.keyframes
        }
        previous = {stem: entry.key for stem, entry in edits.items()}
        plans.append(ClipPlan(clip, lora, position, new, inversion, edits))
        position += new
    return plans


def _status(plan: ClipPlan) -> str:
    done = sum((e.folder / MANIFEST).is_file() for e in plan.edits.values())
    if done == len(plan.edits):
        return "edits cached"
    inversion = "cached" if (plan.inversion.folder / MANIFEST).is_file() else "compute"
    return f"{inversion}; {len(plan.edits) - done} edit(s) to sample"


def _frame_count(cfg: DictConfig, frames: int) -> str:
    """A clip's frame count in the plan, saying when it is shorter than data.chunk_size (the
    last clip of a video that does not divide evenly)."""
    return f"{frames} (short)" if frames < cfg.data.chunk_size else str(frames)


def plan_table(
    cfg: DictConfig, inputs: EditInputs, plans: list[ClipPlan]
) -> tuple[str, list[str], list[list[str]], str]:
    """The plan as (title, columns, rows, caption): what each clip covers and adds, and what
    is computed or reused (shown by the command line and by the app)."""
    source = inputs.source
    title = f"edit plan: {source.video_path.name}, {len(inputs.keyframes)} edit(s)"
    columns = [
        "clip",
        "source time (s)",
        "sampled",
        "frames",
        "output frames",
        "inversion / edits",
        "LoRA",
    ]
    rows = []
    for plan in plans:
        clip = plan.clip
        lora = (
            "none"
            if plan.lora is None
            else (
                f"train, then checkpoint-{cfg.lora.checkpoint}"
                if plan.lora.train
                else f"cached checkpoint-{cfg.lora.checkpoint}"
            )
        )
        shown = f"{plan.first_output_frame}-{plan.first_output_frame + plan.new_frames - 1}"
        rows.append(
            [
                str(clip.clip_id),
                f"{clip.times[0]:.2f} - {clip.times[-1]:.2f}",
                f"{clip.indices[0]}-{clip.indices[-1]}",
                _frame_count(cfg, len(clip.frames)),
                "none (attended to)" if plan.anchor else f"{shown} ({plan.new_frames})",
                _status(plan),
                lora,
            ]
        )
    total = sum(plan.new_frames for plan in plans)
    selected = sum(not plan.anchor for plan in plans)
    caption = (
        f"output: {total} frames at data.output_fps={inputs.fps:g} = {total / inputs.fps:.2f} s "
        f"per edit; {source.num_clips} clips in the video, {selected} selected"
    )
    return title, columns, rows, caption


def show_plan(cfg: DictConfig, inputs: EditInputs, plans: list[ClipPlan]) -> None:
    """The plan table on the console."""
    title, columns, rows, caption = plan_table(cfg, inputs, plans)
    table = Table(title=title, caption=caption)
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    CONSOLE.print(table)


def _model(cfg: DictConfig, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    name = cfg.model.path if cfg.model.kind == "pretrained" else cfg.model.kind
    log.info("model %s on %s (%s)", name, device, dtype)
    m = cfg.model
    return load_model(m.kind, m.path, m.seed, m.variant, device, dtype)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass
class SourceInversion:
    """What stage 4 hands to stage 5."""

    latents: torch.Tensor | None  #: inverted latents at unit scale; None with inversion=none
    store: AttentionStore  #: the source's attention records (or their recomputation)
    scratch: Path | None = None  #: records written outside the cache, removed by ``close``

    def close(self) -> None:
        if isinstance(self.store, DiskStore):
            self.store.close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _stopwatch(seconds: dict[str, float], name: str):
    start = time.perf_counter()
    return lambda: seconds.__setitem__(name, seconds.get(name, 0.0) + time.perf_counter() - start)


@dataclass
class KeyValues:
    """Skip-interval attention for one pass: where clip 0's temporal keys and values are kept
    (``capture``, while clip 0 runs) or read from (``extra``, while a later clip runs)."""

    capture: MemoryStore | None = None
    extra: MemoryStore | None = None

    def apply(self, controller: AttentionController) -> AttentionController:
        controller.kv_capture, controller.kv_extra = self.capture, self.extra
        return controller


def choose_store(cfg: DictConfig, model: LoadedModel, frames: int, latent_hw) -> tuple[str, str]:
    """The attention store backend of this run, and why (``attention_matching.store``)."""
    requested = cfg.attention_matching.store
    if requested != "auto":
        return requested, "attention_matching.store"
    if model.device.type == "cpu":
        return "disk", "auto: no accelerator to recompute on, so records go to disk"
    element = torch.empty((), dtype=model.dtype).element_size()
    need = record_bytes_per_step(model.unet, frames, *latent_hw, element)
    reserve = cfg.attention_matching.memory_reserve_gb * 1e9
    free, _ = torch.accelerator.get_memory_info(model.device.index)
    if free >= need + reserve:
        return "recompute", (
            f"auto: {free / 1e9:.1f} GB free holds one step of records ({need / 1e9:.2f} GB) "
            f"and attention_matching.memory_reserve_gb={reserve / 1e9:g} for the passes"
        )
    return "disk", (
        f"auto: {free / 1e9:.1f} GB free is short of one step of records ({need / 1e9:.2f} GB) "
        f"plus attention_matching.memory_reserve_gb={reserve / 1e9:g}"
    )


def _device_budget(cfg: DictConfig, device: torch.device) -> int | None:
    """Bytes of records the memory store may keep on the accelerator (None: no limit)."""
    if device.type == "cpu":
        return None
    free, _ = torch.accelerator.get_memory_info(device.index)
    return max(0, int(free - cfg.attention_matching.memory_reserve_gb * 1e9))


def invert_source(
    cfg: DictConfig,
    model: LoadedModel,
    clip: torch.Tensor,
    sigmas: torch.Tensor,
    seconds: dict[str, float],
    entry: TensorEntry | None = None,
    kv: KeyValues | None = None,
    backend: str = "memory",
    cache_log: CacheLog | None = None,
) -> SourceInversion:
    """Stage 4: SARP, VAE encoding and EDM inversion of the clip (F, 3, h, w), keeping what the
    ``backend`` needs for matching (records in memory or on disk, or the trajectory to
    recompute them from); taken from (and saved to) the cache ``entry``, computed once: a job
    that finds another job computing it waits, then loads it."""
    am, kv = cfg.attention_matching, kv or KeyValues()
    if cfg.inversion.method == "none":
        return SourceInversion(None, MemoryStore())
    backend = backend if am.enabled else "none"
    cache_log = cache_log or CacheLog()
    args = (cfg, model, clip, sigmas, entry, kv, backend, cache_log)
    found = _cached_inversion(*args, say=True)
    if found is not None:
        return found
    if entry is None:
        return _compute_inversion(*args, seconds)
    with entry.locked():
        found = _cached_inversion(*args)  # computed meanwhile by the job we waited for
        return found if found is not None else _compute_inversion(*args, seconds)


def _cached_inversion(
    cfg: DictConfig,
    model: LoadedModel,
    clip: torch.Tensor,
    sigmas: torch.Tensor,
    entry: TensorEntry | None,
    kv: KeyValues,
    backend: str,
    cache_log: CacheLog,
    say: bool = False,
) -> SourceInversion | None:
    """The inversion from the cache ``entry``, if it is there and serves ``backend``."""
    cached = entry.load() if entry is not None else None
    if cached is not None and not _serves(cached, entry, backend, kv):
        if say:
            log.info("%s holds no attention data for store=%s: inverting again", entry, backend)
        cached = None
    if cached is not None:
        cache_log.hit(entry)
        latents = cached["latents"]["latents"].to(model.device)
        if kv.capture is not None:
            store_from_tensors(cached["kv"], model.device, kv.capture)
        if backend == "disk":
            store = DiskStore(entry.folder / RECORDS_DIR, model.dtype, model.device, entry.files)
        elif backend == "recompute":
            trajectory = cached["latents"]["trajectory"].to(model.device)
            cond = _source_condition(cfg, model, clip, len(clip))
            store = RecomputeStore(
                model.unet, trajectory, cond, inversion_sigmas(sigmas), model.dtype, kv.extra
            )
        else:
            store = store_from_tensors(cached.get("records", {}), model.device)
        return SourceInversion(latents, store)
    return None


def _compute_inversion(
    cfg: DictConfig,
    model: LoadedModel,
    clip: torch.Tensor,
    sigmas: torch.Tensor,
    entry: TensorEntry | None,
    kv: KeyValues,
    backend: str,
    cache_log: CacheLog,
    seconds: dict[str, float],
) -> SourceInversion:
    """SARP, encoding and inversion of the clip, saved to the cache ``entry``."""
    am = cfg.attention_matching
    done = _stopwatch(seconds, "sarp")
    clip = _sarp(cfg, clip)
    done()
    done = _stopwatch(seconds, "inversion")
    pipe = model.pipe
    latents = encode_video(pipe, clip, cfg.model.decode_chunk_size)
    cond = _source_condition(cfg, model, clip, len(clip), sarp_done=True)
    staged = scratch = None
    if backend == "disk":
        if entry is not None:
            staged = entry.stage()
        else:  # no cache entry to keep the records in: a scratch folder, removed after use
            cache_dir = Path(cfg.paths.cache_dir).expanduser()
            cache_dir.mkdir(parents=True, exist_ok=True)
            staged = scratch = Path(tempfile.mkdtemp(prefix=".records-", dir=cache_dir))
        store = DiskStore(staged / RECORDS_DIR, model.dtype, model.device)
    else:
        store = MemoryStore(dtype=model.dtype, device_budget=_device_budget(cfg, model.device))
    recording = am.enabled and backend != "recompute"
    if backend == "recompute":  # the recording computation, keeping nothing
        recorder = kv.apply(AttentionRecorder(DiscardStore()))
    else:
        recorder = kv.apply(AttentionRecorder(store) if recording else AttentionController())
    trajectory = [] if am.enabled else None  # cheap, and any later run may recompute from it
    try:
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
                extra_record=am.pairing == "exact" and recording,
                on_step=advance,
                trajectory=trajectory,
            )
        if backend == "disk":
            store.finish()
    except BaseException:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        raise
    done()
    if recording:
        log.info("attention records: %.1f MB per step (%s)", store.nbytes(0) / 1e6, backend)
    files = {"latents": {"latents": inverted}}
    if trajectory is not None:
        files["latents"]["trajectory"] = torch.stack(trajectory)
    if kv.capture is not None:
        files["kv"] = store_to_tensors(kv.capture)
    if backend == "memory" and am.enabled:
        files["records"] = store_to_tensors(store)
    if entry is not None and backend == "disk":
        entry.save(files, staged, known=store.checksums)
        store.folder, store.expected = entry.folder / RECORDS_DIR, entry.files
    elif entry is not None and store.nbytes() <= cfg.paths.max_cached_records_gb * 1e9:
        entry.save(files)
    elif entry is not None:
        log.info(
            "attention records of %.1f GB exceed paths.max_cached_records_gb=%g: not cached "
            "(attention_matching.store=disk keeps them on disk)",
            store.nbytes() / 1e9,
            cfg.paths.max_cached_records_gb,
        )
    cache_log.compute(entry if entry is not None else "inversion")
    if backend == "recompute":
        store = RecomputeStore(
            model.unet,
            files["latents"]["trajectory"],
            cond,
            inversion_sigmas(sigmas),
            model.dtype,
            kv.extra,
        )
    return SourceInversion(inverted, store, scratch)


def _serves(cached: dict, entry: TensorEntry, backend: str, kv: KeyValues) -> bool:
    """Whether a cached inversion holds what this run's store backend (and skip-interval
    capture) needs; entries are keyed without the backend, so a run may find another's."""
    if kv.capture is not None and "kv" not in cached:
        return False
    if backend == "disk":
        return any(name.startswith(f"{RECORDS_DIR}/") for name in entry.files)
    if backend == "recompute":
        return "trajectory" in cached["latents"]
    return backend == "none" or "records" in cached


def _sarp(cfg: DictConfig, clip: torch.Tensor) -> torch.Tensor:
    if cfg.sarp.enabled:
        return sarp(clip, cfg.sarp.noise_scale, cfg.sarp.threshold, _generator(cfg.seed))
    return clip


def _source_condition(
    cfg: DictConfig, model: LoadedModel, clip: torch.Tensor, frames: int, sarp_done=False
) -> Condition:
    """The unguided condition of the inversion: the (SARP-perturbed) source first frame."""
    first = clip if sarp_done else _sarp(cfg, clip)
    params = ConditioningParams(**cfg.conditioning)
    return encode_condition(model.pipe, first[:1], params, frames, _generator(cfg.seed), False)


def inversion_entry(
    cfg: DictConfig, inputs: EditInputs, clip: Clip, identity: str, dtype
) -> TensorEntry:
    """The cache entry of a clip's inversion: keyed by all that determines it."""
    data, am = cfg.data, cfg.attention_matching
    key = {
        "source": content_digest(inputs.video_path),
        "sampling": {
            k: data[k]
            for k in ("sample_fps", "start_t", "end_t", "chunk_size", "overlay_size", "folder_fps")
        },
        "clip": clip.clip_id,
        "resolution": list(data.output_res),
        "pad_to_fit": data.pad_to_fit,
        "model": identity,
        "dtype": str(dtype),
        "num_steps": cfg.num_steps,
        "sarp": OmegaConf.to_container(cfg.sarp),
        "inversion": cfg.inversion.method,
        "conditioning": {
            k: cfg.conditioning[k] for k in ("fps", "motion_bucket_id", "noise_aug_strength")
        },
        "seed": cfg.seed,
        "records": am.enabled,
        "pairing": am.pairing,
        "long_video": cfg.long_video.mode,
    }
    return TensorEntry(
        cfg.paths.cache_dir,
        "inversion",
        f"{item_name(cfg, inputs.video_path)}-clip{clip.clip_id}",
        key,
    )


def edit_entry(
    cfg: DictConfig,
    inversion: TensorEntry,
    keyframe: Keyframe,
    lora: LoraPlan | None,
    previous: str | None,
) -> TensorEntry:
    """The cache entry of one edit of one clip: the inversion it starts from, the edit's own
    settings, the LoRA, and the previous clip's entry of the same edit (the chain)."""
    am = cfg.attention_matching
    key = {
        "inversion": inversion.key,
        "keyframe": content_digest(keyframe.path) if previous is None else None,
        "previous": previous,
        "beta": list(keyframe.beta),
        "mask_thr": list(keyframe.mask_thr),
        "matching": {
            k: am[k]
            for k in (
                "enabled",
                "spatial_self_replace_steps",
                "temporal_self_replace_steps",
                "pairing",
            )
        },
        "lora": None if lora is None else [str(lora.checkpoint), cfg.lora.scale],
        "guidance": [cfg.conditioning.min_guidance_scale, cfg.conditioning.max_guidance_scale],
        "decode_chunk_size": cfg.model.decode_chunk_size,
    }
    name = f"{inversion.folder.name.rsplit('-', 1)[0]}-{keyframe.stem}"
    return TensorEntry(cfg.paths.cache_dir, "edits", name, key)


LAST_FRAME_SUFFIX = "_last.safetensors"


def save_last_frame(path: Path, link: ChainLink, clip_id: int) -> None:
    """Save an edit's last frame (image, latent, overlap frames) so a later run can continue
    it from clip ``clip_id + 1`` (``long_video.load_from_last_frames_latents``)."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    tensors = {"image": link.image, "latent": link.latent, "frames": link.frames}
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        tmp,
        {"clip_id": str(clip_id)},
    )
    os.replace(tmp, path)


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


@dataclass
class ChainLink:
    """The last edited frame of a clip, which conditions the next clip of the same edit."""

    image: torch.Tensor  #: (1, 3, h, w) in [-1, 1] at the model's resolution
    latent: torch.Tensor  #: (1, C, h', w') its latent (scaled), taken before decoding
    frames: torch.Tensor  #: uint8 (overlay, H, W, 3): the clip's last frames as written


def edit_clip(
    cfg: DictConfig,
    model: LoadedModel,
    keyframe: Keyframe,
    cond: Condition,
    source: SourceInversion,
    sigmas: torch.Tensor,
    latent_shape: tuple[int, ...],
    label: str,
    kv: KeyValues | None = None,
) -> torch.Tensor:
    """Stage 5: guided sampling of one edit of one clip, from the inverted latents and with the
    source's attention matched. Returns clean latents."""
    am, n = cfg.attention_matching, cfg.num_steps
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
            query_block=am.query_block_size,
        )
        controller = AttentionMatcher(source.store, matching)
    with (
        controlled_attention(
            model.unet, (kv or KeyValues()).apply(controller or AttentionController())
        ),
        step_progress(label, n) as advance,
    ):
        guidance = guidance_scales(ConditioningParams(**cfg.conditioning), latent_shape[1])
        return sample(model.unet, start, cond, sigmas, guidance, controller, on_step=advance)


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


@dataclass
class PreparedEdit:
    """An edit checked and planned, before any model loads."""

    inputs: EditInputs
    plans: list[ClipPlan]
    device: torch.device
    dtype: torch.dtype


def prepare_edit(cfg: DictConfig, model: LoadedModel | None = None) -> PreparedEdit:
    """Check the config, read the inputs and plan every clip (what is cached, what is
    computed); raises ``InputError`` on bad input. No model loads."""
    validate_edit_config(cfg)
    inputs = read_inputs(cfg)
    device = model.device if model is not None else resolve_device(cfg.device)
    dtype = model.dtype if model is not None else resolve_dtype(cfg.dtype, device)
    identity = (
        model.identity
        if model is not None
        else model_identity(cfg.model.kind, cfg.model.path, cfg.model.seed)
    )
    return PreparedEdit(inputs, plan_clips(cfg, inputs, identity, dtype), device, dtype)


def run_edit(
    cfg: DictConfig, model: LoadedModel | None = None, prepared: PreparedEdit | None = None
) -> EditResult:
    """Edit the selected clips of the source video once per keyframe, clip after clip, each
    clip conditioned on the previous clip's last edited frame; returns what it wrote.

    ``model`` lets a caller (tests, a long-lived app) pass components already loaded, and
    ``prepared`` the ``prepare_edit`` of the same config (the app shows its plan first).
    """
    started = time.perf_counter()
    prepared = prepared or prepare_edit(cfg, model)  # 1, 2
    inputs, clip_plans, device = prepared.inputs, prepared.plans, prepared.device
    data = cfg.data
    target_hw = (int(data.output_res[0]), int(data.output_res[1]))
    source_hw = tuple(inputs.source.clips[0].frames.shape[1:3])
    plan = ResolutionPlan.build(source_hw, target_hw, data.pad_to_fit)
    keyframe_plans = [
        ResolutionPlan.build(tuple(k.image.shape[:2]), target_hw, data.pad_to_fit)
        for k in inputs.keyframes
    ]
    inputs.source.log_summary()
    show_plan(cfg, inputs, clip_plans)
    seconds: dict[str, float] = {}
    cached = all((e.folder / MANIFEST).is_file() for p in clip_plans for e in p.edits.values())
    if model is None and not cached:  # 3 (a run whose every edit is cached needs no model)
        done = _stopwatch(seconds, "load")
        model = _model(cfg, device, prepared.dtype)
        done()

    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / CONFIG_NAME
    config_path.write_text(OmegaConf.to_yaml(cfg, resolve=True))

    overlay = data.overlay_size
    params = ConditioningParams(**cfg.conditioning)
    chains: dict[str, ChainLink] = {
        stem: ChainLink(t["image"].to(device), t["latent"].to(device), t["frames"])
        for stem, t in inputs.continued.items()
    }
    outputs: dict[str, list[torch.Tensor]] = {k.stem: [] for k in inputs.keyframes}
    record_bytes = 0
    skip = cfg.long_video.mode == "skip_interval"  # clips k > 0 also attend to clip 0
    source_kv = MemoryStore() if skip else None
    edit_kv = {k.stem: MemoryStore() for k in inputs.keyframes} if skip else {}
    backend = None  #: the attention store, chosen once the model is there
    cache_log = CacheLog()

    def take(clip_plan: ClipPlan, first: bool, keyframe: Keyframe, cached: dict | None) -> bool:
        """Use the cached edit of a clip, if it is there (and holds what is needed)."""
        if cached is None or (skip and first and "kv" not in cached):
            return False
        cache_log.hit(clip_plan.edits[keyframe.stem])
        if skip and first:
            store_from_tensors(cached["kv"], device, edit_kv[keyframe.stem])
        if clip_plan.anchor:
            return True  # clip 0 before a later start: only its keys and values are wanted
        written = cached["frames"]["frames"]
        link = cached["link"]
        chains[keyframe.stem] = ChainLink(
            link["image"].to(device),
            link["latent"].to(device),
            written[len(written) - overlay :],
        )
        outputs[keyframe.stem].append(written)
        return True

    for index, clip_plan in enumerate(clip_plans):
        clip = clip_plan.clip
        first = index == 0
        pending = [
            k
            for k in inputs.keyframes
            if not take(clip_plan, first, k, clip_plan.edits[k.stem].load())
        ]
        later_pending = not all(
            (e.folder / MANIFEST).is_file() for p in clip_plans[1:] for e in p.edits.values()
        )
        if not pending and not (skip and first and later_pending):
            continue
        pipe = model.pipe
        sigmas = karras_sigmas(pipe, cfg.num_steps)
        scale = pipe.vae_scale_factor
        h, w = target_hw[0] // scale, target_hw[1] // scale
        latent_shape = (1, len(clip.frames), model.unet.config.out_channels, h, w)
        if backend is None:
            backend, why = choose_store(cfg, model, len(clip.frames), (h, w))
            if cfg.attention_matching.enabled:
                log.info("attention store: %s (%s)", backend, why)
        if clip_plan.lora is not None and clip_plan.lora.train:
            done = _stopwatch(seconds, "train")
            trained = _train_missing(cfg, model, inputs, clip_plan, out_dir)
            done()
            (cache_log.compute if trained else cache_log.hit)(clip_plan.lora.checkpoint)
        elif clip_plan.lora is not None:
            cache_log.hit(clip_plan.lora.checkpoint)
        with torch.inference_mode():
            frames = plan.forward(to_model_frames(clip.frames)).to(model.device)
            source_pass = KeyValues(capture=source_kv) if first else KeyValues(extra=source_kv)
            source = invert_source(  # 4
                cfg,
                model,
                frames,
                sigmas,
                seconds,
                clip_plan.inversion,
                source_pass if skip else None,
                backend,
                cache_log,
            )
            record_bytes = max(record_bytes, source.store.nbytes(0))
            if clip_plan.lora is not None:  # inversion never runs with the LoRA
                load_lora(model.unet, clip_plan.lora.checkpoint, cfg.lora.scale)
                log.info(
                    "motion LoRA: loaded %s (scale %g)", clip_plan.lora.checkpoint, cfg.lora.scale
                )
            try:
                for keyframe in pending:
                    entry = clip_plan.edits[keyframe.stem]
                    with entry.locked():  # edited once: other jobs wanting it wait, then load it
                        if take(clip_plan, first, keyframe, entry.load()):
                            continue  # edited meanwhile by the job we waited for
                        done = _stopwatch(seconds, "sampling")
                        link = None if clip_plan.anchor else chains.get(keyframe.stem)
                        if link is None:  # the first clip: the edited first frame
                            keyframe_plan = keyframe_plans[inputs.keyframes.index(keyframe)]
                            image = keyframe_plan.forward(to_model_frames(keyframe.image[None]))
                            image = image.to(model.device)
                            cond = encode_condition(
                                pipe, image, params, len(frames), _generator(cfg.seed), True
                            )
                        else:  # later clips: the previous clip's last edited frame, and its latent
                            cond = encode_condition(
                                pipe,
                                link.image,
                                params,
                                len(frames),
                                _generator(cfg.seed),
                                True,
                                link.latent,
                            )
                        label = f"edit {keyframe.stem}, clip {clip.clip_id}"
                        own = edit_kv.get(keyframe.stem)
                        edit_pass = KeyValues(capture=own) if first else KeyValues(extra=own)
                        latents = edit_clip(  # 5
                            cfg,
                            model,
                            keyframe,
                            cond,
                            source,
                            sigmas,
                            latent_shape,
                            label,
                            edit_pass if skip else None,
                        )
                        done()
                        done = _stopwatch(seconds, "decode")  # 6
                        decoded = decode_video(pipe, latents, cfg.model.decode_chunk_size)
                        written = to_uint8_frames(plan.inverse(decoded.cpu()))
                        if (
                            link is not None and overlay
                        ):  # the shared frames: exactly the previous clip's
                            written[:overlay] = link.frames
                        new_link = ChainLink(
                            decoded[-1:], latents[0, -1:], written[len(written) - overlay :]
                        )
                        files = {
                            "frames": {"frames": written},
                            "link": {"image": new_link.image, "latent": new_link.latent},
                        }
                        if skip and first:
                            files["kv"] = store_to_tensors(edit_kv[keyframe.stem])
                        entry.save(files)
                        cache_log.compute(entry)
                    if not clip_plan.anchor:
                        chains[keyframe.stem] = new_link
                        outputs[keyframe.stem].append(written)
                    done()
            finally:
                if clip_plan.lora is not None:
                    remove_lora(model.unet)
                source.close()
        del source
    edited, last_frames = [], []
    for keyframe in inputs.keyframes:
        clips = outputs[keyframe.stem]
        first = clips[0][overlay:] if inputs.continued else clips[0]  # continued: no repeat
        video = torch.cat([first, *(c[overlay:] for c in clips[1:])])
        edited.append(write_video(out_dir / f"{keyframe.stem}.mp4", video, inputs.fps))
        log.info("wrote %s (%d frames)", edited[-1], len(video))
        last_frames.append(out_dir / f"{keyframe.stem}{LAST_FRAME_SUFFIX}")
        save_last_frame(last_frames[-1], chains[keyframe.stem], clip_plans[-1].clip.clip_id)
    source_clips = [c.clip.frames for c in clip_plans if not c.anchor]
    first = source_clips[0][overlay:] if inputs.continued else source_clips[0]
    source_video = torch.cat([first, *(c[overlay:] for c in source_clips[1:])])
    source_path = write_video(out_dir / SOURCE_NAME, source_video, inputs.fps)
    result = EditResult(
        out_dir,
        edited,
        source_path,
        config_path,
        clip_plans,
        outputs,
        seconds,
        record_bytes,
        last_frames,
        cache_log,
    )
    if cfg.metrics.enabled:
        done = _stopwatch(seconds, "metrics")
        result.metrics = edit_metrics(cfg, inputs, result)
        result.metrics_path = write_metrics(out_dir / METRICS_NAME, result.metrics)
        done()
    log.info("seconds per stage: %s", ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    result.run_path = write_run_record(cfg, inputs, result, time.perf_counter() - started)
    return result


def edit_metrics(cfg: DictConfig, inputs: EditInputs, result: EditResult) -> dict[str, dict]:
    """Per keyframe, the metrics of the written edit against the written source (decoded from
    the files, so ``i2vedit-eval`` on the same files gives the same numbers)."""
    m = cfg.metrics
    source = read_video_frames(result.source, "source")
    out = {}
    for keyframe, path in zip(inputs.keyframes, result.edited, strict=True):
        out[keyframe.stem] = evaluate(
            read_video_frames(path, "edited"),
            source,
            keyframe.image,
            clip_path=m.clip_path,
            flow=m.flow,
            raft_weights=m.raft_weights,
            mask_threshold=m.mask_threshold,
        )
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
                "metrics": result.metrics.get(keyframe.stem, {}),
            }
            for keyframe, path in zip(inputs.keyframes, result.edited, strict=True)
        },
    }
    return write_metrics(result.output_dir / RUN_NAME, record)  # atomic JSON, NaN as null
