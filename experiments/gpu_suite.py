"""One GPU suite: every full-size measurement the issue asks for, in one command, in a time
budget, with the memory model's and the cost model's predictions beside each measurement.

Parts, in the order they run (each checks the budget left before it starts, and the section
is written after each part, so a kill still leaves what was measured):

1. ``plain``: diffusers' own SVD sampling at 576x1024x14, 25 steps (the baseline);
2. ``edit``: the whole edit at the same size (``bench_edit.run_chain``: the runner's stages)
   per attention store with the default kernel, stage times and peak memory;
3. ``xt``: SVD-XT at 576x1024x25 with the default store and kernel;
4. ``train``: 20 motion-LoRA training steps at 512x896x14 per checkpointing policy
   (``bench_train.train_once``), with peak memory;
5. ``edit``, again, per store with the other spatial-blend kernel.

    python experiments/gpu_suite.py                  # on the GPU: writes a dated section
    python experiments/gpu_suite.py --dry            # the same chain, tiny model, CPU, < 2 min
    python experiments/gpu_suite.py --dry --out /tmp/suite.md

The models are the full-size architectures with random weights (``i2vedit.models.specs``):
the time and memory of the real ones without their checkpoints. ``--dry`` writes nowhere
unless ``--out`` is given. No part imports ``av``: the device image need not have it.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

EXPERIMENTS = Path(__file__).resolve().parent
if str(EXPERIMENTS) not in sys.path:  # run as a script, experiments/ is already first
    sys.path.insert(0, str(EXPERIMENTS))

import bench_edit  # noqa: E402
import bench_train  # noqa: E402
import cost_model  # noqa: E402
import memory_model  # noqa: E402
from benchlib import (  # noqa: E402  (benchlib also puts src/ on the path if needed)
    BENCHMARKS_MD,
    Meter,
    OutOfMemory,
    bench_config,
    build_model,
    device_name,
    empty_cache,
    environment_lines,
    fmt_gb,
    markdown_table,
    show,
    synchronize,
    write_section,
)
from i2vedit.errors import InputError  # noqa: E402
from i2vedit.models.device import (  # noqa: E402
    PRECISION_DTYPES,
    resolve_device,
    resolve_dtype,
    resolve_precision,
)
from i2vedit.progress import setup_logging  # noqa: E402
from i2vedit.runner import choose_store  # noqa: E402

log = logging.getLogger("gpu_suite")

STORES = ("memory", "disk", "recompute")

#: the sizes of a full run and of ``--dry`` (tiny model, CPU)
FULL = dict(frames=14, xt_frames=25, steps=25, train_steps=20, train_warmup=2)
DRY = dict(frames=4, xt_frames=6, steps=2, train_steps=1, train_warmup=1)

#: Lightning precision -> the memory model's name for it (its training settings: "blocks/bf16")
PRECISION_NAMES = {"bf16-mixed": "bf16", "16-mixed": "fp16", "32": "fp32"}

#: the issue's targets (part 5) at 576x1024x14, 25 steps, on the GPU
TARGET_EDIT_SECONDS = 20.0
TARGET_GUIDED_RATIO = 1.3
TARGET_EDIT_RATIO = {"recompute": 2.0, "memory": 1.6}
TARGET_LORA_250_SECONDS = 180.0

#: part estimates before anything is measured, in multiples of the plain sampling's seconds
#: (refined by the cost model's ratios when it has predictions for the size)
EDIT_FACTOR = 4.0
TRAIN_STEP_FACTOR = 0.15  #: one training step (batch 1, fwd + bwd) over 25 plain steps


# --------------------------------------------------------------------------- choices and models


def spatial_kernels(cfg: DictConfig) -> tuple[str, ...]:
    """The ``attention_matching.kernel`` choices, the default first."""
    default = resolve_kernel("auto", resolve_device(cfg.device))
    return (default, *(k for k in ("triton", "torch") if k != default))


def resolve_kernel(name: str, device: torch.device) -> str:
    """``attention_matching.kernel`` resolved on ``device`` (an InputError where it cannot
    run), as the runner resolves it."""
    from i2vedit.attention.kernels import resolve_kernel as resolve

    return resolve(name, device.type)


def memory_prediction(run: str, model: str, frames: int, hw: tuple[int, int], setting: str):
    """The memory model's predicted peak (GiB) or why there is none."""
    try:
        rows = memory_model.predict(run, model, frames, hw[0], hw[1], setting)
    except Exception as err:  # a model or setting it does not cover
        return None, f"memory model: {type(err).__name__}: {err}".splitlines()[0][:120]
    peak = next((r["peak_gib"] for r in rows if r["stage"] == "peak"), None)
    return peak, ""


