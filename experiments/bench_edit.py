"""Benchmark of the edit pipeline's stages, chained as ``i2vedit.tasks.edit.run_edit`` chains them.

One source clip and one keyframe, synthesised in memory (no video files, no ``av``): SARP, VAE
encode, conditioning, EDM inversion with attention recording, guided sampling with attention
matching, VAE decode. Each stage is timed (synchronised on accelerators) with its peak memory,
and the attention records that inversion leaves for editing are measured per step.

    python experiments/bench_edit.py --model tiny --section "Tiny model, CPU"
    python experiments/bench_edit.py --model full --section "Full-size SVD, <GPU name>"
    python experiments/bench_edit.py --model full --records-only

``--model full`` is the full-size SVD img2vid architecture (UNet, temporal VAE, ViT-H/14 CLIP)
with random weights: the timings and memory of the real model, without its checkpoint.
``--records-only`` needs no accelerator: it builds the UNet on the meta device and runs one
recording UNet pass on meta tensors, which allocates nothing but gives every record's shape.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.util
import logging
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import (
    AutoencoderKLTemporalDecoder,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from rich.console import Console
from rich.table import Table
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("i2vedit") is None:  # a checkout without the package installed
    sys.path.insert(0, str(ROOT / "src"))

from i2vedit.attention.control import (  # noqa: E402
    AttentionMatcher,
    AttentionRecorder,
    MatchingParams,
    controlled_attention,
)
from i2vedit.attention.layers import (  # noqa: E402
    SPATIAL,
    analytic_record_elements,
    registered_layers,
)
from i2vedit.attention.store import DiscardStore, DiskStore, MemoryStore  # noqa: E402
from i2vedit.inversion.edm import edm_invert, inversion_sigmas  # noqa: E402
from i2vedit.inversion.recompute import RecomputeStore  # noqa: E402
from i2vedit.inversion.sarp import sarp  # noqa: E402
from i2vedit.models.device import resolve_device, resolve_dtype  # noqa: E402
from i2vedit.models.svd import load_model, svd_scheduler  # noqa: E402
from i2vedit.progress import setup_logging  # noqa: E402
from i2vedit.sampling.edm import (  # noqa: E402
    Condition,
    ConditioningParams,
    decode_video,
    denoise,
    encode_condition,
    encode_video,
    guidance_scales,
    karras_sigmas,
)
from i2vedit.sampling.sampler import sample  # noqa: E402

log = logging.getLogger("bench_edit")
console = Console(width=None if sys.stdout.isatty() else 160)  # a log file gets wide tables

#: torch.OutOfMemoryError is torch >= 2.5; without it no run is reported as out of memory.
OutOfMemory = getattr(torch, "OutOfMemoryError", MemoryError)

GB = 1e9
MB = 1e6

#: (height, width, frames, steps) when not given on the command line.
DEFAULTS = {"tiny": (32, 48, 8, 25), "full": (576, 1024, 14, 25)}

#: stable-video-diffusion-img2vid unet/config.json (the diffusers class defaults, plus the
#: sample size and the 14 frames of img2vid; num_frames does not change the weights).
SVD_UNET = dict(
    sample_size=96,
    in_channels=8,
    out_channels=4,
    down_block_types=(
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "DownBlockSpatioTemporal",
    ),
    up_block_types=(
        "UpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
    ),
    block_out_channels=(320, 640, 1280, 1280),
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=768,
    layers_per_block=2,
    cross_attention_dim=1024,
    transformer_layers_per_block=1,
    num_attention_heads=(5, 10, 20, 20),
    num_frames=14,
)

#: stable-video-diffusion-img2vid vae/config.json. Unlike the UNet, these are NOT the class
#: defaults (which are a one-block toy VAE): the SD 2.x encoder, 4 levels of 2 layers.
SVD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=768,
    scaling_factor=0.18215,
    force_upcast=True,
)

#: stable-video-diffusion-img2vid image_encoder/config.json: OpenCLIP ViT-H/14 vision tower.
SVD_CLIP = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=16,
    patch_size=14,
    image_size=224,
    projection_dim=1024,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
)

#: The issue's worked formula for the reference's records of SVD per step, at latent h x w:
#: bytes-per-element * F * h * w * (SPATIAL_COEF + TEMPORAL_COEF * F).
ISSUE_SPATIAL_COEF = 5640.0
ISSUE_TEMPORAL_COEF = 44.06

SARP_NOISE_SCALE = 0.005  # conf/sarp/default.yaml
SARP_THRESHOLD = 0.001
BETA = (0.5, 0.8)
MASK_THR = (0.35, 0.35)


# --------------------------------------------------------------------------- models


@contextlib.contextmanager
def building(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on ``device`` in ``dtype`` (no fp32 copy in host memory)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


def build_full_pipeline(
    device: torch.device, dtype: torch.dtype, seed: int
) -> StableVideoDiffusionPipeline:
    """The full-size SVD img2vid components with random weights, built on ``device``."""
    torch.manual_seed(seed)
    with building(device, dtype):
        unet = UNetSpatioTemporalConditionModel(**SVD_UNET)
    # as load_model does: the SVD VAE overflows in fp16, so it stays in fp32 there
    vae_dtype = torch.float32 if dtype == torch.float16 else dtype
    with building(device, vae_dtype):
        vae = AutoencoderKLTemporalDecoder(**SVD_VAE)
    with building(device, dtype):
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**SVD_CLIP))
    pipe = StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=svd_scheduler(),
        feature_extractor=CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}),
    )
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.image_encoder):
        module.requires_grad_(False)
        module.eval()
        gather(module, device)
    return pipe


def gather(module: torch.nn.Module, device: torch.device) -> None:
    """Move what the device context missed onto ``device``: tensors made by the legacy
    ``torch.Tensor([...])`` constructor (the AlphaBlender mix factors) stay on the CPU."""
    tensors = [*module.parameters(), *module.buffers()]
    strays = sum(t.device != device for t in tensors)
    if strays:
        log.info("%s: %d tensors built off %s, moved", type(module).__name__, strays, device)
        module.to(device=device)


def build_pipeline(
    kind: str, device: torch.device, dtype: torch.dtype, seed: int
) -> StableVideoDiffusionPipeline:
    if kind == "tiny":
        return load_model("tiny", None, seed, None, device, dtype).pipe
    return build_full_pipeline(device, dtype, seed)


def millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


# --------------------------------------------------------------------------- measurement


def synchronize(device: torch.device) -> None:
    if device.type in ("cpu", "meta"):
        return
    if hasattr(torch, "accelerator"):
        torch.accelerator.synchronize(device)
    else:
        getattr(torch, device.type).synchronize()


def _accelerator_call(device: torch.device, name: str) -> int | None:
    """``torch.accelerator.<name>()`` or the backend module's (``torch.<device type>``)."""
    for owner in (getattr(torch, "accelerator", None), getattr(torch, device.type, None)):
        fn = getattr(owner, name, None)
        if fn is None:
            continue
        try:
            result = fn(device)
        except (RuntimeError, TypeError, AttributeError):
            continue
        return None if result is None else int(result)
    return None


