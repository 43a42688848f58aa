"""A cost model of a full-size edit and of one training step, before any GPU measures them.

Per stage of the edit (``i2vedit.runner``'s stages at 576x1024, 14 and 25 frames, 25 steps)
and for one motion-LoRA training step (512x896x14): the matmul and convolution FLOPs, counted
by ``torch.utils.flop_counter.FlopCounterMode`` over the project's own calls on the meta device
(the full-size architectures of ``i2vedit.models.specs``: shapes only, nothing allocated), and
the bytes that attention matching reads and writes in the GPU's memory, per kernel:

- ``torch``: ``attention.matching.blocked_masked_attention`` as written: both probability
  blocks materialised in fp32, and every elementwise pass of the blend a read and a write
  (:data:`TORCH_BLEND_PASSES`, counted from the code);
- ``triton``: ``attention.fused.fused_masked_attention`` as written: the row-distance Triton
  kernel (two streams over the keys), two fused attention calls and the elementwise blend of
  their outputs (:data:`TRITON_BLEND_PASSES`): no probability tensor, but 8 QK^T-sized products
  per layer instead of 3 (:data:`PRODUCTS`; added by hand, FlopCounterMode does not see inside a
  Triton kernel).

The time each stage implies at a stated GPU's peak (``--gpu``): FLOPs at the dense bf16 peak
plus the matching bytes at the memory bandwidth: a lower bound, reached by no real run, whose
ratios between stages (guided sampling over plain sampling, the edit over plain sampling) are
the ones to compare with the measured ratios.

    python experiments/cost_model.py --section "Cost model"        # writes docs/BENCHMARKS.md
    python experiments/cost_model.py --no-write --frames 14         # print only
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

EXPERIMENTS = Path(__file__).resolve().parent
if str(EXPERIMENTS) not in sys.path:  # run as a script, experiments/ is already first
    sys.path.insert(0, str(EXPERIMENTS))

from benchlib import (  # noqa: E402  (benchlib also puts src/ on the path if needed)
    BENCHMARKS_MD,
    bench_config,
    environment_lines,
    latents_hw,
    markdown_table,
    show,
    write_section,
)
from i2vedit.attention.control import (  # noqa: E402
    AttentionMatcher,
    AttentionRecorder,
    controlled_attention,
)
from i2vedit.attention.layers import (  # noqa: E402
    SPATIAL,
    analytic_record_elements,
    latent_sizes,
    registered_layers,
)
from i2vedit.attention.store import DiscardStore, MemoryStore  # noqa: E402
from i2vedit.core.edm import Condition, decode_video, denoise, encode_video  # noqa: E402
from i2vedit.core.lora import add_motion_lora, motion_lora_config, remove_lora  # noqa: E402
from i2vedit.files import write_text  # noqa: E402
from i2vedit.models.specs import build_full_size_pipeline  # noqa: E402
from i2vedit.models.tiny import build_tiny_pipeline  # noqa: E402
from i2vedit.progress import setup_logging  # noqa: E402
from i2vedit.runner import matching_params  # noqa: E402
from i2vedit.training.checkpointing import POLICIES, checkpointed  # noqa: E402
from i2vedit.training.loss import edm_loss  # noqa: E402

log = logging.getLogger("cost_model")

TFLOP = 1e12
TB = 1e12


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_flops: float  #: dense bf16 tensor-core peak, FLOP/s
    bandwidth: float  #: memory bandwidth, B/s


#: the GPUs of the table (vendor datasheet figures, dense, no sparsity)
GPUS = {
    "h200": GPU("NVIDIA H200 SXM (bf16 dense 989 TFLOP/s, HBM3e 4.8 TB/s)", 989 * TFLOP, 4.8 * TB),
    "h100": GPU("NVIDIA H100 SXM (bf16 dense 989 TFLOP/s, HBM3 3.35 TB/s)", 989 * TFLOP, 3.35 * TB),
}

#: the kernels of the spatial masked blend (``attention_matching.kernel``)
KERNELS = ("torch", "triton")

#: The torch path's passes over the (frames, heads, queries, keys) probability blocks, from
#: ``attention.matching`` (``attention_probs`` twice, ``blend_mask``, ``masked_attention_blend``):
#: (what, bytes read per element, bytes written per element), with ``a`` the activation's
#: element size (2 in bf16) and fp32 (4) where the code upcasts.
TORCH_BLEND_PASSES = (
    ("Q0 K0^T (source logits, activation dtype)", 0, "a"),
    ("Q K^T (edit logits)", 0, "a"),
    (".float() of both logits", "2a", 8),
    ("* scale, both", 8, 8),
    ("softmax, both", 8, 8),
    ("P0 - P", 8, 4),
    (".abs()", 4, 4),
    (".mean(heads) (reads all, writes 1/heads)", 4, 0),
    ("(1 - M) * P0", 4, 4),
    ("M * P", 4, 4),
    ("sum of the two", 8, 4),
    (".to(activation dtype)", 4, "a"),
    ("P~ V (reads the blended probabilities)", "a", 0),
)

#: The triton path's passes over (frames, heads, tokens, head dim) tensors, from
#: ``attention.fused.fused_masked_attention``: the row-distance kernel (two streams over the
#: keys: log-sum-exps, then distances; compulsory bytes, a frame-head's keys re-read from
#: cache), the two fused attention calls, ``matching.blend_outputs``. Same columns as above.
TRITON_BLEND_PASSES = (
    ("distance kernel: Q0 and Q", "2a", 0),
    ("distance kernel: K0 and K, two streams", "4a", 0),
    ("sdpa(Q0, K0, V)", "3a", "a"),
    ("sdpa(Q, K, V)", "3a", "a"),
    (".float() of both outputs", "2a", 8),
    ("(1 - M) * out0", 4, 4),
    ("M * out", 4, 4),
    ("sum of the two", 8, 4),
    (".to(activation dtype)", 4, "a"),
)

#: (frames, heads, queries) fp32 row distances: written by the kernel, read by distance_mask
TRITON_DISTANCE_BYTES = 8

#: QK^T-sized products per matched spatial layer: torch Q0 K0^T, Q K^T, P~ V; triton the two
#: fused attentions (2 each) and the distance kernel's two streams over both rows' logits
PRODUCTS = {"torch": 3, "triton": 8}


def _bytes(term: int | str, a: int) -> int:
    if isinstance(term, int):
        return term
    return int(term.removesuffix("a") or 1) * a


def bytes_per_element(passes: tuple, a: int) -> int:
    """Bytes read and written per element of the tensors ``passes`` runs over."""
    return sum(_bytes(read, a) + _bytes(write, a) for _, read, write in passes)


def torch_blend_bytes_per_element(a: int) -> int:
    """Bytes read and written per probability element (one of F x heads x Q x K) by the torch
    path, both probability blocks together."""
    return bytes_per_element(TORCH_BLEND_PASSES, a)


def spatial_match_bytes(
    kernel: str, frames: int, heads: int, tokens: int, head_dim: int, a: int
) -> int:
    """Bytes one spatial layer's masked blend moves for the conditional half of one guided
    pass (``tokens`` queries and keys per frame, records and activations of ``a`` bytes)."""
    rows = frames * heads * tokens
    if kernel == "torch":
        # the probability passes, then Q0, K0, Q, K and V read once each, the output written
        return rows * tokens * torch_blend_bytes_per_element(a) + 6 * rows * head_dim * a
    if kernel == "triton":
        per_element = bytes_per_element(TRITON_BLEND_PASSES, a)
        return rows * head_dim * per_element + rows * TRITON_DISTANCE_BYTES
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def spatial_match_flops(kernel: str, frames: int, heads: int, tokens: int, head_dim: int) -> int:
    """FLOPs of one matched spatial layer's products (conditional half), per kernel."""
    return PRODUCTS[kernel] * 2 * frames * heads * tokens * tokens * head_dim