# --------------------------------------------------------------------------- the budget


@dataclass
class Budget:
    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def allows(self, what: str, estimate: float) -> bool:
        if estimate <= self.left():
            return True
        log.warning("skipped: budget (%s needs ~%.0f s, %.0f s left)", what, estimate, self.left())
        return False


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    part: str
    setting: str
    stage: str
    seconds: float | None = None
    steps: int | None = None
    peak: int | None = None
    memory_model: float | None = None
    cost_seconds: float | None = None
    note: str = ""

    def cells(self) -> list[str]:
        ratio = (
            f"{self.seconds / self.cost_seconds:.3g}"
            if self.seconds is not None and self.cost_seconds
            else ""
        )
        return [
            self.part,
            self.setting,
            self.stage,
            "" if self.seconds is None else f"{self.seconds:.2f}",
            f"{self.seconds / self.steps:.3f}" if self.seconds is not None and self.steps else "",
            fmt_gb(self.peak) if self.peak is not None else "",
            f"{self.memory_model:.2f}" if self.memory_model is not None else "",
            f"{self.cost_seconds:.3g}" if self.cost_seconds is not None else "",
            ratio,
            self.note,
        ]


HEADER = [
    "part",
    "setting",
    "stage",
    "seconds",
    "s / step",
    "peak (GB)",
    "memory model peak (GiB)",
    "cost model s (at peak)",
    "measured / cost model",
    "notes",
]


@dataclass
class Suite:
    """What the parts share: the config, device, budget, the rows so far, the writer."""

    args: argparse.Namespace
    cfg: DictConfig
    device: torch.device
    budget: Budget
    sizes: dict
    rows: list[Row] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    predictions: dict = field(default_factory=dict)
    plain_seconds: float | None = None

    @property
    def model_name(self) -> str:
        return "tiny" if self.args.dry else "svd"

    def skip(self, part: str, setting: str, why: str = "skipped: budget") -> None:
        self.rows.append(Row(part, setting, "", note=why))

    def write(self) -> None:
        body = [
            *environment_lines(self.device, self.lines),
            "",
            *markdown_table(HEADER, [r.cells() for r in self.rows]),
        ]
        if self.args.out is not None:
            write_section(self.args.out, self.args.section, body)


# --------------------------------------------------------------------------- predictions


def cost_predictions(args: argparse.Namespace, sizes: dict, hw, train_size) -> dict:
    """The cost model's predictions by (architecture, frames): from ``docs/cost_model.json``
    for the full size (computing them takes minutes), computed here for ``--dry``."""
    if args.dry:
        preds = [cost_model.predict("tiny", sizes["frames"], *hw, sizes["steps"], train_size)]
    else:
        preds = cost_model.load_predictions()
        if not preds:
            log.warning("no %s: run experiments/cost_model.py first", cost_model.PREDICTIONS_JSON)
    return {(p.model, p.frames): p for p in preds if p.steps == sizes["steps"]}


def edit_cost(suite: Suite, option: str, frames: int, store: str, kernel: str) -> dict | None:
    pred = suite.predictions.get((option, frames))
    if pred is None:
        return None
    kernel = kernel if kernel in cost_model.KERNELS else "torch"
    return pred.edit_seconds(cost_model.GPUS[suite.args.gpu], store, kernel)


def train_cost(suite: Suite, policy: str) -> float | None:
    pred = suite.predictions.get((suite.model_name, suite.sizes["frames"]))
    if pred is None:
        return None
    name = f"training step, checkpointing {policy}"
    stage = next((s for s in pred.stages if s.stage == name), None)
    return None if stage is None else stage.seconds(cost_model.GPUS[suite.args.gpu], "torch")


# --------------------------------------------------------------------------- the parts


def part_plain(suite: Suite, model, frames, keyframe) -> None:
    meter = Meter(suite.device)
    try:
        bench_edit.run_plain_sampling(suite.cfg, model.pipe, keyframe, len(frames), meter)
    except OutOfMemory as err:
        suite.skip("plain", "diffusers", f"OUT OF MEMORY: {str(err).splitlines()[0][:80]}")
        return
    row = meter.rows[-1]
    suite.plain_seconds = row.seconds
    cost = edit_cost(suite, suite.model_name, len(frames), "memory", "torch")
    suite.rows.append(
        Row(
            "plain",
            "diffusers pipeline",
            "sampling",
            row.seconds,
            row.steps,
            row.peak,
            cost_seconds=None if cost is None else cost["plain"],
        )
    )