def _proc_status_bytes(key: str) -> int | None:
    """``VmHWM``/``VmRSS`` of /proc/self/status in bytes (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux: ``5`` into clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status_bytes("VmHWM") is not None


def _ru_maxrss_bytes() -> int:
    import resource  # Unix only; imported where it is needed

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@dataclass
class StageRow:
    name: str
    seconds: float
    steps: int | None
    peak: int | None
    held: int | None
    note: str = ""


@dataclass
class Meter:
    """Times stages and records their peak memory; ``enabled=False`` only synchronises."""

    device: torch.device
    enabled: bool = True
    rows: list[StageRow] = field(default_factory=list)
    rss_resettable: bool = False

    def __post_init__(self) -> None:
        self.on_host = self.device.type == "cpu"
        if self.on_host:
            self.rss_resettable = _reset_rss_peak()

    @property
    def memory_label(self) -> tuple[str, str]:
        if not self.on_host:
            return "peak allocated (GB)", "allocated after (GB)"
        if self.rss_resettable:
            return "peak RSS of process (GB)", "RSS after (GB)"
        return "peak RSS of process so far (GB)", "RSS after (GB)"

    def _reset(self) -> None:
        if self.on_host:
            if self.rss_resettable:
                _reset_rss_peak()
        else:
            for owner in (getattr(torch, "accelerator", None), getattr(torch, self.device.type)):
                fn = getattr(owner, "reset_peak_memory_stats", None)
                if fn is not None:
                    with contextlib.suppress(RuntimeError, TypeError, AttributeError):
                        fn(self.device)
                        return

    def _peak(self) -> int | None:
        if not self.on_host:
            return _accelerator_call(self.device, "max_memory_allocated")
        if self.rss_resettable:
            return _proc_status_bytes("VmHWM")
        return _ru_maxrss_bytes()

    def _held(self) -> int | None:
        if not self.on_host:
            return _accelerator_call(self.device, "memory_allocated")
        return _proc_status_bytes("VmRSS")

    @contextlib.contextmanager
    def stage(self, name: str, steps: int | None = None, note: str = "") -> Iterator[None]:
        synchronize(self.device)
        if self.enabled:
            self._reset()
            log.info("stage: %s", name)
        start = time.perf_counter()
        try:
            yield
        except OutOfMemory:
            if self.enabled:  # the table still shows how far it got and at what peak
                seconds = time.perf_counter() - start
                self.rows.append(
                    StageRow(name, seconds, steps, self._peak(), None, "OUT OF MEMORY")
                )
            raise
        synchronize(self.device)
        seconds = time.perf_counter() - start
        if self.enabled:
            self.rows.append(StageRow(name, seconds, steps, self._peak(), self._held(), note))


def empty_cache(device: torch.device) -> None:
    gc.collect()
    if device.type in ("cpu", "meta"):
        return
    owner = getattr(torch, "accelerator", None) or getattr(torch, device.type)
    fn = getattr(owner, "empty_cache", None)
    if fn is not None:
        fn()


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


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


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


def run_chain(
    pipe: StableVideoDiffusionPipeline,
    device: torch.device,
    dtype: torch.dtype,
    frames: torch.Tensor,
    keyframe: torch.Tensor,
    steps: int,
    seed: int,
    chunk: int,
    meter: Meter,
    backend: str,
    scratch: Path,
) -> ChainResult:
    """SARP, encode, condition, invert (keeping what ``backend`` needs), sample (matching),
    decode: run_edit's stages on in-memory frames, with one keyframe."""
    unet = pipe.unet
    num_frames = frames.shape[0]
    cond_params = ConditioningParams()
    sigmas = karras_sigmas(pipe, steps)
    tag = f" [{backend}]"
    with torch.inference_mode():
        clip = frames.to(device)
        image = keyframe.to(device)
        with meter.stage("SARP" + tag, note=f"noise {SARP_NOISE_SCALE}"):
            clip = sarp(clip, SARP_NOISE_SCALE, SARP_THRESHOLD, generator(seed))
        with meter.stage("VAE encode" + tag, note=f"{num_frames} frames, chunks of {chunk}"):
            latents = encode_video(pipe, clip, chunk)
        with meter.stage("conditioning" + tag, note="CLIP + first-frame VAE, source and keyframe"):
            source_cond = encode_condition(
                pipe, clip[:1], cond_params, num_frames, generator(seed), guided=False
            )
            cond = encode_condition(
                pipe, image, cond_params, num_frames, generator(seed), guided=True
            )
        result = ChainResult(None)
        trajectory: list[torch.Tensor] | None = None
        if backend == "memory":
            store = MemoryStore(dtype=dtype)
        elif backend == "disk":
            store = DiskStore(scratch / "records", dtype, device)
        else:
            store, trajectory = DiscardStore(), []
        recorder = AttentionRecorder(store)
        with (
            meter.stage("inversion" + tag, steps, note=INVERSION_NOTES[backend]),
            controlled_attention(unet, recorder),
        ):
            inverted = edm_invert(
                unet, latents, source_cond, sigmas, recorder, trajectory=trajectory
            )
            if backend == "disk":
                store.finish()
        if backend == "memory":
            result.memory_bytes = store.nbytes()
        elif backend == "disk":
            result.disk_bytes = store.written_bytes
        else:
            kept = torch.stack(trajectory)
            result.trajectory_bytes = kept.numel() * kept.element_size()
            store = RecomputeStore(unet, kept, source_cond, inversion_sigmas(sigmas), dtype)
        result.store = store
        params = MatchingParams(num_steps=steps, beta=BETA, mask_thr=MASK_THR)
        matcher = AttentionMatcher(store, params)
        guidance = guidance_scales(cond_params, num_frames)
        with (
            meter.stage("guided sampling" + tag, steps, note=SAMPLING_NOTES[backend]),
            controlled_attention(unet, matcher),
        ):
            edited = sample(unet, inverted, cond, sigmas, guidance, matcher)
        with meter.stage("VAE decode" + tag, note=f"chunks of {chunk}, to host"):
            decoded = decode_video(pipe, edited, chunk).cpu()
        if backend == "disk":
            store.close()
    if not torch.isfinite(decoded).all():
        log.info("decoded frames hold non-finite values (random weights): timings still hold")
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


