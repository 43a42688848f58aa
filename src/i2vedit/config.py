"""Typed config schemas (registered in Hydra's ConfigStore), each group's checks beside its
schema, the cross-field rules in one place, and the two validations that run before any model
loads (``validate_edit_config``, ``validate_train_config``: lists of those checks).

Validation only reads: it never changes the config. The one alias, the reference's
``use_consistency_attention_control``, is read through ``long_video_mode``.

The dataclass defaults are the defaults: the group options that the root configs pick
(``conf/<group>/<default>.yaml``) restate them for readers, and a test keeps the two equal.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig, OmegaConf

from i2vedit.attention.kernels import check_kernel_name, resolve_kernel
from i2vedit.core.conditioning import ConditioningParams
from i2vedit.errors import InputError
from i2vedit.metrics_spec import FLOW_METHODS
from i2vedit.models.registry import model_kind
from i2vedit.toy.cases import parse_case

# --------------------------------------------------------------------------- check helpers


def _listed(choices: tuple[str, ...]) -> str:
    """``a, b or c``."""
    *rest, last = choices
    return f"{', '.join(rest)} or {last}" if rest else last


def _one_of(key: str, value: Any, choices: tuple[str, ...], listed: str | None = None) -> None:
    if value not in choices:
        raise InputError(key, value, f"expected {listed or _listed(choices)}")


def _pair(
    cfg: Any, key: str, lo: float = 0.0, hi: float = 1.0, ordered: bool = False
) -> tuple[float, float]:
    value = OmegaConf.select(cfg, key) if isinstance(cfg, DictConfig) else cfg
    shown = list(value) if value is not None else value
    if value is None or len(value) != 2:
        raise InputError(key, shown, "expected two numbers [first, second]")
    a, b = (float(v) for v in value)
    if not (lo <= a <= hi and lo <= b <= hi) or any(math.isnan(x) for x in (a, b)):
        raise InputError(key, shown, f"values must lie in [{lo:g}, {hi:g}]")
    if ordered and a > b:
        raise InputError(key, shown, "expected first <= second")
    return a, b


def _positive(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None or not value > 0:
        raise InputError(key, value, "must be > 0")


def _at_least(cfg: DictConfig, key: str, low: float) -> None:
    value = OmegaConf.select(cfg, key)
    if not value >= low:
        raise InputError(key, value, f"must be >= {low:g}")


def _fraction(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if not 0 <= value <= 1:
        raise InputError(key, value, "must lie in [0, 1]")


def _resolution(cfg: DictConfig, key: str) -> None:
    res = list(OmegaConf.select(cfg, key))
    if len(res) != 2 or any(int(v) <= 0 or int(v) % 8 for v in res):
        raise InputError(key, res, "expected [height, width], positive multiples of 8")


def _existing_file(key: str, path: str) -> None:
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(key, path, "file not found")


# --------------------------------------------------------------------------- data


@dataclass
class DataConfig:
    video_path: str | None = None  #: video file or image folder; None with no keyframes: the demo
    keyframe_paths: list[str] | None = None  #: edited first frames, one output video each
    sample_fps: float = 7.0
    start_t: float = 0.0
    end_t: float | None = None  #: None: the end of the video
    chunk_size: int = II("model.num_frames")
    overlay_size: int = 1
    begin_clip_id: int = 0
    end_clip_id: int | None = None  #: last clip, inclusive; None: the video's last clip
    output_res: list[int] = field(
        default_factory=lambda: ["${model.resolution[0]}", "${model.resolution[1]}"]
    )
    pad_to_fit: bool = False
    output_fps: float | None = None  #: None: sample_fps
    folder_fps: float = 30.0  #: frame rate of an image-folder video
    #: a toy-world case "<kind>-<seed>" (i2vedit.toy.world) as the source: its video, edited
    #: first frame and exact ground truth are generated into the cache on first use
    toy_case: str | None = None
    toy_frames: int = 8  #: frames of the toy case's video
    #: per keyframe: "auto", null, a first-frame mask image, or a folder / video of per-frame
    #: masks (i2vedit.masks); None: no masks (every pixel is the model's)
    mask_paths: list[Any] | None = None
    mask_threshold: float = 0.1  #: auto: mean |RGB difference| / 255 that marks an edit
    mask_dilate: int = 1  #: auto: pixels the difference region grows by
    mask_safety: int = 1  #: pixels a propagated mask grows by, frames 1 on
    mask_feather: int = 2  #: pixels over which the composite fades to the source
    mask_preserve: float = 0.5  #: leading fraction of steps whose outside latents are the source's


def is_demo(cfg: DictConfig) -> bool:
    """No video, no keyframes and no toy case given: run the embedded demo item."""
    data = cfg.data
    return data.video_path is None and data.keyframe_paths is None and data.toy_case is None


def generated_source(cfg: DictConfig) -> bool:
    """The source and its edited first frame are generated (the demo, or a toy case)."""
    return is_demo(cfg) or cfg.data.toy_case is not None


def check_data(cfg: DictConfig) -> None:
    """The source video's sampling, clips and files (no decoding)."""
    data = cfg.data
    for key in ("data.sample_fps", "data.folder_fps"):
        _positive(cfg, key)
    if data.output_fps is not None:
        _positive(cfg, "data.output_fps")
    if data.start_t < 0:
        raise InputError("data.start_t", data.start_t, "must be >= 0")
    if data.end_t is not None and data.end_t <= data.start_t:
        raise InputError("data.end_t", data.end_t, f"must be > data.start_t={data.start_t}")
    if data.chunk_size < 2:
        raise InputError("data.chunk_size", data.chunk_size, "must be >= 2")
    if not 0 <= data.overlay_size < data.chunk_size:
        raise InputError(
            "data.overlay_size",
            data.overlay_size,
            f"must be in [0, data.chunk_size={data.chunk_size})",
        )
    if data.begin_clip_id < 0:
        raise InputError("data.begin_clip_id", data.begin_clip_id, "must be >= 0")
    if data.end_clip_id is not None and data.end_clip_id < data.begin_clip_id:
        raise InputError(
            "data.end_clip_id",
            data.end_clip_id,
            f"must be >= data.begin_clip_id={data.begin_clip_id}",
        )
    _resolution(cfg, "data.output_res")
    if data.toy_case is not None:
        parse_case(data.toy_case)
        if data.video_path is not None or data.keyframe_paths is not None:
            raise InputError(
                "data.toy_case",
                data.toy_case,
                "a toy case brings its own video and edited first frame: unset "
                "data.video_path and data.keyframe_paths",
            )
        if data.toy_frames < 2:
            raise InputError("data.toy_frames", data.toy_frames, "must be >= 2")
    if not generated_source(cfg):
        if data.video_path is None:
            raise InputError(
                "data.video_path", None, "give the source video (file or image folder)"
            )
        _existing_file("data.video_path", data.video_path)
    for path in data.keyframe_paths or []:
        _existing_file("data.keyframe_paths", path)
    check_masks(cfg)