#: the cost model's part of the edit each of bench_edit's stage rows belongs to
STAGE_PARTS = {
    "SARP, VAE encode": "encode",
    "inversion": "inversion",
    "guided sampling": "guided",
    "VAE decode": "decode",
}


def chain_rows(suite: Suite, part: str, setting: str, meter: Meter, cost, memory) -> None:
    """One row per stage of a chain, then its total; the predictions beside them."""
    total, peak = 0.0, 0
    for row in meter.rows:
        stage = row.name.split(" [")[0]
        key = next((v for k, v in STAGE_PARTS.items() if stage.startswith(k)), None)
        predicted = None if cost is None or key is None else cost[key]
        suite.rows.append(
            Row(part, setting, stage, row.seconds, row.steps, row.peak, None, predicted, row.note)
        )
        total += row.seconds
        peak = max(peak, row.peak or 0)
    peak_gib, why = memory
    note = why
    if suite.plain_seconds:
        note = f"edit / plain {total / suite.plain_seconds:.2f}" + (f"; {why}" if why else "")
    suite.rows.append(
        Row(
            part,
            setting,
            "whole edit",
            total,
            None,
            peak or None,
            peak_gib,
            None if cost is None else cost["edit"],
            note,
        )
    )


def run_one_edit(
    suite: Suite, part: str, model, frames, keyframe, store: str, kernel: str, option: str
) -> None:
    setting = f"{store}/{kernel}"
    estimate = estimate_edit(suite, option, len(frames), store, kernel)
    if not suite.budget.allows(f"{part} {setting}", estimate):
        suite.skip(part, setting)
        return
    cfg = suite.cfg.copy()
    if kernel != "default":
        cfg.attention_matching.kernel = kernel
        try:
            resolve_kernel(kernel, suite.device)
        except InputError as err:
            suite.skip(part, setting, f"skipped: {err}")
            return
    meter = Meter(suite.device)
    try:
        bench_edit.run_chain(cfg, model, frames, keyframe, meter, store)
    except OutOfMemory as err:
        why = f"OUT OF MEMORY: {str(err).splitlines()[0][:80]}"
        if not meter.rows:
            suite.skip(part, setting, why)
            return
        meter.rows[-1].note = why
    empty_cache(suite.device)
    hw = tuple(frames.shape[-2:])
    memory = memory_prediction("edit", option, len(frames), hw, store)
    cost_kernel = kernel if kernel != "default" else "torch"
    chain_rows(
        suite,
        part,
        setting,
        meter,
        edit_cost(suite, option, len(frames), store, cost_kernel),
        memory,
    )


def estimate_edit(suite: Suite, option: str, frames: int, store: str, kernel: str) -> float:
    """Seconds an edit is expected to take: the plain sampling's measured seconds times the
    cost model's edit / plain ratio (or EDIT_FACTOR without a prediction)."""
    plain = suite.plain_seconds or 0.0
    base = suite.predictions.get((suite.model_name, suite.sizes["frames"]))
    cost = edit_cost(suite, option, frames, store, kernel if kernel != "default" else "torch")
    if cost is None or base is None:
        return EDIT_FACTOR * plain
    base_plain = base.edit_seconds(cost_model.GPUS[suite.args.gpu], store, "torch")["plain"]
    return plain * cost["edit"] / base_plain


def part_edits(suite: Suite, model, frames, keyframe, kernels: tuple[str, ...]) -> None:
    for kernel in kernels:
        for store in STORES:
            run_one_edit(suite, "edit", model, frames, keyframe, store, kernel, suite.model_name)
            suite.write()


def part_xt(suite: Suite, frames_xt, keyframe, kernel: str) -> None:
    """SVD-XT (or, dry, the tiny model at more frames) with the default store and kernel."""
    option = "tiny" if suite.args.dry else "svd_xt"
    cfg = suite.cfg.copy()
    cfg.model.num_frames = len(frames_xt)
    estimate = estimate_edit(suite, option, len(frames_xt), "recompute", kernel) + 10
    if not suite.budget.allows("xt", estimate):
        suite.skip("xt", f"{option} x{len(frames_xt)}")
        return
    dtype = resolve_dtype(cfg.dtype, suite.device)
    model = build_model("tiny" if suite.args.dry else "full", cfg, suite.device, dtype, option)
    h_w = bench_edit.latents_hw(model.pipe, *frames_xt.shape[-2:])
    store, why = choose_store(cfg, model, len(frames_xt), h_w)
    log.info("xt: store %s (%s)", store, why)
    saved, suite.cfg = suite.cfg, cfg
    try:
        run_one_edit(suite, "xt", model, frames_xt, keyframe, store, kernel, option)
    finally:
        suite.cfg = saved
        del model
        empty_cache(suite.device)


