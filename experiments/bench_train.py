"""Benchmark of motion-LoRA training steps: a real Lightning ``Trainer.fit`` of
``MotionLoRAModule`` on a ``OneClipDataModule``, as ``i2vedit-train`` runs it for one clip.

The values (LoRA rank, alpha, dropout, learning rate, weight decay, the training resolution and
clip length, the Trainer's settings) are those of ``conf/train.yaml`` with the model's
``conf/model`` option. The clip is random: for ``--model tiny`` random frames go through
``encode_video`` and ``i2vedit.runner.source_condition``; for ``--model full`` the latents and
the conditioning (CLIP embedding, first-frame latents, time ids) are random tensors of the
right shapes (the CLIP and the VAE are built and held in memory, as in a training run, but not
run). Each step is timed between ``on_train_batch_start`` and ``on_train_batch_end``
(synchronised on accelerators), after a few untimed warm-up steps; the peak memory is reset
after the warm-up.

    python experiments/bench_train.py --model tiny --threads 1 --checkpointing blocks diffusers none
    python experiments/bench_train.py --model full --section "Training, full-size SVD, <GPU name>"

``--model full`` is the full-size SVD img2vid architecture with random weights
(``i2vedit.models.specs``): the time and memory of the real model, without its checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import peft
import torch
from omegaconf import DictConfig

EXPERIMENTS = Path(__file__).resolve().parent
if str(EXPERIMENTS) not in sys.path:  # run as a script, experiments/ is already first
    sys.path.insert(0, str(EXPERIMENTS))

from benchlib import (  # noqa: E402  (benchlib also puts src/ on the path if needed)
    BENCHMARKS_MD,
    GB,
    MB,
    MODEL_OPTIONS,
    Meter,
    OutOfMemory,
    bench_config,
    build_model,
    device_name,
    dtype_name,
    empty_cache,
    environment_lines,
    fmt_gb,
    latents_hw,
    markdown_table,
    model_summary,
    show,
    synchronize,
    write_section,
)
from i2vedit.core.conditioning import ConditioningParams  # noqa: E402
from i2vedit.core.edm import Condition, encode_video  # noqa: E402
from i2vedit.core.lora import (  # noqa: E402
    motion_lora_config,
    remove_lora,
    temporal_linear_layers,
)
from i2vedit.data.resize import SIZE_MULTIPLE  # noqa: E402
from i2vedit.models.device import PRECISION_DTYPES, resolve_device, resolve_precision  # noqa: E402
from i2vedit.models.svd import LoadedModel  # noqa: E402
from i2vedit.progress import setup_logging  # noqa: E402
from i2vedit.runner import source_condition  # noqa: E402
from i2vedit.training.checkpointing import POLICIES  # noqa: E402
from i2vedit.training.module import MotionLoRAModule, OneClipDataModule  # noqa: E402

log = logging.getLogger("bench_train")

# The filters of i2vedit.tasks.train (not imported: it needs av), plus the one-clip dataloader's
# worker advice, which does not apply to a clip already in memory. Lightning's LeafSpec notice
# is filtered whatever its category.
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")

#: The issue's targets for one clip at 512x896x14 on one H100 with bf16, and the reference.
TARGET_PEAK_GB = 16.0
TARGET_SECONDS_250 = 180.0
PROJECTED_STEPS = (250, 500)

#: what each ``lora.checkpointing`` policy recomputes in backward
CHECKPOINTING = {
    "none": "none",
    "diffusers": "unet.enable_gradient_checkpointing() (resnets and spatial transformer blocks)",
    "blocks": "every spatial and temporal transformer block and every resnet "
    "(i2vedit.training.checkpointing)",
}
assert tuple(CHECKPOINTING) == POLICIES


# --------------------------------------------------------------------------- the clip


def random_clip(model: LoadedModel, cfg: DictConfig, kind: str) -> tuple[torch.Tensor, Condition]:
    """Latents (1, F, 4, h, w) in float32 and the unguided conditioning of a random clip of
    ``data.chunk_size`` frames at ``lora.resolution``, on the UNet's device, in the dtypes that
    ``encode_video`` and ``source_condition`` give."""
    pipe, device, dtype = model.pipe, model.device, model.unet.dtype
    frames, (height, width) = cfg.data.chunk_size, cfg.lora.resolution
    g = torch.Generator().manual_seed(cfg.seed)
    if kind == "tiny":
        clip = (torch.rand(frames, 3, height, width, generator=g) * 2 - 1).to(device)
        with torch.no_grad():
            latents = encode_video(pipe, clip, cfg.model.decode_chunk_size)
            cond = source_condition(cfg, model, clip, frames, sarp_done=True)  # training: no SARP
        return latents, cond
    h, w = latents_hw(pipe, height, width)
    channels = pipe.unet.config.out_channels
    params = ConditioningParams(**cfg.conditioning)
    latents = torch.randn(1, frames, channels, h, w, generator=g).to(device)
    image = torch.randn(1, 1, channels, h, w, generator=g).repeat(1, frames, 1, 1, 1)
    width_embed = pipe.unet.config.cross_attention_dim
    time_ids = torch.tensor([[params.fps - 1, params.motion_bucket_id, params.noise_aug_strength]])
    cond = Condition(
        embeddings=torch.randn(1, 1, width_embed, generator=g).to(device, dtype),
        image_latents=image.to(device, dtype),
        time_ids=time_ids.to(device, dtype),
        guided=False,
    )
    return latents, cond


# --------------------------------------------------------------------------- measurement


class StepTimer(L.Callback):
    """Times every training step (synchronised), and runs the warm-up and the timed steps as
    two ``Meter`` stages: the peak memory is reset between them."""

    def __init__(self, device: torch.device, warmup: int, steps: int, meter: Meter) -> None:
        self.device, self.warmup, self.steps, self.meter = device, warmup, steps, meter
        self.seconds: list[float] = []
        self.done = 0
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.done == 0 and self.warmup:
            self.meter.begin("warm-up", self.warmup)
        if self.done == self.warmup:
            self.meter.end()
            self.meter.begin("timed", self.steps)
        synchronize(self.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - self._start)
        self.done += 1
        if self.done == self.warmup + self.steps:
            self.meter.end()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.meter.end(exception)  # an out-of-memory stage is recorded as such

    @property
    def timed(self) -> list[float]:
        return self.seconds[self.warmup :]


@dataclass
class Result:
    checkpointing: str
    timed: list[float] = field(default_factory=list)
    loop_seconds: float | None = None  #: the timed stage, between-step overhead included
    peak: int | None = None
    start_memory: int | None = None  #: held when the timed steps start (after the warm-up)
    fit_seconds: float = 0.0
    failure: str = ""

    @property
    def per_step(self) -> float | None:
        """Seconds per step over the whole timed loop; None when the run did not finish (a run
        out of memory cannot be projected to 250 steps)."""
        if self.failure or self.loop_seconds is None or not self.timed:
            return None
        return self.loop_seconds / len(self.timed)


@dataclass
class LoRASize:
    layers: int
    params: int
    nbytes: int


def train_once(
    model: LoadedModel,
    latents: torch.Tensor,
    cond: Condition,
    args: argparse.Namespace,
    cfg: DictConfig,
    precision: str,
    checkpointing: str,
) -> tuple[Result, LoRASize]:
    """One ``Trainer.fit`` of warm-up + timed steps; the UNet is left as it was found."""
    unet, device, lora = model.unet, model.device, cfg.lora
    result = Result(checkpointing)
    meter = Meter(device)
    timer = StepTimer(device, args.warmup, args.steps, meter)
    total = args.warmup + args.steps
    # counted before injection: peft then shortens a long target_modules list to suffixes
    layers = len(temporal_linear_layers(unet))
    config = motion_lora_config(unet, lora.rank, lora.alpha, lora.dropout)
    module = MotionLoRAModule(
        unet,
        config,
        lora.lr,
        lora.weight_decay,
        cfg.seed,
        checkpointing=checkpointing,
    )
    params = module.lora_params
    size = LoRASize(
        layers, sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)
    )
    trainer = lora_trainer(cfg, precision, total, timer)
    datamodule = OneClipDataModule(latents, cond, total)
    log.info(
        "training: checkpointing %s, %s, %d warm-up + %d timed steps",
        checkpointing,
        precision,
        args.warmup,
        args.steps,
    )
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule)
    except OutOfMemory as err:
        result.failure = f"OUT OF MEMORY in step {timer.done + 1}"
        log.error("%s: %s", result.failure, str(err).splitlines()[0])
    finally:
        result.fit_seconds = time.perf_counter() - start
        module.uninstall()  # the fit's end did it already, unless it never began
        del trainer, module, datamodule  # the optimizer state goes with them
        restore_unet(unet, device)
    result.timed = timer.timed
    take_stages(result, meter)
    return result, size


def lora_trainer(cfg: DictConfig, precision: str, steps: int, timer: StepTimer) -> L.Trainer:
    """A Lightning Trainer as ``i2vedit-train`` makes one (``trainer`` group), for ``steps``
    steps timed by ``timer``, without a logger, checkpoints or a progress bar."""
    return L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        precision=precision,
        max_steps=steps,
        logger=False,
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        num_sanity_val_steps=0,
    )


def restore_unet(unet: torch.nn.Module, device: torch.device) -> None:
    """The UNet as it was before training: no LoRA, frozen, on ``device`` (the module's fit
    has already taken its checkpointing off)."""
    remove_lora(unet)
    unet.eval()
    unet.requires_grad_(False)
    unet.to(device)  # Lightning's teardown moves the module to the host
    empty_cache(device)


def take_stages(result: Result, meter: Meter) -> None:
    """The peak and held memory, and the loop's seconds, of the warm-up and timed stages."""
    warm, timed = meter.row("warm-up"), meter.row("timed")
    if warm is not None:
        result.start_memory = warm.held
    if timed is not None:
        result.peak = timed.peak
        if not timed.note:  # not out of memory
            result.loop_seconds = timed.seconds
    elif warm is not None:
        result.peak = warm.peak  # failed in the warm-up: its peak is what there is