def check_masks(cfg: DictConfig) -> None:
    """The mask settings and list (the mask files are read with the inputs)."""
    data = cfg.data
    if not 0 <= data.mask_threshold < 1:
        raise InputError("data.mask_threshold", data.mask_threshold, "must be in [0, 1)")
    for key in ("mask_dilate", "mask_safety", "mask_feather"):
        if data[key] < 0:
            raise InputError(f"data.{key}", data[key], "must be >= 0 (pixels)")
    _fraction(cfg, "data.mask_preserve")
    # the list itself (its length, its files) is checked with the inputs: tasks.inputs


# --------------------------------------------------------------------------- model


@dataclass
class ModelConfig:
    #: a kind of i2vedit.models.registry: tiny (seeded random SVD), toy (the shipped model
    #: trained on the toy world) or pretrained (a diffusers folder / hub id)
    kind: str = "tiny"
    path: str | None = None
    variant: str | None = None  #: e.g. fp16, for hub folders that ship such weights
    seed: int = 0  #: weights seed of the tiny model
    num_frames: int = 8
    resolution: list[int] = field(default_factory=lambda: [32, 48])  #: (height, width)
    train_resolution: list[int] = field(default_factory=lambda: [32, 48])  #: motion-LoRA training
    decode_chunk_size: int = 8
    #: on an accelerator, the CLIP image encoder waits in host memory between encodings
    offload_image_encoder: bool = True


