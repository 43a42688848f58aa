"""The app's jobs, free of any web framework: a page's settings become Hydra overrides of the
edit config, uploads are checked like the command line checks its input, every job lives in
its own folder, and a job reports its plan and every step, and stops at the next step when
cancelled (``i2vedit.app.ui`` puts a Gradio page on top of this)."""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from i2vedit.data.video import load_image, probe_video, sample_video
from i2vedit.errors import InputError
from i2vedit.models.registry import MODEL_OPTIONS, model_kind
from i2vedit.progress import StepListener, step_listener

if TYPE_CHECKING:
    from i2vedit.tasks.plan import PreparedEdit

log = logging.getLogger(__name__)

MODELS = MODEL_OPTIONS  #: the conf/model options a job may pick: tiny, toy, svd, svd_xt
RERUN_NAME = "rerun.yaml"  #: the job's config, rerunnable with i2vedit-edit beside the inputs
OUTPUT_DIR = "out"
INPUT_DIR = "inputs"
AUTO_MASK = "auto"  #: the ``data.mask_paths`` entry of a mask computed from the edit
#: the colour (RGB) and opacity of an edit's mask laid over the source's first frame
OVERLAY_COLOUR = (255, 0, 96)
OVERLAY_ALPHA = 0.5

_compose_lock = threading.Lock()


def items() -> list[str]:
    """The item names of conf/item/ (what the page offers besides an upload)."""
    from importlib.resources import files

    folder = files("i2vedit.conf") / "item"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def beta_presets() -> dict[str, tuple[float, float]]:
    """The paper's three temporal windows, named as conf/sweep/beta.yaml comments them."""
    from importlib.resources import files

    text = (files("i2vedit.conf") / "sweep" / "beta.yaml").read_text()
    found = re.findall(r"\(([\d.]+), ([\d.]+)\) ([a-z ]+)", text)
    return {f"{name.strip()} ({b1}, {b2})": (float(b1), float(b2)) for b1, b2, name in found}


