"""The per-clip runner: the stages of one clip that the edit task, the app and the
benchmarks all call, below the tasks.

- :func:`choose_store`: where the source's attention lives while a clip is edited;
- :func:`invert_clip`: SARP, VAE encoding and EDM inversion of a source clip with attention
  recording (from the cache when it is there; computed once among parallel jobs);
- :func:`edit_condition`: the condition of one edit of one clip (its edited first frame, or
  the previous clip's last edited frame and latent);
- :func:`edit_clip`: guided sampling of one edit of one clip with the source's attention
  matched;
- :func:`decode_clip`: the edited latents as uint8 frames at the source's resolution.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from i2vedit.attention.control import (
    AttentionController,
    AttentionMatcher,
    AttentionRecorder,
    MatchingParams,
)
from i2vedit.attention.kernels import resolve_kernel
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
from i2vedit.cache import TensorEntry
from i2vedit.core.edm import (
    Condition,
    ConditioningParams,
    decode_video,
    encode_condition,
    encode_video,
    guidance_scales,
    seeded_generator,
)
from i2vedit.data.resize import ResolutionPlan, to_uint8_frames
from i2vedit.inversion.edm import edm_invert, inversion_sigmas
from i2vedit.inversion.recompute import RecomputeStore
from i2vedit.inversion.sarp import sarp
from i2vedit.models.device import HOST, resolve_device
from i2vedit.models.svd import LoadedModel
from i2vedit.progress import step_progress
from i2vedit.sampling.sampler import Preservation, sample

log = logging.getLogger(__name__)


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
class SourceInversion:
    """What :func:`invert_clip` hands to :func:`edit_clip`."""

    latents: torch.Tensor | None  #: inverted latents at unit scale; None with inversion=none
    store: AttentionStore  #: the source's attention records (or their recomputation)
    scratch: Path | None = None  #: records written outside the cache, removed by ``close``
    #: (N+1, 1, F, C, h, w) the inversion's latents at its sigmas (latent preservation); None
    #: when not kept
    trajectory: torch.Tensor | None = None

    def close(self) -> None:
        if isinstance(self.store, DiskStore):
            self.store.close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def stopwatch(seconds: dict[str, float], name: str):
    """Start timing stage ``name``; the returned call adds the seconds to ``seconds``."""
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
    if model.device.type == HOST.type:
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
    if device.type == HOST.type:
        return None
    free, _ = torch.accelerator.get_memory_info(device.index)
    return max(0, int(free - cfg.attention_matching.memory_reserve_gb * 1e9))


def invert_clip(
    cfg: DictConfig,
    model: LoadedModel,
    clip: torch.Tensor,
    sigmas: torch.Tensor,
    seconds: dict[str, float],
    entry: TensorEntry | None = None,
    kv: KeyValues | None = None,
    backend: str = "memory",
    cache_log: CacheLog | None = None,
    trajectory: bool = False,
) -> SourceInversion:
    """Stage 4: SARP, VAE encoding and EDM inversion of the clip (F, 3, h, w), keeping what the
    ``backend`` needs for matching (records in memory or on disk, or the trajectory to
    recompute them from) and, with ``trajectory`` (masked edits), the inversion's latents at
    each sigma; taken from (and saved to) the cache ``entry`` (the trajectory is a tensor of
    the same entry, not part of its key), computed once: a job that finds another job
    computing it waits, then loads it."""
    am, kv = cfg.attention_matching, kv or KeyValues()
    if cfg.inversion.method == "none":
        return SourceInversion(None, MemoryStore())
    backend = backend if am.enabled else "none"
    cache_log = cache_log or CacheLog()
    args = (cfg, model, clip, sigmas, entry, kv, backend, cache_log, trajectory)
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
    keep_trajectory: bool,
    say: bool = False,
) -> SourceInversion | None:
    """The inversion from the cache ``entry``, if it is there and serves ``backend`` (and holds
    the trajectory when ``keep_trajectory``)."""
    cached = entry.load() if entry is not None else None
    if cached is not None and not _serves(cached, entry, backend, kv, keep_trajectory):
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
            cond = source_condition(cfg, model, clip, len(clip))
            store = RecomputeStore(
                model.unet, trajectory, cond, inversion_sigmas(sigmas), model.dtype, kv.extra
            )
        else:
            store = store_from_tensors(cached.get("records", {}), model.device)
        kept = cached["latents"]["trajectory"] if keep_trajectory else None
        return SourceInversion(latents, store, trajectory=kept)
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
    keep_trajectory: bool,
    seconds: dict[str, float],
) -> SourceInversion:
    """SARP, encoding and inversion of the clip, saved to the cache ``entry``."""
    am = cfg.attention_matching
    done = stopwatch(seconds, "sarp")
    clip = _sarp(cfg, clip)
    done()
    done = stopwatch(seconds, "inversion")
    latents = encode_video(model.pipe, clip, cfg.model.decode_chunk_size)
    cond = source_condition(cfg, model, clip, len(clip), sarp_done=True)
    store, staged, scratch = _record_store(cfg, model, entry, backend)
    recording = am.enabled and backend != "recompute"
    if backend == "recompute":  # the recording computation, keeping nothing
        recorder = kv.apply(AttentionRecorder(DiscardStore()))
    else:
        recorder = kv.apply(AttentionRecorder(store) if recording else AttentionController())
    # cheap, and any later run may recompute from it (or preserve latents along it)
    trajectory = [] if am.enabled or keep_trajectory else None
    try:
        with step_progress("inversion", cfg.num_steps) as advance:
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
    _save_inversion(cfg, entry, files, store, staged, backend)
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
    kept = files["latents"]["trajectory"] if keep_trajectory else None
    return SourceInversion(inverted, store, scratch, kept)


def _record_store(
    cfg: DictConfig, model: LoadedModel, entry: TensorEntry | None, backend: str
) -> tuple[AttentionStore, Path | None, Path | None]:
    """Where the inversion records attention: (the store, the staged folder of a disk store's
    files, the scratch folder to remove after use when there is no cache entry)."""
    if backend != "disk":
        budget = _device_budget(cfg, model.device)
        return MemoryStore(dtype=model.dtype, device_budget=budget), None, None
    scratch = None
    if entry is not None:
        staged = entry.stage()
    else:  # no cache entry to keep the records in: a scratch folder, removed after use
        cache_dir = Path(cfg.paths.cache_dir).expanduser()
        cache_dir.mkdir(parents=True, exist_ok=True)
        staged = scratch = Path(tempfile.mkdtemp(prefix=".records-", dir=cache_dir))
    return DiskStore(staged / RECORDS_DIR, model.dtype, model.device), staged, scratch


def _save_inversion(
    cfg: DictConfig,
    entry: TensorEntry | None,
    files: dict,
    store: AttentionStore,
    staged: Path | None,
    backend: str,
) -> None:
    """Keep the inversion in its cache entry (records too, unless too large for the cache)."""
    if entry is None:
        return
    if backend == "disk":
        entry.save(files, staged, known=store.checksums)
        store.folder, store.expected = entry.folder / RECORDS_DIR, entry.files
    elif store.nbytes() <= cfg.paths.max_cached_records_gb * 1e9:
        entry.save(files)
    else:
        log.info(
            "attention records of %.1f GB exceed paths.max_cached_records_gb=%g: not cached "
            "(attention_matching.store=disk keeps them on disk)",
            store.nbytes() / 1e9,
            cfg.paths.max_cached_records_gb,
        )


def _serves(
    cached: dict, entry: TensorEntry, backend: str, kv: KeyValues, keep_trajectory: bool
) -> bool:
    """Whether a cached inversion holds what this run's store backend (and skip-interval
    capture, and latent preservation) needs; entries are keyed without the backend, so a run
    may find another's."""
    if kv.capture is not None and "kv" not in cached:
        return False
    if keep_trajectory and "trajectory" not in cached["latents"]:
        return False
    if backend == "disk":
        return any(name.startswith(f"{RECORDS_DIR}/") for name in entry.files)
    if backend == "recompute":
        return "trajectory" in cached["latents"]
    return backend == "none" or "records" in cached