def check_model(cfg: DictConfig) -> None:
    """A known kind whose weights are there (its registry check; nothing loads)."""
    model_kind(cfg.model.kind).check(cfg.model.path)
    _positive(cfg, "model.decode_chunk_size")


# --------------------------------------------------------------------------- conditioning
# the schema is ConditioningParams (i2vedit.core.conditioning), shared with the EDM maths


def check_conditioning(cfg: DictConfig) -> None:
    _positive(cfg, "conditioning.fps")
    if not 0 <= cfg.conditioning.noise_aug_strength <= 1:
        raise InputError(
            "conditioning.noise_aug_strength",
            cfg.conditioning.noise_aug_strength,
            "must lie in [0, 1]",
        )


# --------------------------------------------------------------------------- sarp


@dataclass
class SarpConfig:
    enabled: bool = True
    noise_scale: float = 0.005
    threshold: float = 0.001


def check_sarp(cfg: DictConfig) -> None:
    if cfg.sarp.enabled:
        _at_least(cfg, "sarp.noise_scale", 0)
        _at_least(cfg, "sarp.threshold", 0)


# --------------------------------------------------------------------------- inversion

INVERSION_METHODS = ("edm", "none")


@dataclass
class InversionConfig:
    method: str = "edm"  #: edm, or none (start from seeded Gaussian noise)


def check_inversion(cfg: DictConfig) -> None:
    _one_of("inversion.method", cfg.inversion.method, INVERSION_METHODS)


# --------------------------------------------------------------------------- attention_matching


@dataclass
class EditParams:
    """Per-edit overrides; unset fields take the attention_matching defaults."""

    beta: list[float] | None = None
    mask_thr: list[float] | None = None


STORES = ("auto", "memory", "disk", "recompute")
PAIRINGS = ("reference", "exact")


@dataclass
class AttentionMatchingConfig:
    enabled: bool = True
    beta: list[float] = field(default_factory=lambda: [0.5, 0.8])  #: temporal_step_thr
    mask_thr: list[float] = field(default_factory=lambda: [0.35, 0.35])  #: first, last frame
    spatial_self_replace_steps: float = 1.0
    temporal_self_replace_steps: float = 1.0
    spatial_attention_chunk_size: int = 1  #: frames blended at once
    pairing: str = "reference"  #: reference (record at sigma_{t+1}) or exact (at sigma_t)
    #: where the source's records live: auto, memory, disk or recompute
    store: str = "auto"
    #: query tokens blended at once in spatial matching (bounds the probability tensors)
    query_block_size: int = 1024
    #: the spatial blend: auto (triton on CUDA, else torch), triton (fused) or torch (blocked)
    kernel: str = "auto"
    #: accelerator memory (GB) the memory store leaves free for the passes (then host memory)
    #: and that auto wants beyond one step's records before it picks recompute
    memory_reserve_gb: float = 8.0
    per_edit: list[EditParams] = field(default_factory=list)  #: one entry per keyframe, in order