def compose_edit(overrides: list[str]) -> DictConfig:
    """The edit config (conf/edit.yaml) with ``overrides``, as ``i2vedit-edit`` would see it;
    a value the schema refuses becomes an ``InputError`` naming it."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from i2vedit.config import register_configs

    register_configs()
    with _compose_lock:
        try:
            if GlobalHydra.instance().is_initialized():  # inside i2vedit-app's Hydra main
                return compose("edit", overrides=overrides)
            with initialize_config_module("i2vedit.conf", version_base=None):
                return compose("edit", overrides=overrides)
        except (HydraException, OmegaConfBaseException) as err:
            first = str(err).strip().splitlines()[0]
            raise InputError("settings", " ".join(overrides), first) from None


def _quote(value: object) -> str:
    """A value as a Hydra override writes it (strings quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_quote(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


@dataclass
class EditRequest:
    """What the page asks for. ``None`` leaves the edit config's (or the item's) value."""

    item: str | None = None  #: a conf/item name; None: the uploaded video
    video: Path | None = None  #: an uploaded source video (with an item: replaces its video)
    keyframes: list[Path] = field(default_factory=list)  #: uploaded edited first frames
    #: per edited first frame, its mask: ``AUTO_MASK``, a mask image, or None (no mask);
    #: None as a whole leaves the config's (or the item's) ``data.mask_paths``
    masks: list[str | Path | None] | None = None
    start_t: float | None = None
    end_t: float | None = None  #: None or 0: the end of the video
    sample_fps: float | None = None
    output_fps: float | None = None
    beta: tuple[float, float] | None = None
    mask_thr: tuple[float, float] | None = None
    lora_steps: int | None = None  #: 0: no motion LoRA; N: checkpoint N (trained if missing)
    sarp: bool | None = None
    num_steps: int | None = None
    seed: int | None = None
    model: str | None = None  #: tiny, toy, svd, svd_xt; None: the item's or the app's
    model_path: str | None = None
    extra: list[str] = field(default_factory=list)  #: further Hydra overrides

    def overrides(self, base: list[str], output_dir: Path | None) -> list[str]:
        """Hydra overrides of the edit config: the app's ``base``, then this request's."""
        out = list(base)
        if self.item is not None:
            if self.item not in items():
                raise InputError("item", self.item, f"expected one of {items()}")
            out.append(f"+item={self.item}")
        if self.model is not None:
            if self.model not in MODELS:
                raise InputError("model", self.model, f"expected one of {list(MODELS)}")
            out.append(f"model={self.model}")
        if self.model_path:
            out.append(f"model.path={_quote(self.model_path)}")
        if self.video is not None:
            out += [f"data.video_path={_quote(str(self.video))}", "data.toy_case=null"]
        if self.keyframes:
            out.append(f"data.keyframe_paths={_quote([str(p) for p in self.keyframes])}")
        if self.masks is not None:
            out.append(f"data.mask_paths={_quote(mask_entries(self.masks) or None)}")
        for key, value in (
            ("data.start_t", self.start_t),
            ("data.sample_fps", self.sample_fps),
            ("num_steps", self.num_steps),
            ("seed", self.seed),
            ("sarp.enabled", self.sarp),
        ):
            if value is not None:
                out.append(f"{key}={_quote(value)}")
        if self.end_t is not None:
            out.append(f"data.end_t={_quote(self.end_t or None)}")
        if self.output_fps is not None:
            out.append(f"data.output_fps={_quote(self.output_fps or None)}")
        for key, pair in (
            ("attention_matching.beta", self.beta),
            ("attention_matching.mask_thr", self.mask_thr),
        ):
            if pair is not None:
                out.append(f"{key}={_quote([float(v) for v in pair])}")
        if self.lora_steps is not None:
            steps = int(self.lora_steps)
            if steps < 0:
                raise InputError("lora_steps", steps, "must be 0 (no motion LoRA) or more")
            if steps == 0:
                out.append("lora=none")
            else:
                every = 50 if steps % 50 == 0 else steps
                out += [
                    "lora=none",
                    f"lora.checkpoint={steps}",
                    f"lora.max_steps={steps}",
                    f"lora.checkpoint_every={every}",
                ]
        out += self.extra
        if output_dir is not None:
            out.append(f"output_dir={_quote(str(output_dir))}")
        return out


def mask_entries(masks: list[str | Path | None]) -> list[str | None]:
    """``data.mask_paths`` of per-edit masks: ``AUTO_MASK``, a path as a string, or None (no
    mask); trailing Nones dropped (a shorter list leaves the later edits unmasked)."""
    entries = [None if m is None else str(m) for m in masks]
    while entries and entries[-1] is None:
        entries.pop()
    return entries


# ----------------------------------------------------------------------------- uploads


def safe_name(name: str) -> str:
    """A file name kept to letters, digits, dot, dash and underscore."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).strip("._") or "upload"
    return stem[:120]


def check_upload(path: Path, key: str, types: list[str], max_mb: float, name: str) -> None:
    """Type and size of an uploaded file, then whether it decodes (a video's frames, an
    image's pixels); ``InputError`` names ``key`` and the file's own name."""
    suffix = Path(name).suffix.lower()
    if suffix not in [t.lower() for t in types]:
        raise InputError(key, name, f"unsupported file type {suffix or '(none)'}; expected {types}")
    if not path.is_file():
        raise InputError(key, name, "the upload did not arrive")
    size_mb = path.stat().st_size / 1e6
    if size_mb > max_mb:
        raise InputError(key, name, f"is {size_mb:.1f} MB; the limit is max_upload_mb={max_mb:g}")
    try:
        if key == "data.video_path":
            info = probe_video(path, key)
            if not (info.duration > 0):
                raise InputError(key, name, "the video has no frames")
        else:
            load_image(path, key)
    except InputError as err:  # named by the user's file name, not the upload's temp path
        reason = err.reason.replace(str(path), name).replace(str(path.parent) + "/", "")
        raise InputError(key, name, reason) from None


def first_frame_png(video: Path, start_t: float, out: Path) -> Path:
    """The frame showing at ``start_t`` as a PNG (to edit in any image editor)."""
    from PIL import Image

    sampled = sample_video(video, 1.0, start_t, None)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sampled.frames[0].numpy()).save(out)
    return out


# ----------------------------------------------------------------------------- folders


@dataclass
class Job:
    id: str
    folder: Path
    created: float = field(default_factory=time.time)

    @property
    def inputs(self) -> Path:
        return self.folder / INPUT_DIR

    @property
    def outputs(self) -> Path:
        return self.folder / OUTPUT_DIR


class JobFolders:
    """One folder per job under ``root``: its uploads and its outputs. Failed and cancelled
    jobs are removed at once; finished ones are kept (their files stay downloadable) until
    ``keep`` newer jobs have finished, or the app stops."""

    def __init__(self, root: Path | None, keep: int) -> None:
        self.owned = root is None  # a temporary root goes away with the app
        self.root = Path(tempfile.mkdtemp(prefix="i2vedit-app-")) if root is None else root
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, keep)
        self.jobs: dict[str, Job] = {}
        self.finished: list[str] = []
        self.scratches: list[Path] = []
        self.lock = threading.Lock()

    def scratch(self, name: str) -> Path:
        """A folder of the app's own under the root (uploads, first frames), removed with the
        app."""
        path = self.root / f"_{name}"
        path.mkdir(exist_ok=True)
        if path not in self.scratches:
            self.scratches.append(path)
        return path

    def new(self) -> Job:
        job = Job(uuid.uuid4().hex[:12], Path())
        job.folder = self.root / job.id
        job.inputs.mkdir(parents=True)
        job.outputs.mkdir()
        with self.lock:
            self.jobs[job.id] = job
        return job

    def add_upload(self, job: Job, path: Path, name: str) -> Path:
        """Copy an upload into the job's folder under its own (safe) name."""
        target = job.inputs / safe_name(name)
        n = 1
        while target.exists():
            target = job.inputs / f"{Path(safe_name(name)).stem}-{n}{Path(name).suffix.lower()}"
            n += 1
        shutil.copyfile(path, target)
        return target

    def remove(self, job: Job) -> None:
        with self.lock:
            self.jobs.pop(job.id, None)
            if job.id in self.finished:
                self.finished.remove(job.id)
        shutil.rmtree(job.folder, ignore_errors=True)

    def finish(self, job: Job) -> None:
        """Keep a finished job; remove the oldest finished ones beyond ``keep``."""
        with self.lock:
            self.finished.append(job.id)
            old = self.finished[: -self.keep]
        for job_id in old:
            stale = self.jobs.get(job_id)
            if stale is not None:
                self.remove(stale)

    def file(self, job_id: str, name: str) -> Path | None:
        """An output file of a live job, or None (no other path is ever served)."""
        job = self.jobs.get(job_id)
        if job is None or name != Path(name).name:
            return None
        path = job.outputs / name
        return path if path.is_file() else None

    def close(self) -> None:
        with self.lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            self.remove(job)
        for path in self.scratches:
            shutil.rmtree(path, ignore_errors=True)
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)


# ----------------------------------------------------------------------------- running


@dataclass
class Plan:
    title: str
    columns: list[str]
    rows: list[list[str]]
    caption: str
    #: per masked edit: its first frame's mask over the source's first frame, and a caption
    masks: list[tuple[np.ndarray, str]] = field(default_factory=list)

    def markdown(self) -> str:
        def cell(text: str) -> str:
            return text.replace("|", "\\|")

        lines = [
            f"**{self.title}**",
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "---|" * len(self.columns),
        ]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join([*lines, "", self.caption])


@dataclass
class JobResult:
    job: Job
    plan: Plan
    edited: list[Path]  #: one video per edited first frame
    source: Path  #: the source frames the edits follow, as a video
    config: Path  #: the resolved config of the run
    rerun: Path  #: the config to rerun the edit with i2vedit-edit
    metrics: dict[str, dict]
    seconds: dict[str, float]
    frames: int  #: frames per edited video
    masks: dict[str, Path] = field(default_factory=dict)  #: per masked edit, its mask video


def make_plan(cfg: DictConfig, max_frames: int) -> tuple[Plan, PreparedEdit]:
    """Check the request and plan it (no model loads); ``InputError`` on bad input. Returns
    the plan to show and the prepared edit that ``run_edit`` goes on from."""
    from i2vedit.tasks.plan import plan_table, prepare_edit

    prepared = prepare_edit(cfg)
    sampled = prepared.inputs.source.num_sampled
    if sampled > max_frames:
        raise InputError(
            "data.end_t",
            cfg.data.end_t,
            f"{sampled} frames would be sampled; this app edits at most max_frames={max_frames} "
            "(shorten the time range or lower the fps)",
        )
    return Plan(
        *plan_table(cfg, prepared.inputs, prepared.plans), mask_overlays(prepared)
    ), prepared


def overlay_mask(
    frame: np.ndarray,
    mask: np.ndarray,
    colour: tuple[int, int, int] = OVERLAY_COLOUR,
    alpha: float = OVERLAY_ALPHA,
) -> np.ndarray:
    """uint8 (H, W, 3): ``frame`` with ``colour`` blended in at ``alpha`` where ``mask`` (bool,
    resized to the frame by nearest neighbour when its size differs) is True, rounded half up;
    the rest unchanged."""
    from PIL import Image

    h, w = frame.shape[:2]
    if mask.shape != (h, w):
        mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
    out = frame.copy()
    blend = frame[mask].astype(np.float64) * (1 - alpha) + np.asarray(colour) * alpha
    out[mask] = np.floor(blend + 0.5).astype(np.uint8)
    return out


def mask_overlays(prepared: PreparedEdit) -> list[tuple[np.ndarray, str]]:
    """Each masked edit's first-frame mask (as the edit will use it, read before any model
    loads) over the first selected source frame, with a caption naming the edit."""
    inputs = prepared.inputs
    frame = inputs.source.clips[0].frames[0].numpy()
    out = []
    for keyframe in inputs.keyframes:
        mask = keyframe.mask
        if mask is not None:
            share = 100 * float(mask.first.mean())
            caption = f"{keyframe.stem}: {mask.kind} mask, {share:.1f}% of the first frame"
            out.append((overlay_mask(frame, mask.first), caption))
    return out


def write_rerun_config(cfg: DictConfig, job: Job) -> Path:
    """The job's config for ``i2vedit-edit --config-dir DIR --config-name rerun``, run in a
    folder holding the uploaded files under the names the page showed."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data["defaults"] = [
        "edit_schema",
        {"override hydra/job_logging": "none"},
        {"override hydra/hydra_logging": "none"},
        "_self_",
    ]
    # as conf/edit.yaml: Hydra itself writes nothing and stays in the folder it is run in
    data["hydra"] = {"run": {"dir": "."}, "output_subdir": None, "job": {"chdir": False}}
    d = data["data"]
    if d.get("video_path") and Path(d["video_path"]).parent == job.inputs:
        d["video_path"] = Path(d["video_path"]).name
    for key in ("keyframe_paths", "mask_paths"):
        if d.get(key):
            d[key] = [
                Path(p).name if p is not None and Path(p).parent == job.inputs else p
                for p in d[key]
            ]
    data["output_dir"] = f"outputs/{cfg.name or 'app'}-{job.id}"
    path = job.outputs / RERUN_NAME
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(data)))
    return path


class ModelSlots:
    """The accelerators jobs run on, one job each (on a machine without one, the CPU), and the
    last model loaded on each, reused by the next job that asks for the same weights."""

    def __init__(self) -> None:
        accelerator = torch.accelerator.current_accelerator(check_available=True)
        if accelerator is None:
            self.devices = [torch.device("cpu")]
        else:
            count = torch.accelerator.device_count()
            self.devices = [torch.device(accelerator.type, i) for i in range(count)]
        self.free = list(self.devices)
        self.loaded: dict[torch.device, tuple[tuple, object]] = {}
        self.cond = threading.Condition()

    def __len__(self) -> int:
        return len(self.devices)

    def take(self) -> torch.device:
        with self.cond:
            while not self.free:
                self.cond.wait()
            return self.free.pop(0)

    def give(self, device: torch.device) -> None:
        with self.cond:
            self.free.append(device)
            self.cond.notify()

    def model(self, cfg: DictConfig, device: torch.device):
        """The job's model on ``device``: the one loaded before if the weights match."""
        from i2vedit.models.device import resolve_dtype
        from i2vedit.models.svd import load_model

        m = cfg.model
        dtype = resolve_dtype(cfg.dtype, device)
        path = m.path if model_kind(m.kind).named_by_path else None  # else the path is unused
        key = (m.kind, path, m.seed, m.variant, dtype, cfg.compile)
        held = self.loaded.get(device)
        if held is not None and held[0] == key:
            log.info("model reused on %s", device)
            return held[1]
        self.loaded.pop(device, None)
        loaded = load_model(m.kind, m.path, m.seed, m.variant, device, dtype, key[-1])
        self.loaded[device] = (key, loaded)
        return loaded


@dataclass
class AppState:
    """What every job shares: the app's settings, its job folders and its devices."""

    settings: DictConfig
    folders: JobFolders
    slots: ModelSlots

    @classmethod
    def create(cls, settings: DictConfig) -> AppState:
        root = Path(settings.work_dir).expanduser() if settings.work_dir else None
        return cls(settings, JobFolders(root, settings.keep_jobs), ModelSlots())

    def base_overrides(self) -> list[str]:
        """The edit-config overrides every job starts from."""
        return list(self.settings.edit_overrides)

    def job_overrides(self, request: EditRequest, output_dir: Path | None) -> list[str]:
        """The overrides of a job's edit config: the app's, its default model unless the
        request names one or picks an item (whose own model then applies), the request's."""
        base = self.base_overrides()
        if request.model is None and request.item is None:
            base += self.model_overrides()
        if request.item is not None and request.keyframes and request.video is None:
            # the item's video with the user's own edits of its first frame
            from i2vedit.tasks.source import source_paths

            item_cfg = compose_edit(replace(request, keyframes=[]).overrides(base, None))
            request = replace(request, video=source_paths(item_cfg)[0])
        return request.overrides(base, output_dir)

    def model_overrides(self) -> list[str]:
        """The app's default model, for a job that names none and has no item."""
        out = [f"model={self.settings.default_model}"]
        if self.settings.default_model_path:
            out.append(f"model.path={_quote(self.settings.default_model_path)}")
        return out

    def defaults(self) -> DictConfig:
        """The edit config the page's fields start from."""
        return compose_edit([*self.base_overrides(), *self.model_overrides()])


def run_job(
    state: AppState,
    request: EditRequest,
    job: Job,
    on_plan: Callable[[Plan], None] | None = None,
    listener: StepListener | None = None,
) -> JobResult:
    """Take a free device, plan ``request`` for it (before any model loads), then edit,
    reporting the plan and every step; a listener that raises ``Cancelled`` stops the job at
    that step. Whatever fails, the caller owns ``job``'s folder (``JobFolders.remove``)."""
    from i2vedit.tasks.edit import run_edit

    cfg = compose_edit(state.job_overrides(request, job.outputs))
    device = state.slots.take()
    try:
        cfg.device = str(device)  # the plan's dtype and cache keys are the device's
        plan, prepared = make_plan(cfg, state.settings.max_frames)
        if on_plan is not None:
            on_plan(plan)
        model = state.slots.model(cfg, device)
        with step_listener(listener or (lambda *_: None)):
            result = run_edit(cfg, model, prepared)
    finally:
        state.slots.give(device)
    rerun = write_rerun_config(cfg, job)
    frames = int(sum(p.new_frames for p in result.plan if not p.anchor))
    return JobResult(
        job,
        plan,
        result.edited,
        result.source,
        result.config,
        rerun,
        result.metrics,
        result.seconds,
        frames,
        dict(result.masks),
    )


def describe_metrics(metrics: dict[str, dict]) -> list[list[str]]:
    """Rows (edit, metric, value) of the run's numeric metrics, for display."""
    rows = []
    for stem, values in metrics.items():
        for name, value in values.items():
            if isinstance(value, float) and math.isfinite(value):
                rows.append([stem, name, f"{value:.4g}"])
    return rows


def check_settings(settings: DictConfig) -> None:
    """The app's own settings, checked before anything starts."""
    if not 0 <= int(settings.server_port) <= 65535:
        raise InputError("server_port", settings.server_port, "must be a port number, 0..65535")
    for key in ("max_upload_mb", "max_frames", "keep_jobs", "queue_size"):
        if not settings[key] > 0:
            raise InputError(key, settings[key], "must be positive")
    if settings.default_model not in MODELS:
        raise InputError("default_model", settings.default_model, f"expected one of {list(MODELS)}")
    for key in ("video_types", "image_types"):
        bad = [t for t in settings[key] if not str(t).startswith(".")]
        if bad or not settings[key]:
            raise InputError(key, list(settings[key]), "list file suffixes such as .mp4")