def train_step_estimate(suite: Suite, predicted: float | None) -> float:
    """Seconds a training step is expected to take: the cost model's step scaled by the
    measured over the predicted plain sampling (or TRAIN_STEP_FACTOR of the plain seconds)."""
    plain = suite.plain_seconds or 0.0
    cost = edit_cost(suite, suite.model_name, suite.sizes["frames"], "memory", "torch")
    if predicted is None or cost is None or not cost["plain"]:
        return plain * TRAIN_STEP_FACTOR
    return predicted * plain / cost["plain"]


def part_train(suite: Suite, model) -> None:
    """``train_steps`` timed motion-LoRA steps (after a short warm-up) per policy."""
    cfg = bench_config("train", "tiny" if suite.args.dry else "full")
    precision = resolve_precision(cfg.trainer.precision, suite.device)
    if PRECISION_DTYPES[precision] != model.dtype:
        log.warning("training in %s over weights in %s", precision, model.dtype)
    height, width = cfg.lora.resolution
    latents, cond = bench_train.random_clip(model, cfg, "tiny" if suite.args.dry else "full")
    steps, warmup = suite.sizes["train_steps"], suite.sizes["train_warmup"]
    args = argparse.Namespace(steps=steps, warmup=warmup)
    for policy in bench_train.CHECKPOINTING:
        setting = f"checkpointing {policy}"
        per_step = train_cost(suite, policy)
        guess = train_step_estimate(suite, per_step)
        if not suite.budget.allows(f"train {setting}", (steps + warmup) * guess):
            suite.skip("train", setting)
            continue
        result, _ = bench_train.train_once(model, latents, cond, args, cfg, precision, policy)
        memory = memory_prediction(
            "train",
            suite.model_name,
            cfg.data.chunk_size,
            (height, width),
            f"{policy}/{PRECISION_NAMES[precision]}",
        )
        suite.rows.append(
            Row(
                "train",
                setting,
                f"{steps} steps at {height}x{width}x{cfg.data.chunk_size}",
                result.loop_seconds,
                len(result.timed) or None,
                result.peak,
                memory[0],
                None if per_step is None else per_step * steps,
                "; ".join(x for x in (result.failure, memory[1]) if x),
            )
        )
        suite.write()


# --------------------------------------------------------------------------- entry point


def warm_up(suite: Suite, model, frames, keyframe) -> None:
    """The chain once at 2 steps, untimed (kernels chosen, caches filled)."""
    if suite.args.dry:
        return
    warm = suite.cfg.copy()
    warm.num_steps = bench_edit.WARMUP_STEPS
    log.info("warm-up: the chain once at %d steps (not timed)", warm.num_steps)
    bench_edit.run_chain(warm, model, frames, keyframe, Meter(suite.device, False), "memory")
    empty_cache(suite.device)


def describe(suite: Suite, kernels: tuple[str, ...]) -> None:
    (height, width), s = suite.cfg.model.resolution, suite.sizes
    suite.lines += [
        f"- Model: {'tiny (dry run)' if suite.args.dry else 'full-size SVD and SVD-XT'}, random "
        f"weights, {suite.cfg.dtype} dtype; edit at {height}x{width}x{s['frames']}, XT at "
        f"x{s['xt_frames']}, {s['steps']} steps; training {s['train_steps']} timed steps "
        f"after {s['train_warmup']} warm-up",
        f"- Kernels: {', '.join(kernels)} (the default first); stores: {', '.join(STORES)}",
        f"- Budget: {suite.args.budget_s:.0f} s; a part that cannot fit is marked "
        "'skipped: budget'",
        "- Peak: per stage, reset at its start (allocated accelerator memory; the process's "
        "RSS on a CPU); cost model: docs/cost_model.json at the stated GPU's peak "
        f"({cost_model.GPUS[suite.args.gpu].name}); memory model: experiments/memory_model.py",
    ]


def measured(suite: Suite, part: str, setting: str, stage: str) -> float | None:
    row = next(
        (r for r in suite.rows if (r.part, r.setting, r.stage) == (part, setting, stage)), None
    )
    return None if row is None or row.note.startswith("OUT OF MEMORY") else row.seconds