def check_attention_matching(cfg: DictConfig) -> None:
    """The group's own values (its per-edit sets are checked with the keyframes they follow:
    ``cross_field_checks``)."""
    am = cfg.attention_matching
    _one_of("attention_matching.pairing", am.pairing, PAIRINGS)
    _one_of("attention_matching.store", am.store, STORES, ", ".join(STORES))
    _at_least(cfg, "attention_matching.query_block_size", 1)
    check_kernel_name(am.kernel)
    if am.kernel == "triton":  # where it can run (torch, to resolve the device, only then)
        from i2vedit.models.device import resolve_device

        resolve_kernel(am.kernel, resolve_device(cfg.device).type)
    _at_least(cfg, "attention_matching.memory_reserve_gb", 0)
    _pair(cfg, "attention_matching.beta", ordered=True)
    _pair(cfg, "attention_matching.mask_thr")
    _fraction(cfg, "attention_matching.spatial_self_replace_steps")
    _fraction(cfg, "attention_matching.temporal_self_replace_steps")
    _at_least(cfg, "attention_matching.spatial_attention_chunk_size", 1)


# --------------------------------------------------------------------------- lora


#: ``lora.checkpointing``: the policies of ``i2vedit.training.checkpointing`` (named here too:
#: the config layer imports no torch)
CHECKPOINTING = ("none", "diffusers", "blocks")


@dataclass
class LoraSchema:
    """The motion LoRA: how it trains, and which checkpoint an edit loads."""

    checkpoint: int | None = None  #: step of the checkpoint an edit loads; None: no LoRA
    scale: float = 1.0
    train_if_missing: bool = True  #: an edit trains a missing LoRA first (else: error)
    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.1
    lr: float = 5e-4
    weight_decay: float = 1e-2
    max_steps: int = 500
    checkpoint_every: int = 50
    accumulate_grad_batches: int = 1
    #: what backward recomputes: none, diffusers (the UNet's own), blocks (every transformer
    #: block and resnet); memory and time only, never the result
    checkpointing: str = "blocks"
    resolution: list[int] = field(
        default_factory=lambda: ["${model.train_resolution[0]}", "${model.train_resolution[1]}"]
    )
    preview_every: int = 0  #: steps between validation previews (0: none)
    preview_steps: int = 10  #: Euler steps of a preview


def check_lora(cfg: DictConfig) -> None:
    lora = cfg.lora
    for key in ("lora.rank", "lora.alpha", "lora.lr", "lora.max_steps", "lora.checkpoint_every"):
        _positive(cfg, key)
    if not 0 <= lora.dropout < 1:
        raise InputError("lora.dropout", lora.dropout, "must lie in [0, 1)")
    if lora.weight_decay < 0:
        raise InputError("lora.weight_decay", lora.weight_decay, "must be >= 0")
    _at_least(cfg, "lora.accumulate_grad_batches", 1)
    _one_of("lora.checkpointing", lora.checkpointing, CHECKPOINTING)
    _at_least(cfg, "lora.preview_every", 0)
    if lora.preview_every:
        _at_least(cfg, "lora.preview_steps", 2)
    _resolution(cfg, "lora.resolution")
    if lora.checkpoint is not None and lora.checkpoint <= 0:
        raise InputError("lora.checkpoint", lora.checkpoint, "must be a positive step")


# --------------------------------------------------------------------------- trainer

PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")


@dataclass
class TrainerSchema:
    """Lightning Trainer settings: where and how training runs."""

    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"  #: auto, 32, bf16-mixed or 16-mixed
    log_every_n_steps: int = 1


def check_trainer(cfg: DictConfig) -> None:
    _one_of("trainer.precision", cfg.trainer.precision, PRECISIONS)


# --------------------------------------------------------------------------- paths


@dataclass
class PathsConfig:
    cache_dir: str = "${oc.env:I2VEDIT_CACHE_DIR,'~/.cache/i2vedit'}"
    #: inversions whose attention records exceed this are recomputed instead of cached
    max_cached_records_gb: float = 8.0


# --------------------------------------------------------------------------- long_video

LONG_VIDEO_MODES = ("autoregressive", "skip_interval")


@dataclass
class LongVideoConfig:
    """How clips follow each other: ``autoregressive`` chaining, or ``skip_interval``, where the
    temporal self-attention of clips k > 0 also attends to clip 0's keys and values."""

    mode: str = "autoregressive"
    #: one ``<keyframe stem>_last.safetensors`` of an earlier run per keyframe: continue the
    #: edit from its clip (set data.begin_clip_id to the clip after it)
    load_from_last_frames_latents: list[str] | None = None