def run_plain_sampling(
    pipe: StableVideoDiffusionPipeline,
    keyframe: torch.Tensor,
    num_frames: int,
    steps: int,
    seed: int,
    meter: Meter,
) -> None:
    """diffusers' own StableVideoDiffusionPipeline sampling of the same size, latents out."""
    from PIL import Image

    array = ((keyframe[0].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy()
    image = Image.fromarray(array)
    height, width = keyframe.shape[-2:]
    pipe.set_progress_bar_config(disable=True)
    with meter.stage("plain SVD sampling", steps, note="diffusers pipeline, output_type=latent"):
        pipe(
            image,
            height=height,
            width=width,
            num_frames=num_frames,
            num_inference_steps=steps,
            generator=generator(seed),
            output_type="latent",
        )


# --------------------------------------------------------------------------- reports


def fmt_gb(value: int | float | None) -> str:
    return "n/a" if value is None else f"{value / GB:.3f}"


def fmt_size(value: float) -> str:
    return f"{value / GB:.3f} GB" if value >= 0.1 * GB else f"{value / MB:.3f} MB"


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type in ("cpu", "meta"):
        host = f"{cpu_name()}, {os.cpu_count()} cores, torch threads: {torch.get_num_threads()}"
        return host if device.type == "cpu" else f"meta device on {host}"
    fn = getattr(getattr(torch, device.type, None), "get_device_name", None)
    return fn(device) if fn is not None else str(device)


def environment_lines(device: torch.device, extra: list[str]) -> list[str]:
    command = "python " + shlex.join([_display_path(sys.argv[0]), *sys.argv[1:]])
    return [
        f"- Command: `{command}`",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Device: {device_name(device)}",
        f"- Versions: torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}",
        *extra,
    ]


def _display_path(path: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(Path.cwd()))
    return path


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def rich_table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def write_section(path: Path, section: str, body: list[str]) -> None:
    """Replace the ``## section`` of ``path`` (up to the next heading of level 1 or 2) with
    ``body``, or append it; the rest of the file is kept."""
    heading = f"## {section}"
    lines = path.read_text().splitlines() if path.exists() else ["# Benchmarks"]
    block = [heading, "", *body]
    while block[-1] == "":
        block.pop()
    if heading in lines:
        start = lines.index(heading)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith(("# ", "## "))),
            len(lines),
        )
        tail = lines[end:]
        lines = lines[:start] + block + ([""] if tail else []) + tail
    else:
        while lines and lines[-1] == "":
            lines.pop()
        lines += ["", *block]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    log.info("wrote section %r of %s", section, path)