# --------------------------------------------------------------------------- reports


def fmt_minutes(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.2f}"


def result_row(result: Result) -> list[str]:
    timed, per_step = result.timed, result.per_step
    mean = f"{statistics.fmean(timed):.4f}" if timed else "n/a"
    median = f"{statistics.median(timed):.4f}" if timed else "n/a"
    notes = [result.failure] if result.failure else []
    if result.failure and timed:
        notes.append(f"{len(timed)} timed steps ran")
    notes.append(f"fit {result.fit_seconds:.1f} s in all")
    return [
        result.checkpointing,
        mean,
        median,
        f"{1 / per_step:.3f}" if per_step else "n/a",
        *(fmt_minutes(per_step * n if per_step else None) for n in PROJECTED_STEPS),
        fmt_gb(result.peak),
        fmt_gb(result.start_memory),
        "; ".join(notes),
    ]


def target_lines(
    args: argparse.Namespace, device: torch.device, precision: str, results: list[Result]
) -> list[str]:
    lines = [
        f"- Targets (the issue, at 512x896x14 on one H100 with bf16): at most "
        f"{TARGET_PEAK_GB:.0f} GB peak and 250 steps in at most {TARGET_SECONDS_250 / 60:.0f} "
        f"minutes. The reference trains 250 steps in about 25 minutes on an A100 and wants "
        f"80 GB of GPU memory"
    ]
    if args.model != "full" or device.type == "cpu":
        lines[0] += "; the targets are for the full-size model on a GPU, not for this run"
        return lines
    if precision != "bf16-mixed":
        lines[0] += f"; this run is {precision}, not bf16-mixed"
    for result in results:
        if result.failure:
            verdict = "out of memory"
        else:
            peak_ok = result.peak is not None and result.peak <= TARGET_PEAK_GB * GB
            time_ok = result.per_step is not None and result.per_step * 250 <= TARGET_SECONDS_250
            verdict = (
                f"peak {fmt_gb(result.peak)} GB ({'met' if peak_ok else 'missed'}), 250 steps "
                f"in {fmt_minutes(result.per_step * 250)} min ({'met' if time_ok else 'missed'})"
            )
        lines.append(f"  - checkpointing {result.checkpointing}: {verdict}")
    return lines