def long_video_mode(cfg: DictConfig) -> str:
    """``long_video.mode``, with the reference's ``use_consistency_attention_control=true`` read
    as ``skip_interval`` (its name for the same thing). Every reader of the mode asks here."""
    return "skip_interval" if cfg.use_consistency_attention_control else cfg.long_video.mode


def check_long_video(cfg: DictConfig) -> None:
    _one_of("long_video.mode", long_video_mode(cfg), LONG_VIDEO_MODES)


# --------------------------------------------------------------------------- metrics


@dataclass
class MetricsConfig:
    """Edit-quality metrics written to ``metrics.json`` at the end of every edit run."""

    enabled: bool = True
    #: a local CLIP model folder: adds CLIP similarity to the keyframe and between frames
    clip_path: str | None = None
    flow: str = "auto"  #: auto (raft when raft_weights exists, else farneback), farneback, raft
    raft_weights: str | None = None  #: a local torchvision RAFT state dict (.pth)
    #: mean |RGB difference| / 255 above which a pixel of the edited first frame counts as
    #: edited (the mask outside which preservation is measured)
    mask_threshold: float = 0.1


def check_metrics(cfg: DictConfig) -> None:
    metrics = cfg.metrics
    _one_of("metrics.flow", metrics.flow, FLOW_METHODS, ", ".join(FLOW_METHODS))
    if not 0 <= metrics.mask_threshold < 1:
        raise InputError("metrics.mask_threshold", metrics.mask_threshold, "must be in [0, 1)")
    if not metrics.enabled:
        return
    if metrics.clip_path is not None and not Path(metrics.clip_path).expanduser().is_dir():
        raise InputError("metrics.clip_path", metrics.clip_path, "folder not found")
    if metrics.raft_weights is not None:
        _existing_file("metrics.raft_weights", metrics.raft_weights)
    elif metrics.flow == "raft":
        raise InputError("metrics.raft_weights", None, "metrics.flow=raft needs local weights")


# --------------------------------------------------------------------------- the root


