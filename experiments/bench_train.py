"""Benchmark of motion-LoRA training steps: a real Lightning ``Trainer.fit`` of
``MotionLoRAModule`` on a ``OneClipDataModule``, as ``i2vedit-train`` runs it for one clip.

The clip is random: for ``--model tiny`` random frames go through ``encode_video`` and
``encode_condition``; for ``--model full`` the latents and the conditioning (CLIP embedding,
first-frame latents, time ids) are random tensors of the right shapes (the CLIP and the VAE are
built and held in memory, as in a training run, but not run). Each step is timed between
``on_train_batch_start`` and ``on_train_batch_end`` (synchronised on accelerators), after a few
untimed warm-up steps; the peak memory is reset after the warm-up.

    python experiments/bench_train.py --model tiny --threads 1 --checkpointing diffusers none
    python experiments/bench_train.py --model full --section "Training, full-size SVD, <GPU name>"

``--model full`` is the full-size SVD img2vid architecture with random weights (see
``bench_edit.py``): the time and memory of the real model, without its checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
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
from diffusers import StableVideoDiffusionPipeline

EXPERIMENTS = Path(__file__).resolve().parent
if str(EXPERIMENTS) not in sys.path:  # run as a script, experiments/ is already first
    sys.path.insert(0, str(EXPERIMENTS))

from bench_edit import (  # noqa: E402  (bench_edit also puts src/ on the path if needed)
    GB,
    MB,
    Meter,
    OutOfMemory,
    build_full_pipeline,
    build_pipeline,
    console,
    device_name,
    dtype_name,
    empty_cache,
    environment_lines,
    fmt_gb,
    latents_hw,
    markdown_table,
    model_summary,
    rich_table,
    synchronize,
    write_section,
)
from i2vedit.models.device import PRECISION_DTYPES, resolve_device, resolve_precision  # noqa: E402
from i2vedit.progress import setup_logging  # noqa: E402
from i2vedit.sampling.edm import (  # noqa: E402
    Condition,
    ConditioningParams,
    encode_condition,
    encode_video,
)
from i2vedit.training.lora import (  # noqa: E402
    motion_lora_config,
    remove_lora,
    temporal_linear_layers,
)
from i2vedit.training.module import MotionLoRAModule, OneClipDataModule  # noqa: E402

log = logging.getLogger("bench_train")

# The filters of i2vedit.tasks.train (not imported: it needs av), plus the one-clip dataloader's
# worker advice, which does not apply to a clip already in memory. Lightning's LeafSpec notice
# is filtered whatever its category.
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")

#: (height, width, frames) when not given: the tiny model's, and SVD's training resolution
#: (model.train_resolution of conf/model/svd*.yaml) with img2vid's 14 frames.
DEFAULTS = {"tiny": (32, 48, 8), "full": (512, 896, 14)}

#: conf/lora/none.yaml: how a motion LoRA trains (the rank is an option here).
LORA_ALPHA = 32.0
LORA_DROPOUT = 0.1
LORA_LR = 5.0e-4
LORA_WEIGHT_DECAY = 1.0e-2

#: The issue's targets for one clip at 512x896x14 on one H100 with bf16, and the reference.
TARGET_PEAK_GB = 16.0
TARGET_SECONDS_250 = 180.0
PROJECTED_STEPS = (250, 500)

CHECKPOINTING = {"diffusers": "unet.enable_gradient_checkpointing()", "none": "none"}


# --------------------------------------------------------------------------- the clip


def random_clip(
    pipe: StableVideoDiffusionPipeline, kind: str, frames: int, height: int, width: int, seed: int
) -> tuple[torch.Tensor, Condition]:
    """Latents (1, F, 4, h, w) in float32 and the unguided conditioning of a random clip, on
    the UNet's device, in the dtypes that ``encode_video`` and ``encode_condition`` give."""
    device, dtype = pipe.unet.device, pipe.unet.dtype
    g = torch.Generator().manual_seed(seed)
    if kind == "tiny":
        clip = (torch.rand(frames, 3, height, width, generator=g) * 2 - 1).to(device)
        with torch.no_grad():
            latents = encode_video(pipe, clip)
            cond = encode_condition(pipe, clip[:1], ConditioningParams(), frames, g, guided=False)
        return latents, cond
    h, w = latents_hw(pipe, height, width)
    channels = pipe.unet.config.out_channels
    params = ConditioningParams()
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
        self._stage: contextlib.AbstractContextManager | None = None

    def _enter(self, name: str, steps: int) -> None:
        self._stage = self.meter.stage(name, steps)
        self._stage.__enter__()

    def _leave(self, error: BaseException | None = None) -> None:
        stage, self._stage = self._stage, None
        if stage is not None:
            kind = None if error is None else type(error)
            stage.__exit__(kind, error, None if error is None else error.__traceback__)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.done == 0 and self.warmup:
            self._enter("warm-up", self.warmup)
        if self.done == self.warmup:
            self._leave()
            self._enter("timed", self.steps)
        synchronize(self.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - self._start)
        self.done += 1
        if self.done == self.warmup + self.steps:
            self._leave()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._leave(exception)  # an out-of-memory stage is recorded as such

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
    pipe: StableVideoDiffusionPipeline,
    latents: torch.Tensor,
    cond: Condition,
    args: argparse.Namespace,
    precision: str,
    device: torch.device,
    checkpointing: str,
) -> tuple[Result, LoRASize]:
    """One ``Trainer.fit`` of warm-up + timed steps; the UNet is left as it was found."""
    unet = pipe.unet
    result = Result(checkpointing)
    meter = Meter(device)
    timer = StepTimer(device, args.warmup, args.steps, meter)
    total = args.warmup + args.steps
    # counted before injection: peft then shortens a long target_modules list to suffixes
    layers = len(temporal_linear_layers(unet))
    config = motion_lora_config(unet, args.rank, LORA_ALPHA, LORA_DROPOUT)
    module = MotionLoRAModule(
        unet,
        config,
        LORA_LR,
        LORA_WEIGHT_DECAY,
        args.seed,
        gradient_checkpointing=checkpointing == "diffusers",
    )
    size = LoRASize(
        layers,
        sum(p.numel() for p in module.lora_params),
        sum(p.numel() * p.element_size() for p in module.lora_params),
    )
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        precision=precision,
        max_steps=total,
        logger=False,
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )
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
        del trainer, module, datamodule  # the optimizer state goes with them
        remove_lora(unet)
        if checkpointing == "diffusers":
            unet.disable_gradient_checkpointing()
        unet.eval()
        unet.requires_grad_(False)
        unet.to(device)  # Lightning's teardown moves the module to the host
        empty_cache(device)
    result.timed = timer.timed
    stages = {row.name: row for row in meter.rows}
    warm, timed = stages.get("warm-up"), stages.get("timed")
    if warm is not None:
        result.start_memory = warm.held
    if timed is not None:
        result.peak = timed.peak
        if not timed.note:  # not out of memory
            result.loop_seconds = timed.seconds
    elif warm is not None:
        result.peak = warm.peak  # failed in the warm-up: its peak is what there is
    return result, size


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