def memory_note(device: torch.device, meter: Meter) -> str:
    if device.type != "cpu":
        return (
            "peak allocated accelerator memory over the timed steps (reset after the warm-up; "
            "weights, LoRA, gradients and AdamW state included)"
        )
    if meter.rss_resettable:
        return (
            "peak resident memory of the whole process over the timed steps (reset after the "
            "warm-up through /proc/self/clear_refs; weights included)"
        )
    return "peak resident memory of the process so far (ru_maxrss; it cannot be reset)"


# --------------------------------------------------------------------------- entry point


@dataclass
class Clip:
    """The model and the clip it trains on, or why there are none."""

    model: LoadedModel | None = None
    latents: torch.Tensor | None = None
    cond: Condition | None = None
    summary: str = "not built"
    latent_size: str = "n/a"
    seconds: float = 0.0  #: to build the model and the clip
    failure: str = ""


def build_clip(args: argparse.Namespace, cfg: DictConfig, device, dtype: torch.dtype) -> Clip:
    """The model on ``device`` in ``dtype`` and its random clip (out of memory: neither)."""
    log.info("building the %s model on %s (%s weights)", args.model, device, dtype_name(dtype))
    clip = Clip()
    start = time.perf_counter()
    try:
        clip.model = build_model(args.model, cfg, device, dtype)
        synchronize(device)
        clip.summary = model_summary(clip.model.pipe)
        clip.latents, clip.cond = random_clip(clip.model, cfg, args.model)
        clip.latent_size = "x".join(str(n) for n in clip.latents.shape[-2:])
    except OutOfMemory as err:
        log.error("out of memory building the model or the clip: %s", str(err).splitlines()[0])
        clip = Clip(failure="OUT OF MEMORY building the model or the clip")
        empty_cache(device)
    clip.seconds = time.perf_counter() - start
    return clip