@dataclass
class RunConfig:
    """What ``i2vedit-train`` and ``i2vedit-edit`` read: one schema for both, so one override
    list or one item serves either command; each ignores what it does not use (training reads
    no sarp, inversion, attention_matching, metrics, num_steps or dtype; an edit reads lora's
    training settings and trainer only when it trains a missing LoRA)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    conditioning: ConditioningParams = field(default_factory=ConditioningParams)
    sarp: SarpConfig = field(default_factory=SarpConfig)
    inversion: InversionConfig = field(default_factory=InversionConfig)
    attention_matching: AttentionMatchingConfig = field(default_factory=AttentionMatchingConfig)
    lora: LoraSchema = field(default_factory=LoraSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    num_steps: int = 25
    seed: int = 42
    device: str = "auto"
    dtype: str = "auto"
    output_dir: str = MISSING
    #: the item's name: names its cache entries (i2vedit-cache --item NAME); None: video stem
    name: str | None = None
    #: chaining of clips; skip-interval attention applies in training and editing alike
    long_video: LongVideoConfig = field(default_factory=LongVideoConfig)
    #: the reference's name for long_video=skip_interval (read through long_video_mode)
    use_consistency_attention_control: bool = False
    #: regional compilation: each repeated UNet block compiled in place (models.compile)
    compile: bool = False


#: the schemas of conf/train.yaml (train_schema) and conf/edit.yaml (edit_schema): the same keys
TrainConfig = EditConfig = RunConfig


def check_num_steps(cfg: DictConfig) -> None:
    _at_least(cfg, "num_steps", 2)


def num_edited_frames(cfg: DictConfig) -> int:
    """The edited first frames of an edit: one for a generated source (the demo, a toy case),
    else one per ``data.keyframe_paths`` entry."""
    return 1 if generated_source(cfg) else len(cfg.data.keyframe_paths or [])


def cross_field_checks(cfg: DictConfig, editing: bool) -> None:
    """The rules that tie groups together (each group's own values are checked beside its
    schema). Training reads none of them: it ignores matching, per-edit sets and continuing."""
    if not editing:
        return
    data, am = cfg.data, cfg.attention_matching
    if cfg.long_video.load_from_last_frames_latents and data.begin_clip_id == 0:
        raise InputError(
            "long_video.load_from_last_frames_latents",
            list(cfg.long_video.load_from_last_frames_latents),
            "continuing needs data.begin_clip_id > 0 (the clip after the saved one)",
        )
    if am.enabled and cfg.inversion.method != "edm":
        raise InputError(
            "attention_matching.enabled",
            True,
            "attention matching needs inversion=edm (inversion.method=none)",
        )
    if not generated_source(cfg):
        keyframes = list(data.keyframe_paths or [])
        if not keyframes:
            raise InputError(
                "data.keyframe_paths", data.keyframe_paths, "give at least one edited first frame"
            )
        stems = [Path(p).stem for p in keyframes]
        if len(set(stems)) != len(stems):
            raise InputError(
                "data.keyframe_paths",
                keyframes,
                "keyframe file names must differ (outputs are named after them)",
            )
    num_keyframes = num_edited_frames(cfg)
    if len(am.per_edit) > num_keyframes:
        raise InputError(
            "attention_matching.per_edit",
            len(am.per_edit),
            f"more per-edit parameter sets than keyframes ({num_keyframes})",
        )
    for i, params in enumerate(am.per_edit):
        if params.beta is not None:
            _pair(params.beta, f"attention_matching.per_edit[{i}].beta", ordered=True)
        if params.mask_thr is not None:
            _pair(params.mask_thr, f"attention_matching.per_edit[{i}].mask_thr")


def validate_train_config(cfg: DictConfig) -> None:
    """Checks of ``i2vedit-train`` that need no decoding and no model; reads, never writes."""
    check_long_video(cfg)
    check_model(cfg)
    check_conditioning(cfg)
    check_data(cfg)
    check_lora(cfg)
    check_trainer(cfg)
    cross_field_checks(cfg, editing=False)


def validate_edit_config(cfg: DictConfig) -> None:
    """Every check that needs no decoding and no model: raises InputError naming key and value;
    reads, never writes."""
    check_inversion(cfg)
    check_long_video(cfg)
    check_attention_matching(cfg)
    check_num_steps(cfg)
    check_metrics(cfg)
    check_sarp(cfg)
    check_model(cfg)
    check_conditioning(cfg)
    check_data(cfg)
    check_lora(cfg)
    check_trainer(cfg)
    cross_field_checks(cfg, editing=True)


# --------------------------------------------------------------------------- the app


@dataclass
class AppConfig:
    """What ``i2vedit-app`` reads (conf/app.yaml): the server, the limits on uploads and jobs,
    and the edit settings the page starts from."""

    server_name: str = "127.0.0.1"  #: the address served on (0.0.0.0: every interface)
    server_port: int = 7860
    max_upload_mb: float = 500.0  #: per uploaded file
    max_frames: int = 600  #: sampled source frames one job may edit
    video_types: list[str] = field(
        default_factory=lambda: [".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif"]
    )
    image_types: list[str] = field(
        default_factory=lambda: [".png", ".jpg", ".jpeg", ".webp", ".bmp"]
    )
    #: where job folders live; None: a temporary folder, removed when the app stops
    work_dir: str | None = None
    keep_jobs: int = 8  #: finished jobs whose files stay downloadable (older ones are removed)
    queue_size: int = 32  #: jobs that may wait; later submissions are refused
    #: the page's model: a conf/model option (registry.MODEL_OPTIONS: tiny, toy, svd, svd_xt)
    default_model: str = "toy"
    default_model_path: str | None = None  #: svd/svd_xt: a folder or hub id (None: the group's)
    #: Hydra overrides of the edit config that every job gets (e.g. [metrics=off, num_steps=10])
    edit_overrides: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- registration


def job_dir(prefix: str) -> str:
    """Default ``output_dir`` (the ``${i2vedit.job_dir:PREFIX}`` resolver): in a Hydra multirun
    the job's own folder (``hydra.sweep.dir/<job number>``), else ``PREFIX/<date>/<time>``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return HydraConfig.get().runtime.output_dir
    return f"{prefix}/{datetime.datetime.now():%Y-%m-%d/%H-%M-%S}"


