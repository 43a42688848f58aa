"""Planning an edit before any model loads: which clips, which motion-LoRA checkpoint each
loads (or trains first), every clip's cache entries, the frames each adds to the output, and
the plan table the command line and the app show."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.table import Table

from i2vedit.cache import MANIFEST, TensorEntry
from i2vedit.config import long_video_mode, validate_edit_config
from i2vedit.errors import InputError
from i2vedit.models.device import precision_of, resolve_device, resolve_dtype
from i2vedit.models.svd import LoadedModel, model_identity
from i2vedit.progress import CONSOLE
from i2vedit.tasks.inputs import EditInputs, read_inputs
from i2vedit.tasks.keys import edit_entry, inversion_entry, lora_root
from i2vedit.tasks.source import Clip
from i2vedit.training.module import checkpoint_steps


@dataclass
class LoraPlan:
    """Which motion-LoRA checkpoint a clip's edit loads, and whether it must be trained first."""

    clip_dir: Path
    checkpoint: Path
    train: bool
    precision: str
    inputs: dict


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
    #: index of its first frame among the selected clips joined (each shared frame once): where
    #: its masks start in an ``EditMask``'s frames
    mask_start: int = 0


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
    if long_video_mode(cfg) == "skip_interval" and source.clips[0].clip_id > 0:
        first = source.first_clip  # its keys and values are attended to by every later clip
        lora = plan_lora(cfg, inputs.video_path, first, dtype)
        inversion = inversion_entry(cfg, inputs.video_path, first.clip_id, identity, dtype)
        edits = {
            k.stem: edit_entry(cfg, inversion, k, _checkpoint(lora), None) for k in inputs.keyframes
        }
        plans.append(ClipPlan(first, lora, 0, 0, inversion, edits, anchor=True))
    previous = {stem: digest for stem, digest in inputs.continued_digests.items()}
    start = 0  # in the selected clips joined
    for i, clip in enumerate(source.clips):
        new = len(clip.frames) - (cfg.data.overlay_size if i or inputs.continued else 0)
        lora = plan_lora(cfg, inputs.video_path, clip, dtype)
        inversion = inversion_entry(cfg, inputs.video_path, clip.clip_id, identity, dtype)
        edits = {
            k.stem: edit_entry(
                cfg,
                inversion,
                k,
                _checkpoint(lora),
                previous.get(k.stem),
                None if k.mask is None else k.mask.digest(start, start + len(clip.frames)),
            )
            for k in inputs.keyframes
        }
        previous = {stem: entry.key for stem, entry in edits.items()}
        plans.append(ClipPlan(clip, lora, position, new, inversion, edits, mask_start=start))
        position += new
        start += len(clip.frames) - cfg.data.overlay_size
    return plans


def _checkpoint(lora: LoraPlan | None) -> Path | None:
    return None if lora is None else lora.checkpoint


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