def run(args: argparse.Namespace, cfg: DictConfig) -> tuple[str, list[str]]:
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.trainer.precision, device)
    dtype = PRECISION_DTYPES[precision]
    if args.model == "full" and device.type == "cpu":
        log.warning("the full-size model on a CPU takes minutes per step; this is for a GPU")
    clip = build_clip(args, cfg, device, dtype)
    results = [Result(mode, failure=clip.failure) for mode in args.modes] if clip.failure else []
    size = LoRASize(0, 0, 0)
    if clip.model is not None:
        for mode in args.modes:
            result, size = train_once(
                clip.model, clip.latents, clip.cond, args, cfg, precision, mode
            )
            results.append(result)

    probe = Meter(device)  # for the labels only
    header = [
        "checkpointing",
        "mean s/step",
        "median s/step",
        "steps/s",
        *(f"{n} steps (min)" for n in PROJECTED_STEPS),
        probe.memory_label[0],
        "held at start of timed steps (GB)",
        "notes",
    ]
    rows = [result_row(r) for r in results]
    extra = [
        *run_lines(args, cfg, clip, precision, dtype, size),
        f"- Memory: {memory_note(device, probe)}",
        *target_lines(args, device, precision, results),
    ]
    show(f"{args.model} model: motion-LoRA training steps", header, rows, extra)
    body = [*environment_lines(device, extra), "", *markdown_table(header, rows)]
    where = "CPU" if device.type == "cpu" else device_name(device)
    name = "tiny model" if args.model == "tiny" else "full-size SVD"
    return f"Training, {name}, {where}", body