def register_configs() -> None:
    """Register the schemas the YAML files in conf/ build on, and the resolvers they use."""
    OmegaConf.register_new_resolver("i2vedit.job_dir", job_dir, use_cache=True, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="edit_schema", node=RunConfig)
    cs.store(name="train_schema", node=RunConfig)
    cs.store(name="app_schema", node=AppConfig)


# --------------------------------------------------------------------------- keys


def dotted_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every key of a config, nested ones dotted (``attention_matching.beta``), groups too;
    list items are not entered and nothing is resolved."""
    keys = []
    for key, node in _children(cfg):
        keys.append(f"{prefix}{key}")
        if node is not None:
            keys += dotted_keys(node, f"{prefix}{key}.")
    return keys


def _children(cfg: DictConfig) -> list[tuple[str, DictConfig | None]]:
    """(key, the node if it is a config to enter) for every key, resolving nothing."""
    out = []
    for key in cfg.keys():
        plain = OmegaConf.is_interpolation(cfg, key) or OmegaConf.is_missing(cfg, key)
        node = None if plain else cfg[key]
        out.append((str(key), node if isinstance(node, DictConfig) else None))
    return out


def close_keys(key: str, known: list[str], n: int = 3) -> list[str]:
    """The known dotted keys closest to a mistyped one: a sibling (``attention_matching.betta``
    -> ``attention_matching.beta``), the same name under another parent (``beta`` ->
    ``attention_matching.beta``), or the key under its mistyped parent (``atention_matching.beta``
    -> ``attention_matching.beta``)."""
    parent, _, leaf = key.rpartition(".")
    if parent and parent not in known:
        found = [k for p in close_keys(parent, known, n) for k in _siblings(p, leaf, known, n)]
        return found[:n]
    found = _siblings(parent, leaf, known, n)
    if not found:
        leaves: dict[str, list[str]] = {}
        for k in known:
            leaves.setdefault(k.rpartition(".")[2], []).append(k)
        found = [k for m in difflib.get_close_matches(leaf, list(leaves), n) for k in leaves[m]]
    return found[:n]


def _siblings(parent: str, leaf: str, known: list[str], n: int) -> list[str]:
    """The keys under ``parent`` whose name is close to ``leaf``."""
    names = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent}
    return [names[m] for m in difflib.get_close_matches(leaf, list(names), n)]


def no_such_key(key: str, value: Any, known: list[str]) -> InputError:
    """The one-line error of an unknown key, with the closest known keys."""
    if not key.startswith("hydra."):
        known = [k for k in known if k != "hydra" and not k.startswith("hydra.")]
    found = close_keys(key, known)
    hint = f"; did you mean {' or '.join(found)}?" if found else ""
    return InputError(key, value, f"no such key{hint}")


def check_known_keys(cfg: DictConfig) -> None:
    """Refuse a key that the config's typed schema lacks (``+key=...`` overrides get past the
    schema while composing): an unknown key is an error, never silently unused."""
    added = _added_keys(cfg)
    if added:
        known = [
            k for k in dotted_keys(cfg) if not any(k == a or k.startswith(f"{a}.") for a in added)
        ]
        raise no_such_key(added[0], OmegaConf.select(cfg, added[0]), known)


def _added_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    schema = OmegaConf.get_type(cfg)
    fields = (
        {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    )
    added = []
    for key, node in _children(cfg):
        if fields is not None and key not in fields:
            added.append(f"{prefix}{key}")
        elif node is not None:
            added += _added_keys(node, f"{prefix}{key}.")
    return added