def _sarp(cfg: DictConfig, clip: torch.Tensor) -> torch.Tensor:
    if cfg.sarp.enabled:
        return sarp(clip, cfg.sarp.noise_scale, cfg.sarp.threshold, seeded_generator(cfg.seed))
    return clip


def source_condition(
    cfg: DictConfig, model: LoadedModel, clip: torch.Tensor, frames: int, sarp_done=False
) -> Condition:
    """The unguided condition of the inversion: the (SARP-perturbed) source first frame."""
    first = clip if sarp_done else _sarp(cfg, clip)
    params = ConditioningParams(**cfg.conditioning)
    cond = encode_condition(
        model.pipe, first[:1], params, frames, seeded_generator(cfg.seed), False
    )
    rest_image_encoder(cfg, model)
    return cond


def rest_image_encoder(cfg: DictConfig, model: LoadedModel) -> None:
    """``model.offload_image_encoder``: on an accelerator, the CLIP image encoder waits in host
    memory once a condition is encoded (SVD's ViT-H/14 holds 1.3 GB in bf16, idle while
    sampling and decoding). It comes back to the device of its input when next called."""
    encoder = model.pipe.image_encoder
    if not cfg.model.offload_image_encoder or model.device.type == HOST.type:
        return
    if not getattr(encoder, "_i2vedit_follows_input", False):
        encoder.register_forward_pre_hook(_to_input_device, with_kwargs=True)
        encoder._i2vedit_follows_input = True
        log.info("CLIP image encoder: in host memory between encodings")
    if encoder.device != HOST:
        encoder.to(HOST)