def run_lines(
    args: argparse.Namespace,
    cfg: DictConfig,
    clip: Clip,
    precision: str,
    dtype: torch.dtype,
    size: LoRASize,
) -> list[str]:
    """What ran: versions, model, clip, training and LoRA settings."""
    lora, (height, width) = cfg.lora, cfg.lora.resolution
    clip_source = (
        "random frames through encode_video / source_condition"
        if args.model == "tiny"
        else "random latents and conditioning tensors (CLIP and VAE held, not run)"
    )
    return [
        f"- Also: lightning {L.__version__}, peft {peft.__version__}",
        f"- Model: {args.model} ({clip.summary}), random weights, frozen in {dtype_name(dtype)}; "
        f"built (with the clip) in {clip.seconds:.1f} s",
        f"- Clip: {cfg.data.chunk_size} frames of {height}x{width} (latents {clip.latent_size}), "
        f"{clip_source}",
        f"- Training: Lightning Trainer.fit, precision {precision}, batch 1, AdamW lr "
        f"{lora.lr:g}, weight decay {lora.weight_decay:g}; {args.warmup} warm-up steps, then "
        f"{args.steps} timed steps; no logger, no checkpoints",
        f"- LoRA: rank {lora.rank}, alpha {lora.alpha:g}, dropout {lora.dropout:g} on "
        f"{size.layers} linear layers of the temporal transformer blocks: {size.params:,} "
        f"trainable parameters, {size.nbytes / MB:.2f} MB in fp32 (AdamW keeps two more copies)",
        "- Checkpointing: " + "; ".join(f"{mode} = {CHECKPOINTING[mode]}" for mode in args.modes),
        "- Step time: on_train_batch_start to on_train_batch_end (forward, backward, optimizer "
        "step), synchronised; steps/s and the projections use the whole timed loop, the "
        "overhead between steps included",
    ]


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, DictConfig]:
    """The command line, and the training config it runs with (``conf/train.yaml``, the
    model's ``conf/model`` option, and the values given here)."""
    tiny, full = (bench_config("train", kind) for kind in MODEL_OPTIONS)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=tuple(MODEL_OPTIONS), default="tiny")
    for flag, what, pick in (
        ("--height", "frame height", lambda c: c.lora.resolution[0]),
        ("--width", "frame width", lambda c: c.lora.resolution[1]),
        ("--frames", "frames per clip", lambda c: c.data.chunk_size),
    ):
        parser.add_argument(flag, type=int, help=f"{what} (tiny {pick(tiny)}, full {pick(full)})")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (3)")
    parser.add_argument("--rank", type=int, help=f"LoRA rank ({tiny.lora.rank})")
    parser.add_argument(
        "--precision",
        choices=("auto", *PRECISION_DTYPES),
        help=f"Lightning precision ({tiny.trainer.precision}); auto: bf16-mixed (16-mixed "
        "without bf16) on an accelerator, 32 on a CPU",
    )
    checkpointing = tiny.lora.checkpointing
    parser.add_argument(
        "--checkpointing",
        dest="modes",
        nargs="+",
        choices=tuple(CHECKPOINTING),
        default=[checkpointing],
        help=f"lora.checkpointing policies, one table row each (default: {checkpointing})",
    )
    parser.add_argument("--seed", type=int, help=f"run and weights seed ({tiny.seed})")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice); 1 is steadier on a shared machine",
    )
    parser.add_argument("--out", type=Path, default=BENCHMARKS_MD)
    parser.add_argument("--section", help="markdown section to replace or append")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    cfg = with_arguments(tiny if args.model == "tiny" else full, args)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    if any(n % SIZE_MULTIPLE for n in cfg.lora.resolution):
        parser.error(f"--height and --width must be multiples of {SIZE_MULTIPLE}")
    args.modes = list(dict.fromkeys(args.modes))  # each mode once, in the order given
    return args, cfg


def with_arguments(cfg: DictConfig, args: argparse.Namespace) -> DictConfig:
    """``cfg`` with the values given on the command line."""
    lora = cfg.lora
    lora.resolution = [args.height or lora.resolution[0], args.width or lora.resolution[1]]
    cfg.data.chunk_size = args.frames or cfg.data.chunk_size
    lora.rank = args.rank or lora.rank
    cfg.trainer.precision = args.precision or cfg.trainer.precision
    cfg.seed = cfg.model.seed = cfg.seed if args.seed is None else args.seed
    return cfg


def main(argv: list[str] | None = None) -> int:
    setup_logging(names=("i2vedit", "benchlib", "bench_train"))
    args, cfg = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    default_section, body = run(args, cfg)
    if not args.no_write:
        write_section(args.out, args.section or default_section, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
