"""Benchmark of the edit pipeline's stages: one clip through ``i2vedit.runner``'s stages, as
``i2vedit.tasks.edit.run_edit`` runs them.

One source clip and one keyframe, synthesised in memory (no video files, no ``av``), edited
with the values of ``conf/edit.yaml``: ``invert_clip`` (SARP, VAE encode, source conditioning,
EDM inversion with attention recording), ``edit_condition``, ``edit_clip`` (guided sampling
with attention matching), ``decode_clip``. Each stage is timed (synchronised on accelerators)
with its peak memory, and the attention records that inversion leaves for editing are measured
per step.

    python experiments/bench_edit.py --model tiny --section "Tiny model, CPU"
    python experiments/bench_edit.py --model full --section "Full-size SVD, <GPU name>"
    python experiments/bench_edit.py --model full --records-only

``--model full`` is the full-size SVD img2vid architecture (UNet, temporal VAE, ViT-H/14 CLIP;
``i2vedit.models.specs``) with random weights: the timings and memory of the real model,
without its checkpoint. ``--records-only`` needs no accelerator: it builds the UNet on the
meta device and runs one recording UNet pass on meta tensors, which allocates nothing but
gives every record's shape.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

EXPERIMENTS = Path(__file__).resolve().parent
if str(EXPERIMENTS) not in sys.path:  # run as a script, experiments/ is already first
    sys.path.insert(0, str(EXPERIMENTS))

from benchlib import (  # noqa: E402  (benchlib also puts src/ on the path if needed)
    BENCHMARKS_MD,
    GB,
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
    fmt_size,
    latents_hw,
    markdown_table,
    model_summary,
    show,
    synchronize,
    write_section,
)
from i2vedit.attention.control import AttentionRecorder, controlled_attention  # noqa: E402
from i2vedit.attention.layers import (  # noqa: E402
    SPATIAL,
    analytic_record_elements,
    registered_layers,
)
from i2vedit.attention.store import DiskStore, MemoryStore  # noqa: E402
from i2vedit.core.edm import Condition, denoise, karras_sigmas, seeded_generator  # noqa: E402
from i2vedit.data.resize import ResolutionPlan  # noqa: E402
from i2vedit.inversion.edm import inversion_sigmas  # noqa: E402
from i2vedit.inversion.recompute import RecomputeStore  # noqa: E402
from i2vedit.models.device import resolve_device, resolve_dtype  # noqa: E402
from i2vedit.models.svd import LoadedModel  # noqa: E402
from i2vedit.progress import setup_logging  # noqa: E402
from i2vedit.runner import (  # noqa: E402
    SourceInversion,
    decode_clip,
    edit_clip,
    edit_condition,
    invert_clip,
    matching_params,
)

log = logging.getLogger("bench_edit")

#: The issue's worked formula for the reference's records of SVD per step, at latent h x w:
#: bytes-per-element * F * h * w * (SPATIAL_COEF + TEMPORAL_COEF * F).
ISSUE_SPATIAL_COEF = 5640.0
ISSUE_TEMPORAL_COEF = 44.06

#: warm-up: the whole chain once at this many steps, untimed
WARMUP_STEPS = 2


# --------------------------------------------------------------------------- inputs


def synthetic_clip(num_frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat sky over a ramp with a square crossing it (F, 3, H, W) in [-1, 1], and the edited
    first frame (1, 3, H, W): the square recoloured. Flat areas give SARP something to do."""
    rows = torch.linspace(-1.0, 1.0, height)[:, None].expand(height, width)
    cols = torch.linspace(-1.0, 1.0, width)[None, :].expand(height, width)
    ground = torch.stack([0.3 + 0.4 * cols, 0.2 * rows, -0.3 + 0.3 * rows])
    sky = torch.tensor([-0.4, 0.1, 0.7]).view(3, 1, 1).expand(3, height, width)
    frames = torch.where(rows[None] < 0, sky, ground).repeat(num_frames, 1, 1, 1)
    size = max(2, height // 4)
    top = height // 2 - size // 2
    red = torch.tensor([0.8, -0.6, -0.6]).view(3, 1, 1)
    for f in range(num_frames):
        left = round((width - size) * f / max(1, num_frames - 1))
        frames[f, :, top : top + size, left : left + size] = red
    keyframe = frames[:1].clone()
    keyframe[0, :, top : top + size, :size] = torch.tensor([-0.6, 0.8, -0.6]).view(3, 1, 1)
    return frames, keyframe


# --------------------------------------------------------------------------- records


@dataclass
class RecordBytes:
    spatial: int = 0
    temporal: int = 0

    @property
    def total(self) -> int:
        return self.spatial + self.temporal


def measured_records(store: MemoryStore, unet: torch.nn.Module, index: int) -> RecordBytes:
    """Bytes of the records at ``index``, spatial (Q and K) and temporal (probabilities)."""
    out = RecordBytes()
    for layer in registered_layers(unet):
        for name in ("q", "k") if layer.kind == SPATIAL else ("p",):
            try:
                t = store.get(index, layer.path, name)
            except KeyError:  # a run stopped (out of memory) within this step
                continue
            if layer.kind == SPATIAL:
                out.spatial += t.numel() * t.element_size()
            else:
                out.temporal += t.numel() * t.element_size()
    if out.total != store.nbytes(index):
        held = store.nbytes(index)
        log.warning("records at %d: layers sum to %d B, store holds %d B", index, out.total, held)
    return out


def issue_formula_bytes(element_size: int, frames: int, h: int, w: int) -> float:
    return element_size * frames * h * w * (ISSUE_SPATIAL_COEF + ISSUE_TEMPORAL_COEF * frames)


# --------------------------------------------------------------------------- the chain


@dataclass
class ChainResult:
    """What one backend's chain kept besides its timings."""

    store: object  #: the AttentionStore the edit read from
    disk_bytes: int = 0  #: attention bytes written to disk for the clip
    memory_bytes: int = 0  #: attention bytes held in memory between inversion and editing
    trajectory_bytes: int = 0  #: the inversion trajectory kept for recompute

    @classmethod
    def of(cls, source: SourceInversion) -> ChainResult:
        store, result = source.store, cls(source.store)
        if isinstance(store, MemoryStore):
            result.memory_bytes = store.nbytes()
        elif isinstance(store, DiskStore):
            result.disk_bytes = store.written_bytes
        elif isinstance(store, RecomputeStore):
            kept = store.trajectory
            result.trajectory_bytes = kept.numel() * kept.element_size()
        return result


INVERSION_NOTES = {
    "memory": "batch 1, records kept in memory",
    "disk": "batch 1, records written per step by a background thread",
    "recompute": "batch 1, trajectory kept, no records",
}
SAMPLING_NOTES = {
    "memory": "batch 2 (CFG), matching from memory",
    "disk": "batch 2 (CFG), records read one step ahead",
    "recompute": "batch 1 source pass + batch 2 (CFG) per step",
}
#: the name of the runner's stepped inversion stage (``step_progress``): where its row starts
INVERSION_STAGE = "inversion"


def run_chain(
    cfg: DictConfig,
    model: LoadedModel,
    frames: torch.Tensor,
    keyframe: torch.Tensor,
    meter: Meter,
    backend: str,
) -> ChainResult:
    """The runner's stages for one clip and one keyframe, on in-memory frames: invert (keeping
    what ``backend`` needs), condition, sample with matching, decode."""
    num_frames, steps, chunk = len(frames), cfg.num_steps, cfg.model.decode_chunk_size
    am, tag = cfg.attention_matching, f" [{backend}]"
    sigmas = karras_sigmas(model.pipe, steps)
    h, w = latents_hw(model.pipe, *frames.shape[-2:])
    latent_shape = (1, num_frames, model.unet.config.out_channels, h, w)
    size = tuple(frames.shape[-2:])
    same_size = ResolutionPlan.build(size, size, pad_to_fit=False)  # frames at model size
    seconds: dict[str, float] = {}
    first = f"SARP, VAE encode, source conditioning{tag}"
    inversion = (f"inversion{tag}", steps, INVERSION_NOTES[backend])
    with torch.inference_mode():
        clip = frames.to(model.device)
        with meter.stage(
            first,
            note=f"noise {cfg.sarp.noise_scale}; {num_frames} frames, chunks of {chunk}; "
            "CLIP + first-frame VAE of the source",
            then={INVERSION_STAGE: inversion},
        ):
            source = invert_clip(cfg, model, clip, sigmas, seconds, backend=backend)
        try:
            _check_split(meter, first, inversion[0], seconds)
            with meter.stage(f"conditioning{tag}", note="CLIP + first-frame VAE of the keyframe"):
                cond = edit_condition(cfg, model, keyframe.to(model.device), num_frames)
            matching = matching_params(cfg, tuple(am.beta), tuple(am.mask_thr))
            with meter.stage(f"guided sampling{tag}", steps, note=SAMPLING_NOTES[backend]):
                edited = edit_clip(
                    cfg, model, matching, cond, source, sigmas, latent_shape, f"edit{tag}"
                )
            with meter.stage(f"VAE decode{tag}", note=f"chunks of {chunk}, to host"):
                decoded, _ = decode_clip(cfg, model, edited, same_size)
        finally:
            source.close()
    if not torch.isfinite(decoded).all():
        log.info("decoded frames hold non-finite values (random weights): timings still hold")
    return ChainResult.of(source)


def _check_split(meter: Meter, first: str, inversion: str, seconds: dict[str, float]) -> None:
    """The inversion's own row must have begun at its first step; the SARP seconds go into
    the note of the row before it."""
    if not meter.enabled:
        return
    if meter.row(inversion) is None:
        raise RuntimeError(
            f"the runner's inversion reported no stage {INVERSION_STAGE!r}: no row {inversion!r}"
        )
    meter.row(first).note += f"; SARP {seconds.get('sarp', 0.0):.3f} s of it"


def run_plain_sampling(
    cfg: DictConfig, pipe, keyframe: torch.Tensor, num_frames: int, meter: Meter
) -> None:
    """diffusers' own StableVideoDiffusionPipeline sampling of the same size and conditioning
    (``conf/conditioning``), latents out."""
    from PIL import Image

    array = ((keyframe[0].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy()
    image = Image.fromarray(array)
    height, width = keyframe.shape[-2:]
    steps = cfg.num_steps
    pipe.set_progress_bar_config(disable=True)
    with meter.stage("plain SVD sampling", steps, note="diffusers pipeline, output_type=latent"):
        pipe(
            image,
            height=height,
            width=width,
            num_frames=num_frames,
            num_inference_steps=steps,
            generator=seeded_generator(cfg.seed),
            output_type="latent",
            **cfg.conditioning,
        )


def measure_edit(
    args: argparse.Namespace,
    cfg: DictConfig,
    model: LoadedModel,
    frames: torch.Tensor,
    keyframe: torch.Tensor,
    meter: Meter,
) -> tuple[dict[str, ChainResult], list[str]]:
    """Warm-up, plain sampling, then the chain once per store backend; what each kept, and
    the failures (out of memory) that did not stop the others."""
    device = model.device
    results: dict[str, ChainResult] = {}
    failures = []
    if args.warmup:
        log.info("warm-up: the whole chain once at %d steps (not timed)", WARMUP_STEPS)
        warm = cfg.copy()
        warm.num_steps = WARMUP_STEPS
        run_chain(warm, model, frames, keyframe, Meter(device, False), "memory")
        empty_cache(device)
    try:
        run_plain_sampling(cfg, model.pipe, keyframe, len(frames), meter)
    except OutOfMemory as err:
        failures.append(f"plain sampling: out of memory: {str(err).splitlines()[0]}")
    empty_cache(device)
    for backend in args.stores:
        try:
            results[backend] = run_chain(cfg, model, frames, keyframe, meter, backend)
        except OutOfMemory as err:
            stage = meter.rows[-1].name
            failures.append(f"out of memory in stage '{stage}': {str(err).splitlines()[0]}")
            log.error("%s; reporting what was measured", failures[-1])
        empty_cache(device)
    return results, failures


# --------------------------------------------------------------------------- edit report


def stage_table(meter: Meter, build_seconds: float) -> tuple[list[str], list[list[str]]]:
    peak_label, held_label = meter.memory_label
    header = ["stage", "seconds", "s / UNet step", peak_label, held_label, "notes"]
    rows = [
        [
            row.name,
            f"{row.seconds:.3f}",
            f"{row.seconds / row.steps:.4f}" if row.steps else "",
            fmt_gb(row.peak),
            fmt_gb(row.held),
            row.note,
        ]
        for row in meter.rows
    ]
    rows.append(["model build", f"{build_seconds:.1f}", "", "", "", ""])
    return header, rows


def backend_table(
    meter: Meter, results: dict[str, ChainResult], peak_label: str
) -> tuple[list[str], list[list[str]]]:
    """Per store backend: the edit's time and its ratios to plain SVD sampling, the sampling
    peak, and the bytes kept between inversion and editing."""
    plain = meter.row("plain SVD sampling")
    header = [
        "store",
        "inversion (s)",
        "guided sampling (s)",
        "edit / plain sampling",
        "guided sampling / plain",
        "inversion / plain",
        f"sampling {peak_label}",
        "attention on disk per clip",
        "attention in memory",
        "trajectory",
    ]
    rows = []
    for backend, result in results.items():
        inv = meter.row(f"inversion [{backend}]")
        smp = meter.row(f"guided sampling [{backend}]")
        if inv is None or smp is None:
            continue

        def ratio(seconds: float) -> str:
            return f"{seconds / plain.seconds:.2f}" if plain is not None else "n/a"

        rows.append(
            [
                backend,
                f"{inv.seconds:.3f}",
                f"{smp.seconds:.3f}",
                ratio(inv.seconds + smp.seconds),
                ratio(smp.seconds),
                ratio(inv.seconds),
                fmt_gb(smp.peak),
                fmt_size(result.disk_bytes),
                fmt_size(result.memory_bytes),
                fmt_size(result.trajectory_bytes),
            ]
        )
    return header, rows


def records_table(
    store: MemoryStore, unet: torch.nn.Module, num_frames: int, hw: tuple[int, int]
) -> tuple[list[str], list[list[str]], RecordBytes, tuple[int, int, int, int]]:
    """The records the memory store kept, per step and over all steps; with the first step's
    bytes and the architecture's count (``analytic_record_elements``) to check them against."""
    indices = store.indices()
    per_step = measured_records(store, unet, 0) if indices else RecordBytes()
    all_steps = RecordBytes()
    for index in indices:
        r = measured_records(store, unet, index)
        all_steps.spatial += r.spatial
        all_steps.temporal += r.temporal
    analytic = analytic_record_elements(unet, num_frames, *hw)
    _, _, n_spatial, n_temporal = analytic
    header = ["attention records", "per step", f"all {len(indices)} steps"]
    rows = [
        [
            f"spatial Q+K ({n_spatial} layers)",
            fmt_size(per_step.spatial),
            fmt_size(all_steps.spatial),
        ],
        [
            f"temporal probabilities ({n_temporal} layers)",
            fmt_size(per_step.temporal),
            fmt_size(all_steps.temporal),
        ],
        ["total", fmt_size(per_step.total), fmt_size(all_steps.total)],
    ]
    return header, rows, per_step, analytic


def edit_memory_note(device: torch.device, meter: Meter) -> str:
    if device.type != "cpu":
        return (
            "peak allocated accelerator memory, reset at the start of each stage (the records, "
            "kept from inversion to sampling, count in both)"
        )
    if meter.rss_resettable:
        return (
            "peak resident memory of the whole process (weights included), reset at the start "
            "of each stage through /proc/self/clear_refs"
        )
    return "peak resident memory of the process so far (ru_maxrss; it cannot be reset)"


def run_benchmark(args: argparse.Namespace, cfg: DictConfig) -> tuple[str, list[str]]:
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    (height, width), num_frames, steps = cfg.model.resolution, cfg.model.num_frames, cfg.num_steps
    if args.model == "full" and device.type == "cpu":
        log.warning("the full-size model on a CPU takes hours per step; use --records-only")
    log.info("building the %s model on %s (%s)", args.model, device, dtype)
    start = time.perf_counter()
    model = build_model(args.model, cfg, device, dtype)
    synchronize(device)
    build_seconds = time.perf_counter() - start
    frames, keyframe = synthetic_clip(num_frames, height, width)

    meter = Meter(device)
    with tempfile.TemporaryDirectory(prefix="i2vedit-bench-", ignore_cleanup_errors=True) as tmp:
        cfg.paths.cache_dir = tmp  # the disk store's records, removed with it
        results, failures = measure_edit(args, cfg, model, frames, keyframe, meter)
    peak_label = meter.memory_label[0]
    header, rows = stage_table(meter, build_seconds)
    backend_header, backend_rows = backend_table(meter, results, peak_label)
    memory_result = results.get("memory")
    store = memory_result.store if memory_result is not None else MemoryStore()
    h, w = latents_hw(model.pipe, height, width)
    record_header, record_rows, per_step, analytic = records_table(
        store, model.unet, num_frames, (h, w)
    )
    element = torch.empty(0, dtype=dtype).element_size()
    analytic_bytes = (analytic[0] + analytic[1]) * element
    check = (
        "matches" if analytic_bytes == per_step.total else f"differs ({fmt_size(analytic_bytes)})"
    )
    am, failure = cfg.attention_matching, "; ".join(failures)
    extra = [
        f"- Model: {args.model} ({model_summary(model.pipe)}), random weights, dtype "
        f"{dtype_name(dtype)}",
        f"- Clip: {num_frames} frames of {height}x{width} (latents {h}x{w}), {steps} steps, one "
        f"keyframe, beta {tuple(am.beta)}, mask_thr {tuple(am.mask_thr)}, {am.pairing} pairing; "
        f"warm-up {f'{WARMUP_STEPS}-step chain' if args.warmup else 'none'}",
        f"- Memory: {edit_memory_note(device, meter)}",
        *([f"- **Failed**: {failure}"] if failure else []),
        f"- Records are stored in {dtype_name(dtype)}; the architecture predicts "
        f"{fmt_size(analytic_bytes)} per step ({check} the store)",
    ]
    show(f"{args.model} model: stages", header, rows)
    show("attention store backends", backend_header, backend_rows)
    show("attention records", record_header, record_rows)
    body = [
        *environment_lines(device, extra),
        "",
        *markdown_table(header, rows),
        "",
        *markdown_table(backend_header, backend_rows),
        "",
        *markdown_table(record_header, record_rows),
    ]
    default_section = (
        f"Tiny model, {device_name(device) if device.type != 'cpu' else 'CPU'}"
        if args.model == "tiny"
        else f"Full-size SVD, {device_name(device)}"
    )
    return default_section, body


# --------------------------------------------------------------------------- records only


def record_one_step(
    unet: torch.nn.Module, dtype: torch.dtype, frames: int, h: int, w: int, sigma: float
) -> MemoryStore:
    """One inversion step (one UNet pass under AttentionRecorder) on meta tensors."""
    meta = unet.device
    channels = unet.config.out_channels
    cond = Condition(
        embeddings=torch.empty(1, 1, unet.config.cross_attention_dim, device=meta, dtype=dtype),
        image_latents=torch.empty(1, frames, channels, h, w, device=meta, dtype=dtype),
        time_ids=torch.empty(1, 3, device=meta, dtype=dtype),
        guided=False,
    )
    x = torch.empty(1, frames, channels, h, w, device=meta, dtype=torch.float32)
    store = MemoryStore(dtype=dtype)
    recorder = AttentionRecorder(store)
    recorder.step = 0
    with torch.inference_mode(), controlled_attention(unet, recorder):
        out = denoise(unet, x, sigma, cond)
    if out.shape != x.shape:
        raise RuntimeError(f"meta UNet pass gave {tuple(out.shape)}, expected {tuple(x.shape)}")
    return store


def meta_model(kind: str, cfg: DictConfig, meta: torch.device, dtype: torch.dtype) -> LoadedModel:
    """The model with meta parameters: shapes and dtypes only."""
    if kind == "full":
        return build_model(kind, cfg, meta, dtype)
    model = build_model(kind, cfg, torch.device("cpu"), torch.float32)
    for module in (model.pipe.unet, model.pipe.vae, model.pipe.image_encoder):
        module.to(device=meta, dtype=dtype)
    return LoadedModel(model.pipe, meta, dtype, model.identity)


@dataclass
class RecordCount:
    """One dtype's records per step: measured on meta tensors (or, failing that, from the
    architecture), and how."""

    measured: RecordBytes
    method: str


def count_records(
    kind: str, cfg: DictConfig, dtype: torch.dtype
) -> tuple[RecordCount, LoadedModel, tuple[int, int, int, int], str]:
    """Build the model on the meta device in ``dtype`` and record one inversion step; returns
    the count, the model, the architecture's count and the failure of the meta pass (if any)."""
    (height, width), num_frames = cfg.model.resolution, cfg.model.num_frames
    meta = torch.device("meta")  # not hardware: shapes and dtypes only, no storage
    log.info("building the %s model on the meta device in %s", kind, dtype_name(dtype))
    model = meta_model(kind, cfg, meta, dtype)
    unet = model.unet
    h, w = latents_hw(model.pipe, height, width)
    analytic = analytic_record_elements(unet, num_frames, h, w)
    element = torch.empty(0, dtype=dtype).element_size()
    shapes = RecordBytes(analytic[0] * element, analytic[1] * element)
    sigma = float(inversion_sigmas(karras_sigmas(model.pipe, cfg.num_steps))[0])
    try:
        store = record_one_step(unet, dtype, num_frames, h, w, sigma)
    except Exception as err:  # any failure of the meta pass falls back to the shapes
        failure = f"{type(err).__name__}: {err}".splitlines()[0][:200]
        log.warning("meta UNet pass failed (%s); using the analytic shapes", failure)
        return (
            RecordCount(shapes, "analytic shapes from the architecture"),
            model,
            analytic,
            failure,
        )
    measured = measured_records(store, unet, 0)
    devices = {t.device.type for t in store._data.values()}
    log.info("meta pass in %s: %d records on %s", dtype_name(dtype), len(store._data), devices)
    if measured.total != shapes.total:
        log.warning(
            "meta pass (%d B) and architecture (%d B) disagree", measured.total, shapes.total
        )
    return (
        RecordCount(measured, "one UNet pass on meta tensors (AttentionRecorder)"),
        model,
        analytic,
        "",
    )


def records_only_table(
    b16: RecordBytes, b32: RecordBytes, steps: int, layers: tuple[int, int]
) -> tuple[list[str], list[list[str]]]:
    header = [
        "attention records",
        "per step, bf16/fp16",
        "per step, fp32",
        f"{steps} steps, bf16/fp16",
        f"{steps} steps, fp32",
    ]
    n_spatial, n_temporal = layers
    rows = []
    for label, pick in (
        (f"spatial Q+K ({n_spatial} layers)", lambda r: r.spatial),
        (f"temporal probabilities ({n_temporal} layers)", lambda r: r.temporal),
        ("total", lambda r: r.total),
    ):
        rows.append(
            [
                label,
                fmt_size(pick(b16)),
                fmt_size(pick(b32)),
                fmt_size(steps * pick(b16)),
                fmt_size(steps * pick(b32)),
            ]
        )
    return header, rows


def issue_formula_lines(
    b16: RecordBytes,
    b32: RecordBytes,
    analytic: tuple[int, int, int, int],
    num_frames: int,
    hw: tuple[int, int],
    steps: int,
) -> list[str]:
    """The issue's formula for the full-size model, against the measured bytes."""
    h, w = hw
    formula = issue_formula_bytes(4, num_frames, h, w)
    a_spatial, a_temporal = analytic[:2]
    exact_coef = a_temporal / (num_frames * num_frames * h * w)
    return [
        f"- The issue's formula, 4 B x F x h*w x ({ISSUE_SPATIAL_COEF:.0f} + "
        f"{ISSUE_TEMPORAL_COEF} F) at {h}x{w}, F={num_frames}: {fmt_size(formula)} per step in "
        f"fp32 ({formula / GB * steps:.1f} GB for {steps} steps); measured here "
        f"{fmt_size(b32.total)} ({b32.total / 2**30:.3f} GiB) per step, "
        f"{b32.total * steps / GB:.1f} GB for {steps} steps ({b32.total:,} B per step, "
        f"exactly). The exact coefficients of this architecture are "
        f"{a_spatial / (num_frames * h * w):.2f} and {exact_coef:.4f}",
        f"- In bf16/fp16, as this package stores them on an accelerator by default: "
        f"{fmt_size(b16.total)} per step, {b16.total * steps / GB:.1f} GB for {steps} steps",
    ]


def run_records_only(args: argparse.Namespace, cfg: DictConfig) -> tuple[str, list[str]]:
    (height, width), num_frames, steps = cfg.model.resolution, cfg.model.num_frames, cfg.num_steps
    half = torch.bfloat16
    counts: dict[torch.dtype, RecordCount] = {}
    failure = ""
    for dtype in (half, torch.float32):
        counts[dtype], model, analytic, failed = count_records(args.model, cfg, dtype)
        failure = failed or failure
    a_spatial, a_temporal, n_spatial, n_temporal = analytic
    b16, b32 = counts[half].measured, counts[torch.float32].measured
    method16, method32 = counts[half].method, counts[torch.float32].method
    method = method16 if method16 == method32 else f"bf16: {method16}; fp32: {method32}"
    header, rows = records_only_table(b16, b32, steps, (n_spatial, n_temporal))
    h, w = latents_hw(model.pipe, height, width)
    analytic32 = (a_spatial + a_temporal) * 4
    extra = [
        f"- Model: {args.model} ({model_summary(model.pipe)}), built on the meta device (no "
        "storage)",
        f"- Clip: {num_frames} frames of {height}x{width}, latents {h}x{w}; "
        f"{len(registered_layers(model.unet))} recorded layers; records per step are those of "
        f"one inversion step ({cfg.attention_matching.pairing} pairing keeps {steps} steps' "
        "records)",
        f"- Method: {method}" + (f" (meta pass failed: `{failure}`)" if failure else ""),
        f"- Check against the architecture (F x heads x tokens x head_dim x 2 per spatial layer, "
        f"tokens x heads x F x F per temporal layer): fp32 {fmt_size(analytic32)} per step, "
        f"{'equal to' if analytic32 == b32.total else 'different from'} the measured "
        f"{fmt_size(b32.total)}",
    ]
    if args.model == "full":
        extra += issue_formula_lines(b16, b32, analytic, num_frames, (h, w), steps)
    show("attention records (from the architecture)", header, rows, extra)
    body = [*environment_lines(torch.device("meta"), extra), "", *markdown_table(header, rows)]
    default_section = (
        f"{'Full-size SVD' if args.model == 'full' else 'Tiny model'} attention records "
        f"({height}x{width}x{num_frames}, from the architecture)"
    )
    return default_section, body


# --------------------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, DictConfig]:
    """The command line, and the edit config it runs with (``conf/edit.yaml``, the model's
    ``conf/model`` option, and the values given here)."""
    tiny, full = (bench_config("edit", kind) for kind in MODEL_OPTIONS)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=tuple(MODEL_OPTIONS), default="tiny")
    for flag, what, pick in (
        ("--height", "frame height", lambda c: c.model.resolution[0]),
        ("--width", "frame width", lambda c: c.model.resolution[1]),
        ("--frames", "frames per clip", lambda c: c.model.num_frames),
    ):
        parser.add_argument(flag, type=int, help=f"{what} (tiny {pick(tiny)}, full {pick(full)})")
    parser.add_argument(
        "--steps", type=int, help=f"inversion and sampling steps ({tiny.num_steps})"
    )
    parser.add_argument("--device", help=f"{tiny.device}: the accelerator if present")
    parser.add_argument("--dtype", help=f"{tiny.dtype}, fp32, fp16 or bf16")
    parser.add_argument("--seed", type=int, help=f"run and weights seed ({tiny.seed})")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice); 1 is steadier on a shared machine",
    )
    parser.add_argument(
        "--decode-chunk", type=int, help=f"VAE frames per call ({tiny.model.decode_chunk_size})"
    )
    parser.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"run the chain once at {WARMUP_STEPS} steps before timing (default on)",
    )
    parser.add_argument(
        "--records-only",
        action="store_true",
        help="no model run: attention-record bytes from a meta-device pass",
    )
    parser.add_argument(
        "--stores",
        nargs="+",
        choices=("memory", "disk", "recompute"),
        default=["memory", "disk", "recompute"],
        help="attention store backends to run (default: all three)",
    )
    parser.add_argument("--out", type=Path, default=BENCHMARKS_MD)
    parser.add_argument("--section", help="markdown section to replace or append")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    cfg = tiny if args.model == "tiny" else full
    if args.steps is not None and args.steps < 2:
        parser.error("--steps must be at least 2 (inversion needs two sigmas)")
    return args, with_arguments(cfg, args)


def with_arguments(cfg: DictConfig, args: argparse.Namespace) -> DictConfig:
    """``cfg`` with the values given on the command line."""
    m = cfg.model
    m.resolution = [args.height or m.resolution[0], args.width or m.resolution[1]]
    m.num_frames = args.frames or m.num_frames
    m.decode_chunk_size = args.decode_chunk or m.decode_chunk_size
    cfg.num_steps = args.steps or cfg.num_steps
    cfg.device = args.device or cfg.device
    cfg.dtype = args.dtype or cfg.dtype
    cfg.seed = m.seed = cfg.seed if args.seed is None else args.seed
    return cfg


def main(argv: list[str] | None = None) -> int:
    setup_logging(names=("i2vedit", "benchlib", "bench_edit"))
    args, cfg = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = run_records_only if args.records_only else run_benchmark
    default_section, body = run(args, cfg)
    if not args.no_write:
        write_section(args.out, args.section or default_section, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