def run(args: argparse.Namespace) -> tuple[str, list[str]]:
    device = resolve_device("auto")
    precision = resolve_precision(args.precision, device)
    dtype = PRECISION_DTYPES[precision]
    if args.model == "full" and device.type == "cpu":
        log.warning("the full-size model on a CPU takes minutes per step; this is for a GPU")
    log.info("building the %s model on %s (%s weights)", args.model, device, dtype_name(dtype))
    results: list[Result] = []
    size = LoRASize(0, 0, 0)
    summary, latent_size = "not built", "n/a"
    pipe: StableVideoDiffusionPipeline | None = None
    start = time.perf_counter()
    try:
        if args.model == "full":
            pipe = build_full_pipeline(device, dtype, args.seed)
        else:
            pipe = build_pipeline("tiny", device, dtype, args.seed)
        synchronize(device)
        summary = model_summary(pipe)
        latents, cond = random_clip(
            pipe, args.model, args.frames, args.height, args.width, args.seed
        )
        latent_size = "x".join(str(n) for n in latents.shape[-2:])
    except OutOfMemory as err:
        log.error("out of memory building the model or the clip: %s", str(err).splitlines()[0])
        failure = "OUT OF MEMORY building the model or the clip"
        results = [Result(mode, failure=failure) for mode in args.modes]
        pipe = None
        empty_cache(device)
    build_seconds = time.perf_counter() - start
    if pipe is not None:
        for mode in args.modes:
            result, size = train_once(pipe, latents, cond, args, precision, device, mode)
            results.append(result)

    probe = Meter(device)  # for the labels only
    peak_label = probe.memory_label[0]
    header = [
        "checkpointing",
        "mean s/step",
        "median s/step",
        "steps/s",
        *(f"{n} steps (min)" for n in PROJECTED_STEPS),
        peak_label,
        "held at start of timed steps (GB)",
        "notes",
    ]
    rows = [result_row(r) for r in results]
    clip_source = (
        "random frames through encode_video / encode_condition"
        if args.model == "tiny"
        else "random latents and conditioning tensors (CLIP and VAE held, not run)"
    )
    extra = [
        f"- Also: lightning {L.__version__}, peft {peft.__version__}",
        f"- Model: {args.model} ({summary}), random weights, frozen in {dtype_name(dtype)}; "
        f"built (with the clip) in {build_seconds:.1f} s",
        f"- Clip: {args.frames} frames of {args.height}x{args.width} (latents {latent_size}), "
        f"{clip_source}",
        f"- Training: Lightning Trainer.fit, precision {precision}, batch 1, AdamW lr "
        f"{LORA_LR:g}, weight decay {LORA_WEIGHT_DECAY:g}; {args.warmup} warm-up steps, then "
        f"{args.steps} timed steps; no logger, no checkpoints",
        f"- LoRA: rank {args.rank}, alpha {LORA_ALPHA:g}, dropout {LORA_DROPOUT:g} on "
        f"{size.layers} linear layers of the temporal transformer blocks: {size.params:,} "
        f"trainable parameters, {size.nbytes / MB:.2f} MB in fp32 (AdamW keeps two more copies)",
        "- Checkpointing: " + "; ".join(f"{mode} = {CHECKPOINTING[mode]}" for mode in args.modes),
        "- Step time: on_train_batch_start to on_train_batch_end (forward, backward, optimizer "
        "step), synchronised; steps/s and the projections use the whole timed loop, the "
        "overhead between steps included",
        f"- Memory: {memory_note(device, probe)}",
        *target_lines(args, device, precision, results),
    ]
    console.print(rich_table(f"{args.model} model: motion-LoRA training steps", header, rows))
    for line in extra:
        console.print(line)
    body = [*environment_lines(device, extra), "", *markdown_table(header, rows)]
    where = "CPU" if device.type == "cpu" else device_name(device)
    name = "tiny model" if args.model == "tiny" else "full-size SVD"
    return f"Training, {name}, {where}", body


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--height", type=int, help="frame height (tiny 32, full 512)")
    parser.add_argument("--width", type=int, help="frame width (tiny 48, full 896)")
    parser.add_argument("--frames", type=int, help="frames per clip (tiny 8, full 14)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (3)")
    parser.add_argument("--rank", type=int, default=32, help="LoRA rank (32)")
    parser.add_argument(
        "--precision",
        choices=("auto", *PRECISION_DTYPES),
        default="auto",
        help="Lightning precision; auto: bf16-mixed (16-mixed without bf16) on an accelerator, "
        "32 on a CPU",
    )
    parser.add_argument(
        "--checkpointing",
        dest="modes",
        nargs="+",
        choices=tuple(CHECKPOINTING),
        default=["diffusers"],
        help="gradient checkpointing, one table row each (default: diffusers)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice); 1 is steadier on a shared machine",
    )
    parser.add_argument("--out", type=Path, default=EXPERIMENTS.parent / "docs" / "BENCHMARKS.md")
    parser.add_argument("--section", help="markdown section to replace or append")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    height, width, frames = DEFAULTS[args.model]
    args.height = args.height or height
    args.width = args.width or width
    args.frames = args.frames or frames
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    if args.height % 8 or args.width % 8:
        parser.error("--height and --width must be multiples of 8")
    args.modes = list(dict.fromkeys(args.modes))  # each mode once, in the order given
    return args


def main(argv: list[str] | None = None) -> int:
    setup_logging(names=("i2vedit", "bench_train"))
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    default_section, body = run(args)
    if not args.no_write:
        write_section(args.out, args.section or default_section, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
