"""``compile=true``: regional compilation of the UNet, applied once after the model loads.

Each repeated block of the SVD UNet (the spatio-temporal ResNet blocks and the spatial and
temporal transformer blocks) is compiled in place (``module.compile()``): one compiled code
per block class, shared by every instance of it, instead of one whole-UNet graph. The blocks
stay the UNet's own modules, so LoRA injection (peft swaps their linear layers), gradient
checkpointing (diffusers wraps the calls of the blocks) and ``unet.set_attn_processor`` keep
working.

The self-attention of every transformer block (``attn1``) runs eagerly inside the compiled
block (``torch.compiler.disable``): that is where the attention controllers install their
processors (recording into stores, matching from them), whose Python is not for tracing, and
its attention is a fused kernel already. The compiled parts are the norms, the projections
around attention, the feed-forward layers, the ResNet convolutions and the time mixing.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

#: the classes of the UNet's repeated blocks (diffusers' names), compiled one by one
REPEATED_BLOCKS = (
    "SpatioTemporalResBlock",
    "BasicTransformerBlock",
    "TemporalBasicTransformerBlock",
)

#: the self-attention modules of a transformer block, where the controllers' processors run
EAGER_ATTENTION = "attn1"

#: compiled variants kept per block class (shapes differ by level, batch 1 vs 2 under CFG,
#: spatial vs temporal token layouts); torch's default of 8 would fall back to eager early
RECOMPILE_LIMIT = 64

#: torch.compile's backend: inductor generates the kernels (Triton on a GPU, C++ on a CPU)
BACKEND = "inductor"


def repeated_blocks(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every repeated block of ``unet``, outermost first (a block inside
    another compiled block is not listed again)."""
    found: list[tuple[str, nn.Module]] = []
    for path, module in unet.named_modules():
        if type(module).__name__ not in REPEATED_BLOCKS:
            continue
        if any(path.startswith(f"{outer}.") for outer, _ in found):
            continue
        found.append((path, module))
    return found


def compile_repeated_blocks(unet: nn.Module, dynamic: bool | None = None) -> int:
    """Compile every repeated block of ``unet`` in place; returns how many. The blocks'
    self-attention stays eager (see the module's doc). ``dynamic=None`` is torch's automatic
    dynamic shapes: a block class is compiled for the first shape it meets, and once more with
    symbolic sizes when another comes (other levels, batch 1 of inversion and 2 of CFG)."""
    blocks = repeated_blocks(unet)
    if not blocks:
        raise RuntimeError(f"{type(unet).__name__}: no repeated blocks {REPEATED_BLOCKS} found")
    dynamo = torch._dynamo.config
    if dynamo.recompile_limit < RECOMPILE_LIMIT:
        dynamo.recompile_limit = RECOMPILE_LIMIT
    eager = 0
    for _, block in blocks:
        attention = getattr(block, EAGER_ATTENTION, None)
        if isinstance(attention, nn.Module) and not getattr(attention, "_i2vedit_eager", False):
            attention.forward = torch.compiler.disable(attention.forward, recursive=True)
            attention._i2vedit_eager = True
            eager += 1
        block.compile(dynamic=dynamic, backend=BACKEND)
    counts: dict[str, int] = {}
    for _, block in blocks:
        counts[type(block).__name__] = counts.get(type(block).__name__, 0) + 1
    listed = ", ".join(f"{n} {name}" for name, n in counts.items())
    log.info("compile: %s compiled in place (%d self-attentions eager)", listed, eager)
    return len(blocks)
