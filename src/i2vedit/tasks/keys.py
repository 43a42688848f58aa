"""The cache keys of every artifact, in one place: what determines a clip's motion LoRA, its
inversion (with its attention records or trajectory) and each of its edits. An entry is
reused exactly when everything listed here is the same."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from i2vedit.cache import TensorEntry, content_digest, key_of
from i2vedit.config import long_video_mode
from i2vedit.models.svd import model_identity
from i2vedit.tasks.inputs import Keyframe

#: the ``data`` keys that decide which source frames a clip holds
SAMPLING_KEYS = ("sample_fps", "start_t", "end_t", "chunk_size", "overlay_size", "folder_fps")
#: the ``attention_matching`` keys, besides each edit's beta and mask_thr, that change an edit
MATCHING_KEYS = ("enabled", "spatial_self_replace_steps", "temporal_self_replace_steps", "pairing")
#: the ``lora`` keys that change the trained weights
LORA_TRAINING_KEYS = ("rank", "alpha", "dropout", "lr", "weight_decay", "accumulate_grad_batches")
#: the ``conditioning`` keys of the (unguided) inversion
INVERSION_CONDITIONING_KEYS = ("fps", "motion_bucket_id", "noise_aug_strength")


def item_name(cfg: DictConfig, video_path: Path) -> str:
    """What names the item's cache entries: ``name`` if set, else the video's file stem."""
    return cfg.name or video_path.stem


def sampling_key(cfg: DictConfig) -> dict:
    """The source-frame selection, as it enters every key."""
    return {k: cfg.data[k] for k in SAMPLING_KEYS}


def lora_root(cfg: DictConfig, video_path: Path, precision: str) -> tuple[Path, dict]:
    """The cache folder of an item's motion LoRAs (``<root>/clip_<k>/checkpoint-<step>/``) and
    the inputs its key hashes: everything that changes the trained weights."""
    data, lora = cfg.data, cfg.lora
    inputs = {
        "source": content_digest(video_path),
        "sampling": sampling_key(cfg),
        "resolution": list(lora.resolution),
        "pad_to_fit": data.pad_to_fit,
        "model": model_identity(cfg.model.kind, cfg.model.path, cfg.model.seed),
        "lora": {k: lora[k] for k in LORA_TRAINING_KEYS},
        "precision": precision,
        "conditioning": OmegaConf.to_container(cfg.conditioning),
        "seed": cfg.seed,
    }
    if long_video_mode(cfg) == "skip_interval":  # later clips train attending to clip 0
        inputs["long_video"] = "skip_interval"
    root = (
        Path(cfg.paths.cache_dir).expanduser()
        / "lora"
        / f"{item_name(cfg, video_path)}-{key_of(inputs)}"
    )
    return root, inputs


def inversion_entry(
    cfg: DictConfig, video_path: Path, clip_id: int, identity: str, dtype
) -> TensorEntry:
    """The cache entry of a clip's inversion: keyed by all that determines it."""
    data, am = cfg.data, cfg.attention_matching
    key = {
        "source": content_digest(video_path),
        "sampling": sampling_key(cfg),
        "clip": clip_id,
        "resolution": list(data.output_res),
        "pad_to_fit": data.pad_to_fit,
        "model": identity,
        "dtype": str(dtype),
        "num_steps": cfg.num_steps,
        "sarp": OmegaConf.to_container(cfg.sarp),
        "inversion": cfg.inversion.method,
        "conditioning": {k: cfg.conditioning[k] for k in INVERSION_CONDITIONING_KEYS},
        "seed": cfg.seed,
        "records": am.enabled,
        "pairing": am.pairing,
        "long_video": long_video_mode(cfg),
    }
    name = f"{item_name(cfg, video_path)}-clip{clip_id}"
    return TensorEntry(cfg.paths.cache_dir, "inversion", name, key)


def edit_entry(
    cfg: DictConfig,
    inversion: TensorEntry,
    keyframe: Keyframe,
    lora_checkpoint: Path | None,
    previous: str | None,
    mask: str | None = None,
) -> TensorEntry:
    """The cache entry of one edit of one clip: the inversion it starts from, the edit's own
    settings, the LoRA, the previous clip's entry of the same edit (the chain) and, for a
    masked edit only, its mask (``EditMask.digest``: the clip's masks and the mask settings;
    an unmasked edit's key is what it was before masks existed)."""
    key = {
        "inversion": inversion.key,
        "keyframe": content_digest(keyframe.path) if previous is None else None,
        "previous": previous,
        "beta": list(keyframe.beta),
        "mask_thr": list(keyframe.mask_thr),
        "matching": {k: cfg.attention_matching[k] for k in MATCHING_KEYS},
        "lora": None if lora_checkpoint is None else [str(lora_checkpoint), cfg.lora.scale],
        "guidance": [cfg.conditioning.min_guidance_scale, cfg.conditioning.max_guidance_scale],
        "decode_chunk_size": cfg.model.decode_chunk_size,
    }
    if mask is not None:
        key["mask"] = mask
    name = f"{inversion.folder.name.rsplit('-', 1)[0]}-{keyframe.stem}"
    return TensorEntry(cfg.paths.cache_dir, "edits", name, key)