def temporal_match_bytes(frames: int, heads: int, tokens: int, head_dim: int, a: int) -> int:
    """Bytes of one temporal layer's injection (both kernels): the recorded probabilities
    (tokens x heads x F x F) read, the values read, the output written."""
    return tokens * heads * frames * frames * a + 2 * tokens * heads * frames * head_dim * a


# --------------------------------------------------------------------------- FLOPs


def count_flops(fn: Callable[[], object]) -> int:
    """Matmul and convolution FLOPs of ``fn()`` (forward and, if it calls backward, backward),
    as ``FlopCounterMode`` counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@dataclass
class Shapes:
    """The clip's sizes and the meta tensors of one UNet pass."""

    frames: int
    height: int
    width: int
    h: int
    w: int
    element: int  #: the activations' and records' element size
    dtype: torch.dtype

    def cond(self, unet: torch.nn.Module, guided: bool) -> Condition:
        batch = 2 if guided else 1
        meta, channels = torch.device("meta"), unet.config.out_channels
        return Condition(
            embeddings=torch.empty(
                batch, 1, unet.config.cross_attention_dim, device=meta, dtype=self.dtype
            ),
            image_latents=torch.empty(
                batch, self.frames, channels, self.h, self.w, device=meta, dtype=self.dtype
            ),
            time_ids=torch.empty(batch, 3, device=meta, dtype=self.dtype),
            guided=guided,
        )

    def latents(self, unet: torch.nn.Module) -> torch.Tensor:
        channels = unet.config.out_channels
        return torch.empty(1, self.frames, channels, self.h, self.w, device="meta")