def target_lines(suite: Suite, kernel: str) -> list[str]:
    """The issue's targets against what was measured (default kernel)."""
    plain, lines = suite.plain_seconds, []
    verdict = lambda ok: "met" if ok else "missed"  # noqa: E731
    for store in STORES:
        edit = measured(suite, "edit", f"{store}/{kernel}", "whole edit")
        guided = measured(suite, "edit", f"{store}/{kernel}", "guided sampling")
        if edit is None or not plain:
            continue
        line = f"  - {store}/{kernel}: edit {edit:.1f} s, edit / plain {edit / plain:.2f}"
        if store in TARGET_EDIT_RATIO:
            line += f" ({verdict(edit / plain <= TARGET_EDIT_RATIO[store])})"
        if guided is not None:
            ratio = guided / plain
            line += f", guided / plain {ratio:.2f} ({verdict(ratio <= TARGET_GUIDED_RATIO)})"
        lines.append(line)
    for row in suite.rows:
        if row.part == "train" and row.seconds and row.steps:
            minutes = row.seconds / row.steps * 250 / 60
            ok = minutes * 60 <= TARGET_LORA_250_SECONDS
            lines.append(f"  - {row.setting}: 250 steps in {minutes:.2f} min ({verdict(ok)})")
    head = (
        f"- Targets (part 5): default edit <= {TARGET_EDIT_SECONDS:.0f} s; guided sampling <= "
        f"{TARGET_GUIDED_RATIO} x plain; edit <= 2.0 x plain (recompute), 1.6 x (memory); 250 "
        "LoRA steps <= 3 min" + ("; a dry run is not held to them" if suite.args.dry else "")
    )
    return [head, *lines] if lines else [head]


def run(args: argparse.Namespace) -> Suite:
    kind = "tiny" if args.dry else "full"
    cfg = bench_config("edit", kind, ["device=cpu"] if args.dry else [])
    sizes = DRY if args.dry else FULL
    cfg.num_steps = sizes["steps"]
    device = resolve_device(cfg.device)
    suite = Suite(args, cfg, device, Budget(args.budget_s), sizes)
    kernels = spatial_kernels(cfg)
    describe(suite, kernels)
    hw = tuple(cfg.model.resolution)
    train_cfg = bench_config("train", kind)
    train_size = (train_cfg.data.chunk_size, *train_cfg.lora.resolution)
    suite.predictions = cost_predictions(args, sizes, hw, train_size)
    dtype = resolve_dtype(cfg.dtype, device)
    model = build_model(kind, cfg, device, dtype)
    synchronize(device)
    frames, keyframe = bench_edit.synthetic_clip(sizes["frames"], *hw)
    frames_xt, _ = bench_edit.synthetic_clip(sizes["xt_frames"], *hw)
    with tempfile.TemporaryDirectory(prefix="i2vedit-suite-", ignore_cleanup_errors=True) as tmp:
        suite.cfg.paths.cache_dir = tmp  # the disk store's records, removed with it
        warm_up(suite, model, frames, keyframe)
        part_plain(suite, model, frames, keyframe)
        suite.write()
        part_edits(suite, model, frames, keyframe, kernels[:1])
        part_xt(suite, frames_xt, keyframe, kernels[0])
        suite.write()
        part_train(suite, model)
        part_edits(suite, model, frames, keyframe, kernels[1:])
    suite.lines += target_lines(suite, kernels[0])
    suite.lines.append(f"- Suite: {time.perf_counter() - suite.budget.start:.0f} s in all")
    suite.write()
    show("GPU suite", HEADER, [r.cells() for r in suite.rows])
    return suite


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="tiny model on the CPU, writes nowhere")
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall-time budget (540)")
    parser.add_argument(
        "--gpu", choices=tuple(cost_model.GPUS), default="h200", help="for the cost model"
    )
    parser.add_argument(
        "--out", type=Path, help="markdown file (default: docs/BENCHMARKS.md; --dry: none)"
    )
    parser.add_argument("--section", help="section to replace or append")
    args = parser.parse_args(argv)
    if args.out is None and not args.dry:
        args.out = BENCHMARKS_MD
    return args


def main(argv: list[str] | None = None) -> int:
    setup_logging(
        names=("i2vedit", "benchlib", "bench_edit", "bench_train", "cost_model", "gpu_suite")
    )
    args = parse_args(argv)
    where = "dry run, tiny model, CPU"
    if not args.dry:
        device = resolve_device("auto")
        if device.type == "cpu":
            log.error("no accelerator: the suite is for a GPU (--dry runs it on the tiny model)")
            return 2
        where = device_name(device)
    args.section = args.section or f"GPU suite, {where}, {datetime.date.today().isoformat()}"
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