# --------------------------------------------------------------------------- modes


def run_benchmark(args: argparse.Namespace) -> tuple[str, list[str]]:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    height, width, num_frames, steps = args.height, args.width, args.frames, args.steps
    if args.model == "full" and device.type == "cpu":
        log.warning("the full-size model on a CPU takes hours per step; use --records-only")
    log.info("building the %s model on %s (%s)", args.model, device, dtype)
    start = time.perf_counter()
    pipe = build_pipeline(args.model, device, dtype, args.seed)
    synchronize(device)
    build_seconds = time.perf_counter() - start
    frames, keyframe = synthetic_clip(num_frames, height, width)

    scratch = Path(tempfile.mkdtemp(prefix="i2vedit-bench-"))
    meter = Meter(device)
    results: dict[str, ChainResult] = {}
    failures = []
    try:
        if args.warmup:
            log.info("warm-up: the whole chain once at 2 steps (not timed)")
            warm = Meter(device, False)
            run_chain(
                pipe,
                device,
                dtype,
                frames,
                keyframe,
                2,
                args.seed,
                args.decode_chunk,
                warm,
                "memory",
                scratch / "warm",
            )
            empty_cache(device)
        try:
            run_plain_sampling(pipe, keyframe, num_frames, steps, args.seed, meter)
        except OutOfMemory as err:
            failures.append(f"plain sampling: out of memory: {str(err).splitlines()[0]}")
        empty_cache(device)
        for backend in args.stores:
            try:
                results[backend] = run_chain(
                    pipe,
                    device,
                    dtype,
                    frames,
                    keyframe,
                    steps,
                    args.seed,
                    args.decode_chunk,
                    meter,
                    backend,
                    scratch / backend,
                )
            except OutOfMemory as err:
                stage = meter.rows[-1].name
                failures.append(f"out of memory in stage '{stage}': {str(err).splitlines()[0]}")
                log.error("%s; reporting what was measured", failures[-1])
            empty_cache(device)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    failure = "; ".join(failures)
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
    backend_header, backend_rows = backend_table(meter, results, peak_label)
    memory_result = results.get("memory")
    store = memory_result.store if memory_result is not None else MemoryStore()

    unet = pipe.unet
    indices = store.indices()
    per_step = measured_records(store, unet, 0) if indices else RecordBytes()
    all_steps = RecordBytes()
    for index in indices:
        r = measured_records(store, unet, index)
        all_steps.spatial += r.spatial
        all_steps.temporal += r.temporal
    h, w = latents_hw(pipe, height, width)
    a_spatial, a_temporal, n_spatial, n_temporal = analytic_record_elements(unet, num_frames, h, w)
    element = torch.empty(0, dtype=dtype).element_size()
    record_header = ["attention records", "per step", f"all {len(indices)} steps"]
    record_rows = [
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
    analytic = (a_spatial + a_temporal) * element
    check = "matches" if analytic == per_step.total else f"differs ({fmt_size(analytic)})"

    memory_note = (
        "peak allocated accelerator memory, reset at the start of each stage (the records, "
        "kept from inversion to sampling, count in both)"
        if device.type != "cpu"
        else (
            "peak resident memory of the whole process (weights included), reset at the start "
            "of each stage through /proc/self/clear_refs"
            if meter.rss_resettable
            else "peak resident memory of the process so far (ru_maxrss; it cannot be reset)"
        )
    )
    extra = [
        f"- Model: {args.model} ({model_summary(pipe)}), random weights, dtype {dtype_name(dtype)}",
        f"- Clip: {num_frames} frames of {height}x{width} (latents {h}x{w}), {steps} steps, one "
        f"keyframe, beta {BETA}, mask_thr {MASK_THR}, reference pairing; "
        f"warm-up {'2-step chain' if args.warmup else 'none'}",
        f"- Memory: {memory_note}",
        *([f"- **Failed**: {failure}"] if failure else []),
        f"- Records are stored in {dtype_name(dtype)}; the architecture predicts "
        f"{fmt_size(analytic)} per step ({check} the store)",
    ]
    console.print(rich_table(f"{args.model} model: stages", header, rows))
    console.print(rich_table("attention store backends", backend_header, backend_rows))
    console.print(rich_table("attention records", record_header, record_rows))
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


def _row(meter: Meter, name: str) -> StageRow | None:
    return next((row for row in meter.rows if row.name == name), None)


def backend_table(
    meter: Meter, results: dict[str, ChainResult], peak_label: str
) -> tuple[list[str], list[list[str]]]:
    """Per store backend: the edit's time and its ratios to plain SVD sampling, the sampling
    peak, and the bytes kept between inversion and editing."""
    plain = _row(meter, "plain SVD sampling")
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
        inv = _row(meter, f"inversion [{backend}]")
        smp = _row(meter, f"guided sampling [{backend}]")
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


def latents_hw(pipe: StableVideoDiffusionPipeline, height: int, width: int) -> tuple[int, int]:
    return height // pipe.vae_scale_factor, width // pipe.vae_scale_factor


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def model_summary(pipe: StableVideoDiffusionPipeline) -> str:
    return (
        f"UNet {millions(pipe.unet):.1f}M, VAE {millions(pipe.vae):.1f}M, "
        f"CLIP image encoder {millions(pipe.image_encoder):.1f}M parameters"
    )


def record_one_step(
    unet: torch.nn.Module,
    dtype: torch.dtype,
    frames: int,
    h: int,
    w: int,
    steps: int,
) -> MemoryStore:
    """One inversion step (one UNet pass under AttentionRecorder) on meta tensors."""
    meta = unet.device
    scheduler = svd_scheduler()
    scheduler.set_timesteps(steps)
    sigma = float(inversion_sigmas(scheduler.sigmas.float())[0])
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


def meta_pipeline(
    kind: str, meta: torch.device, dtype: torch.dtype, seed: int
) -> StableVideoDiffusionPipeline:
    """The model with meta parameters: shapes and dtypes only."""
    if kind == "full":
        return build_full_pipeline(meta, dtype, seed)
    pipe = build_pipeline("tiny", torch.device("cpu"), torch.float32, seed)
    for module in (pipe.unet, pipe.vae, pipe.image_encoder):
        module.to(device=meta, dtype=dtype)
    return pipe


def run_records_only(args: argparse.Namespace) -> tuple[str, list[str]]:
    meta = torch.device("meta")  # not hardware: shapes and dtypes only, no storage
    height, width, num_frames, steps = args.height, args.width, args.frames, args.steps
    half = torch.bfloat16
    results: dict[torch.dtype, tuple[RecordBytes, str]] = {}
    failure = ""
    for dtype in (half, torch.float32):
        log.info("building the %s model on the meta device in %s", args.model, dtype_name(dtype))
        pipe = meta_pipeline(args.model, meta, dtype, args.seed)
        unet = pipe.unet
        h, w = latents_hw(pipe, height, width)
        a_spatial, a_temporal, n_spatial, n_temporal = analytic_record_elements(
            unet, num_frames, h, w
        )
        element = torch.empty(0, dtype=dtype).element_size()
        analytic = RecordBytes(a_spatial * element, a_temporal * element)
        try:
            store = record_one_step(unet, dtype, num_frames, h, w, steps)
            measured = measured_records(store, unet, 0)
            devices = {t.device.type for t in store._data.values()}
            log.info(
                "meta pass in %s: %d records on %s", dtype_name(dtype), len(store._data), devices
            )
            results[dtype] = (measured, "one UNet pass on meta tensors (AttentionRecorder)")
            if measured.total != analytic.total:
                log.warning(
                    "meta pass (%d B) and architecture (%d B) disagree",
                    measured.total,
                    analytic.total,
                )
        except Exception as err:  # any failure of the meta pass falls back to the shapes
            failure = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            log.warning("meta UNet pass failed (%s); using the analytic shapes", failure)
            results[dtype] = (analytic, "analytic shapes from the architecture")

    header = [
        "attention records",
        "per step, bf16/fp16",
        "per step, fp32",
        f"{steps} steps, bf16/fp16",
        f"{steps} steps, fp32",
    ]
    (b16, method16), (b32, method32) = results[half], results[torch.float32]
    method = method16 if method16 == method32 else f"bf16: {method16}; fp32: {method32}"
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
    analytic32 = (a_spatial + a_temporal) * 4
    extra = [
        f"- Model: {args.model} ({model_summary(pipe)}), built on the meta device (no storage)",
        f"- Clip: {num_frames} frames of {height}x{width}, latents {h}x{w}; "
        f"{len(registered_layers(unet))} recorded layers; records per step are those of one "
        f"inversion step (reference pairing keeps {steps} steps' records)",
        f"- Method: {method}" + (f" (meta pass failed: `{failure}`)" if failure else ""),
        f"- Check against the architecture (F x heads x tokens x head_dim x 2 per spatial layer, "
        f"tokens x heads x F x F per temporal layer): fp32 {fmt_size(analytic32)} per step, "
        f"{'equal to' if analytic32 == b32.total else 'different from'} the measured "
        f"{fmt_size(b32.total)}",
    ]
    if args.model == "full":
        formula = issue_formula_bytes(4, num_frames, h, w)
        exact_coef = a_temporal / (num_frames * num_frames * h * w)
        extra += [
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
    console.print(rich_table("attention records (from the architecture)", header, rows))
    for line in extra:
        console.print(line)
    body = [*environment_lines(meta, extra), "", *markdown_table(header, rows)]
    default_section = (
        f"{'Full-size SVD' if args.model == 'full' else 'Tiny model'} attention records "
        f"({height}x{width}x{num_frames}, from the architecture)"
    )
    return default_section, body


# --------------------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--height", type=int, help="frame height (tiny 32, full 576)")
    parser.add_argument("--width", type=int, help="frame width (tiny 48, full 1024)")
    parser.add_argument("--frames", type=int, help="frames per clip (tiny 8, full 14)")
    parser.add_argument("--steps", type=int, help="inversion and sampling steps (25)")
    parser.add_argument("--device", default="auto", help="auto: the accelerator if present")
    parser.add_argument("--dtype", default="auto", help="auto, fp32, fp16 or bf16")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice); 1 is steadier on a shared machine",
    )
    parser.add_argument("--decode-chunk", type=int, default=8, help="VAE frames per call")
    parser.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the chain once at 2 steps before timing (default on)",
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
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    parser.add_argument("--section", help="markdown section to replace or append")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    height, width, frames, steps = DEFAULTS[args.model]
    args.height = args.height or height
    args.width = args.width or width
    args.frames = args.frames or frames
    args.steps = args.steps or steps
    if args.steps < 2:
        parser.error("--steps must be at least 2 (inversion needs two sigmas)")
    return args


def main(argv: list[str] | None = None) -> int:
    setup_logging(names=("i2vedit", "bench_edit"))
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    default_section, body = run_records_only(args) if args.records_only else run_benchmark(args)
    if not args.no_write:
        write_section(args.out, args.section or default_section, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