def _to_input_device(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook: the module on the device of its first tensor input."""
    tensors = [x for x in (*args, *kwargs.values()) if isinstance(x, torch.Tensor)]
    if tensors and module.device != tensors[0].device:
        module.to(tensors[0].device)


def matching_params(
    cfg: DictConfig,
    beta: tuple[float, float],
    mask_thr: tuple[float, float],
    device: torch.device | None = None,
) -> MatchingParams | None:
    """One edit's attention-matching settings (None with attention_matching.enabled=false):
    its own ``beta`` and ``mask_thr``, the rest from ``attention_matching``; the blend's
    kernel resolved for ``device`` (None: the config's ``device``)."""
    am = cfg.attention_matching
    if not am.enabled:
        return None
    device = resolve_device(cfg.device) if device is None else device
    kernel = resolve_kernel(am.kernel, device.type)
    log.info("spatial blend: %s kernel (attention_matching.kernel=%s)", kernel, am.kernel)
    return MatchingParams(
        num_steps=cfg.num_steps,
        beta=beta,
        mask_thr=mask_thr,
        spatial_steps=am.spatial_self_replace_steps,
        temporal_steps=am.temporal_self_replace_steps,
        frames_per_chunk=am.spatial_attention_chunk_size,
        pairing=am.pairing,
        query_block=am.query_block_size,
        kernel=kernel,
    )


def edit_condition(
    cfg: DictConfig,
    model: LoadedModel,
    image: torch.Tensor,
    frames: int,
    latent: torch.Tensor | None = None,
) -> Condition:
    """The guided condition of one edit of a clip of ``frames`` frames: its first frame
    ``image`` (1, 3, h, w) in [-1, 1] at the model's resolution, and for a later clip the
    latent of the previous clip's last edited frame (no VAE round trip)."""
    params = ConditioningParams(**cfg.conditioning)
    cond = encode_condition(
        model.pipe, image, params, frames, seeded_generator(cfg.seed), True, latent
    )
    rest_image_encoder(cfg, model)
    return cond


def edit_clip(
    cfg: DictConfig,
    model: LoadedModel,
    matching: MatchingParams | None,
    cond: Condition,
    source: SourceInversion,
    sigmas: torch.Tensor,
    latent_shape: tuple[int, ...],
    label: str,
    kv: KeyValues | None = None,
    preservation: Preservation | None = None,
) -> torch.Tensor:
    """Guided sampling of one edit of one clip, from the inverted latents, with the source's
    attention matched (``matching``; None: plain attention) and, with ``preservation``, the
    latents outside the edit mask following the source's trajectory. Returns clean latents."""
    start = source.latents
    if start is None:
        start = torch.randn(latent_shape, generator=seeded_generator(cfg.seed)).to(model.device)
    matcher = None if matching is None else AttentionMatcher(source.store, matching)
    controller = (kv or KeyValues()).apply(matcher or AttentionController())
    with step_progress(label, cfg.num_steps) as advance:
        guidance = guidance_scales(ConditioningParams(**cfg.conditioning), latent_shape[1])
        return sample(model.unet, start, cond, sigmas, guidance, controller, advance, preservation)


def decode_clip(
    cfg: DictConfig, model: LoadedModel, latents: torch.Tensor, plan: ResolutionPlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean latents (1, F, C, h, w) as frames: (decoded (F, 3, h, w) in [-1, 1] at the model's
    resolution, uint8 (F, H, W, 3) at the source's)."""
    decoded = decode_video(model.pipe, latents, cfg.model.decode_chunk_size)
    return decoded, to_uint8_frames(plan.inverse(decoded.cpu()))