def layer_shapes(unet: torch.nn.Module, h: int, w: int) -> dict[str, tuple[int, int, int]]:
    """(heads, tokens per frame, head dim) of every registered layer."""
    sizes, levels = latent_sizes(unet, h, w), len(unet.config.block_out_channels)
    out = {}
    for layer in registered_layers(unet):
        block = 0 if layer.place == "mid" else int(layer.path.split(".")[1])
        level = {"down": block, "mid": levels - 1, "up": levels - 1 - block}[layer.place]
        attn = unet.get_submodule(layer.path)
        tokens = sizes[level][0] * sizes[level][1]
        out[layer.path] = (attn.heads, tokens, attn.to_q.out_features // attn.heads)
    return out


# --------------------------------------------------------------------------- the stages


@dataclass
class StageCost:
    """One stage: its FLOPs, and the bytes attention matching (or recording) moves, per
    kernel (the same for both kernels where the stage has no spatial blend)."""

    stage: str
    passes: str  #: what runs, e.g. "25 x UNet, batch 1"
    flops: float  #: counted with the torch kernel
    match_bytes: dict[str, float] = field(default_factory=dict)
    #: FLOPs a kernel adds to ``flops`` (the triton path's extra products; not countable by
    #: FlopCounterMode, which does not see inside a Triton kernel)
    extra_flops: dict[str, float] = field(default_factory=dict)

    def total_flops(self, kernel: str) -> float:
        return self.flops + self.extra_flops.get(kernel, 0.0)

    def seconds(self, gpu: GPU, kernel: str) -> float:
        flops, moved = self.total_flops(kernel), self.match_bytes.get(kernel, 0.0)
        return flops / gpu.bf16_flops + moved / gpu.bandwidth


@dataclass
class MetaClip:
    """The model on the meta device and the sizes of one clip."""

    pipe: object
    shapes: Shapes

    @property
    def unet(self) -> torch.nn.Module:
        return self.pipe.unet


def clip_shapes(pipe, frames: int, height: int, width: int) -> Shapes:
    h, w = latents_hw(pipe, height, width)
    dtype = pipe.unet.dtype
    return Shapes(frames, height, width, h, w, torch.empty((), dtype=dtype).element_size(), dtype)


def meta_clip(option: str, seed: int, frames: int, height: int, width: int) -> MetaClip:
    """The ``option`` model (tiny, svd or svd_xt) on the meta device in bf16, and the clip's
    shapes."""
    meta, dtype = torch.device("meta"), torch.bfloat16
    if option == "tiny":
        pipe = build_tiny_pipeline(seed)
        for module in (pipe.unet, pipe.vae, pipe.image_encoder):
            module.requires_grad_(False)
            module.eval()
            module.to(device=meta, dtype=dtype)
    else:
        pipe = build_full_size_pipeline(meta, dtype, seed, option)
    return MetaClip(pipe, clip_shapes(pipe, frames, height, width))


def unet_pass(clip: MetaClip, guided: bool, controller=None) -> Callable[[], object]:
    """One UNet evaluation as ``core.edm.denoise`` runs it (batch 2 when guided)."""
    unet, shapes = clip.unet, clip.shapes

    def run() -> None:
        cond = shapes.cond(unet, guided)
        guidance = torch.empty(1, shapes.frames, 1, 1, 1, device="meta") if guided else None
        if controller is not None:
            controller.guided = guided
        with torch.no_grad(), controlled_attention(unet, controller):
            denoise(unet, shapes.latents(unet), 1.0, cond, guidance)

    return run


def recorded_store(clip: MetaClip, index: int) -> MemoryStore:
    """One recording pass at record ``index`` on meta tensors (the matcher reads it)."""
    store = MemoryStore(dtype=clip.shapes.dtype)
    recorder = AttentionRecorder(store)
    recorder.step = index
    unet_pass(clip, False, recorder)()
    return store


def match_cost(clip: MetaClip, params, step: int, kernel: str) -> tuple[int, int]:
    """(bytes moved, FLOPs beyond the torch kernel's) of the matching of edit step ``step``
    (every layer that takes the source) with ``kernel``."""
    shapes, total, extra = clip.shapes, 0, 0
    dims = layer_shapes(clip.unet, shapes.h, shapes.w)
    for layer in registered_layers(clip.unet):
        if not params.schedule.matches(layer, step):
            continue
        heads, tokens, head_dim = dims[layer.path]
        if layer.kind == SPATIAL:
            size = (shapes.frames, heads, tokens, head_dim)
            total += spatial_match_bytes(kernel, *size, shapes.element)
            extra += spatial_match_flops(kernel, *size) - spatial_match_flops("torch", *size)
        else:
            total += temporal_match_bytes(shapes.frames, heads, tokens, head_dim, shapes.element)
    return total, extra


def guided_steps(clip: MetaClip, cfg: DictConfig) -> tuple[float, dict, dict, int]:
    """Guided sampling with matching over all steps: (FLOPs, bytes per kernel, extra FLOPs per
    kernel, the steps that read records). Steps that match the same layers cost the same: each kind is counted once."""
    am = cfg.attention_matching
    # one block of every frame and query: the same products as the blocked loop, in far
    # fewer calls (the meta device allocates nothing)
    am.spatial_attention_chunk_size = clip.shapes.frames
    am.query_block_size = clip.shapes.h * clip.shapes.w
    params = matching_params(cfg, tuple(am.beta), tuple(am.mask_thr))
    layers = registered_layers(clip.unet)
    cache: dict[tuple[bool, ...], float] = {}
    flops, nbytes, extra, reading = 0.0, dict.fromkeys(KERNELS, 0.0), dict.fromkeys(KERNELS, 0.0), 0
    for step in range(cfg.num_steps):
        signature = tuple(params.schedule.matches(layer, step) for layer in layers)
        if signature not in cache:
            index = params.schedule.record_index(step)
            matcher = AttentionMatcher(recorded_store(clip, index), params)
            matcher.step = step
            cache[signature] = count_flops(unet_pass(clip, True, matcher))
            log.info(
                "guided step %d: %.2f TFLOP (%d layers matched)",
                step,
                cache[signature] / TFLOP,
                sum(signature),
            )
        flops += cache[signature]
        reading += params.schedule.reads_records(step)
        for kernel in KERNELS:
            moved, added = match_cost(clip, params, step, kernel)
            nbytes[kernel] += moved
            extra[kernel] += added
    return flops, nbytes, extra, reading


def encode_flops(clip: MetaClip, chunk: int) -> float:
    """VAE encoding of the clip, and the two conditionings (source, keyframe): CLIP at 224 and
    the first frame's VAE encoding each."""
    pipe, s = clip.pipe, clip.shapes
    frames = torch.empty(s.frames, 3, s.height, s.width, device="meta")
    first = torch.empty(1, 3, s.height, s.width, device="meta", dtype=pipe.vae.dtype)
    pixels = torch.empty(1, 3, 224, 224, device="meta", dtype=pipe.image_encoder.dtype)

    def run() -> None:
        with torch.no_grad():
            encode_video(pipe, frames, chunk)
            for _ in range(2):
                pipe.image_encoder(pixels)
                pipe.vae.encode(first)

    return count_flops(run)


def decode_flops(clip: MetaClip, chunk: int) -> float:
    s = clip.shapes
    latents = torch.empty(1, s.frames, clip.unet.config.out_channels, s.h, s.w, device="meta")

    def run() -> None:
        with torch.no_grad():
            decode_video(clip.pipe, latents, chunk)

    return count_flops(run)


def edit_costs(clip: MetaClip, cfg: DictConfig) -> list[StageCost]:
    """The edit's stages (``runner``: invert_clip, edit_condition, edit_clip, decode_clip) per
    store, and diffusers' plain sampling of the same size."""
    steps, chunk = cfg.num_steps, cfg.model.decode_chunk_size
    s = clip.shapes
    source = count_flops(unet_pass(clip, False, AttentionRecorder(DiscardStore())))
    plain = count_flops(unet_pass(clip, True))
    extra = cfg.attention_matching.pairing == "exact"
    spatial, temporal, _, _ = analytic_record_elements(clip.unet, s.frames, s.h, s.w)
    written = (spatial + temporal) * s.element * (steps + extra)
    log.info("one UNet pass: %.2f TFLOP (batch 1), %.2f (batch 2)", source / TFLOP, plain / TFLOP)
    guided, nbytes, added, reading = guided_steps(clip, cfg)
    same = dict.fromkeys(KERNELS, written)
    return [
        StageCost(
            "VAE encode + 2 conditionings", f"{s.frames} frames, CLIP x2", encode_flops(clip, chunk)
        ),
        StageCost(
            "inversion (memory, disk)",
            f"{steps + extra} x UNet, batch 1; records written",
            source * (steps + extra),
            same,
        ),
        StageCost(
            "inversion (recompute)",
            f"{steps + extra} x UNet, batch 1; nothing kept",
            source * (steps + extra),
        ),
        StageCost(
            "guided sampling (memory, disk)",
            f"{steps} x UNet, batch 2, matching",
            guided,
            nbytes,
            added,
        ),
        StageCost(
            "guided sampling (recompute)",
            f"{steps} x UNet batch 2 + {reading} x source pass",
            guided + reading * source,
            nbytes,
            added,
        ),
        StageCost("VAE decode", f"{s.frames} frames, chunks of {chunk}", decode_flops(clip, chunk)),
        StageCost("plain SVD sampling", f"{steps} x UNet, batch 2", plain * steps),
    ]


def train_step_flops(clip: MetaClip, cfg: DictConfig, policy: str) -> float:
    """One motion-LoRA training step (forward, EDM loss, backward) with ``policy``
    checkpointing, the LoRA injected as ``MotionLoRAModule`` does."""
    unet, s, lora = clip.unet, clip.shapes, cfg.lora
    with torch.random.fork_rng(devices=[]):
        params = add_motion_lora(
            unet, motion_lora_config(unet, lora.rank, lora.alpha, lora.dropout)
        )
    for p in params:
        p.data = p.data.float()
    unet.train()
    latents = s.latents(unet)

    def run() -> None:
        loss = edm_loss(denoise(unet, latents, 1.0, s.cond(unet, False)), latents, 1.0)
        loss.backward()

    try:
        with checkpointed(unet, policy):
            return count_flops(run)
    finally:
        remove_lora(unet)
        unet.eval()
        unet.requires_grad_(False)


def train_costs(clip: MetaClip, cfg: DictConfig, policies: tuple[str, ...]) -> list[StageCost]:
    rows = []
    for policy in policies:
        flops = train_step_flops(clip, cfg, policy)
        rows.append(StageCost(f"training step, checkpointing {policy}", "fwd + loss + bwd", flops))
    return rows


# --------------------------------------------------------------------------- predictions


@dataclass
class Prediction:
    """What the model predicts for one clip size: its stages, and the edit's totals."""

    model: str
    frames: int
    height: int
    width: int
    steps: int
    stages: list[StageCost]

    def stage(self, name: str) -> StageCost:
        return next(s for s in self.stages if s.stage == name)

    def edit_seconds(self, gpu: GPU, store: str, kernel: str) -> dict[str, float]:
        """Implied seconds of the edit's parts with ``store`` and ``kernel``."""
        tag = "recompute" if store == "recompute" else "memory, disk"
        out = {
            "encode": self.stage("VAE encode + 2 conditionings").seconds(gpu, kernel),
            "inversion": self.stage(f"inversion ({tag})").seconds(gpu, kernel),
            "guided": self.stage(f"guided sampling ({tag})").seconds(gpu, kernel),
            "decode": self.stage("VAE decode").seconds(gpu, kernel),
            "plain": self.stage("plain SVD sampling").seconds(gpu, kernel),
        }
        out["edit"] = out["encode"] + out["inversion"] + out["guided"] + out["decode"]
        return out

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "frames": self.frames,
            "height": self.height,
            "width": self.width,
            "steps": self.steps,
            "stages": [
                {
                    "stage": s.stage,
                    "passes": s.passes,
                    "flops": s.flops,
                    "match_bytes": s.match_bytes,
                    "extra_flops": s.extra_flops,
                }
                for s in self.stages
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Prediction:
        stages = [StageCost(**s) for s in data["stages"]]
        keys = ("model", "frames", "height", "width", "steps")
        return cls(*(data[k] for k in keys), stages)


def predict(
    option: str,
    frames: int,
    height: int,
    width: int,
    steps: int,
    train: tuple[int, int, int] | None = None,
    policies: tuple[str, ...] = POLICIES,
) -> Prediction:
    """The cost model of an edit of ``frames`` frames at ``height`` x ``width`` with ``steps``
    steps on the ``option`` architecture (tiny, svd or svd_xt) and the values of
    ``conf/edit.yaml``; with ``train`` = (frames, height, width), also one training step per
    checkpointing policy with the values of ``conf/train.yaml``."""
    kind = "tiny" if option == "tiny" else "full"
    cfg = bench_config("edit", kind)
    cfg.num_steps = steps
    start = time.perf_counter()
    clip = meta_clip(option, cfg.model.seed, frames, height, width)
    stages = edit_costs(clip, cfg)
    if train is not None:
        trained = MetaClip(clip.pipe, clip_shapes(clip.pipe, *train))
        stages += train_costs(trained, bench_config("train", kind), policies)
    seconds = time.perf_counter() - start
    log.info("cost model of %s %dx%dx%d: %.0f s", option, height, width, frames, seconds)
    return Prediction(option, frames, height, width, steps, stages)


# --------------------------------------------------------------------------- report

#: what the default section models: (architecture, frames) of the edit at 576x1024, 25 steps;
#: the training step at 512x896x14
EDIT_SIZES = (("svd", 14), ("svd_xt", 25))
EDIT_HW = (576, 1024)
TRAIN_SIZE = (14, 512, 896)
STORES = ("memory", "disk", "recompute")

#: where the predictions are kept for ``gpu_suite.py`` (computing them takes minutes)
PREDICTIONS_JSON = EXPERIMENTS.parent / "docs" / "cost_model.json"


def fmt_tflop(flops: float) -> str:
    return f"{flops / TFLOP:.1f}" if flops >= TFLOP else f"{flops / TFLOP:.4f}"


def fmt_gbytes(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f}" if nbytes >= 1e9 else f"{nbytes / 1e9:.4f}"


def stage_rows(pred: Prediction, gpu: GPU) -> list[list[str]]:
    rows = []
    for s in pred.stages:
        torch_b, triton_b = (s.match_bytes.get(k, 0.0) for k in KERNELS)
        rows.append(
            [
                f"{pred.model} x{pred.frames}" if "training" not in s.stage else pred.model,
                s.stage,
                s.passes,
                fmt_tflop(s.total_flops("torch")),
                fmt_tflop(s.total_flops("triton")),
                fmt_gbytes(torch_b) if s.match_bytes else "",
                fmt_gbytes(triton_b) if s.match_bytes else "",
                f"{s.seconds(gpu, 'torch'):.2f}",
                f"{s.seconds(gpu, 'triton'):.2f}",
            ]
        )
    return rows


STAGE_HEADER = [
    "model",
    "stage",
    "what runs",
    "TFLOP, torch",
    "TFLOP, triton",
    "matching GB, torch",
    "matching GB, triton",
    "s at peak, torch",
    "s at peak, triton",
]


def ratio_rows(pred: Prediction, gpu: GPU) -> list[list[str]]:
    rows = []
    for store in STORES:
        for kernel in KERNELS:
            t = pred.edit_seconds(gpu, store, kernel)
            rows.append(
                [
                    f"{pred.model} x{pred.frames}",
                    store,
                    kernel,
                    f"{t['edit']:.2f}",
                    f"{t['plain']:.2f}",
                    f"{t['guided'] / t['plain']:.2f}",
                    f"{(t['inversion'] + t['guided']) / t['plain']:.2f}",
                    f"{t['edit'] / t['plain']:.2f}",
                ]
            )
    return rows


RATIO_HEADER = [
    "model",
    "store",
    "kernel",
    "edit s",
    "plain s",
    "guided / plain",
    "(inversion + guided) / plain",
    "edit / plain",
]


def report(preds: list[Prediction], gpu: GPU, seconds: float) -> list[str]:
    stage_table = [row for p in preds for row in stage_rows(p, gpu)]
    ratios = [row for p in preds for row in ratio_rows(p, gpu)]
    extra = [
        f"- GPU: {gpu.name}; implied time = FLOPs / bf16 dense peak + matching bytes / "
        "bandwidth: a lower bound (100% of peak, no launch overhead, UNet activations' own "
        "traffic not counted)",
        "- FLOPs: matmuls and convolutions by torch.utils.flop_counter.FlopCounterMode over the "
        "project's calls (core.edm.denoise under the runner's controllers, encode_video, "
        "decode_video, CLIP, the LoRA step's backward) on the meta device, bf16; attention "
        "counted as its matmuls (2 per plain attention; a matched spatial layer: see below)",
        f"- Matching bytes per guided step, per matched spatial layer (F frames, H heads, T "
        f"tokens, d head dim, a = 2 B): torch = F H T^2 x {torch_blend_bytes_per_element(2)} B "
        f"(the {len(TORCH_BLEND_PASSES)} passes of TORCH_BLEND_PASSES, counted from "
        "attention/matching.py) + 6 F H T d a; triton = F H T d x "
        f"{bytes_per_element(TRITON_BLEND_PASSES, 2)} B (the {len(TRITON_BLEND_PASSES)} passes "
        f"of TRITON_BLEND_PASSES, from attention/fused.py) + F H T x {TRITON_DISTANCE_BYTES} B; "
        "temporal layers, either kernel: the recorded probabilities T H F^2 a + 2 T H F d a. "
        "Inversion (memory, disk): the records written",
        f"- FLOPs of a matched spatial layer's products: torch {PRODUCTS['torch']}, triton "
        f"{PRODUCTS['triton']} x 2 F H T^2 d (the TFLOP, triton column adds the difference)",
        f"- Edit stages at {EDIT_HW[0]}x{EDIT_HW[1]}, {preds[0].steps} steps, conf/edit.yaml "
        f"values; training step at {TRAIN_SIZE[1]}x{TRAIN_SIZE[2]}x{TRAIN_SIZE[0]}, "
        f"conf/train.yaml values (LoRA rank etc.); computed in {seconds:.0f} s on the CPU",
    ]
    show("cost model: stages", STAGE_HEADER, stage_table)
    show("cost model: ratios", RATIO_HEADER, ratios, extra)
    return [
        *environment_lines(torch.device("meta"), extra),
        "",
        *markdown_table(STAGE_HEADER, stage_table),
        "",
        *markdown_table(RATIO_HEADER, ratios),
    ]


def load_predictions(path: Path = PREDICTIONS_JSON) -> list[Prediction]:
    """The predictions ``cost_model.py`` wrote last (none if the file is missing)."""
    if not path.exists():
        return []
    return [Prediction.from_dict(d) for d in json.loads(path.read_text())]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", choices=tuple(GPUS), default="h200")
    parser.add_argument("--model", choices=("full", "tiny"), default="full")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--frames", type=int, nargs="+", help="edit clip lengths (14 25)")
    parser.add_argument("--no-train", action="store_true", help="no training step")
    parser.add_argument("--out", type=Path, default=BENCHMARKS_MD)
    parser.add_argument("--json", type=Path, default=PREDICTIONS_JSON)
    parser.add_argument("--section", default="Cost model")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    setup_logging(names=("i2vedit", "benchlib", "cost_model"))
    args = parse_args(argv)
    start = time.perf_counter()
    if args.model == "tiny":
        sizes, hw, train = [("tiny", f) for f in args.frames or (8,)], (32, 48), (8, 32, 48)
    else:
        frames = args.frames or tuple(f for _, f in EDIT_SIZES)
        sizes, hw, train = (
            [("svd" if f <= 14 else "svd_xt", f) for f in frames],
            EDIT_HW,
            TRAIN_SIZE,
        )
    preds = []
    for i, (option, frames) in enumerate(sizes):
        trains = train if i == 0 and not args.no_train else None
        preds.append(predict(option, frames, *hw, args.steps, trains))
    body = report(preds, GPUS[args.gpu], time.perf_counter() - start)
    if not args.no_write:
        write_section(args.out, args.section, body)
        write_text(args.json, json.dumps([p.to_dict() for p in preds], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
