"""Activation checkpointing of the UNet while a motion LoRA trains: which activations the
backward pass recomputes instead of keeping.

``none``: nothing is recomputed. ``diffusers``: the UNet's own
``enable_gradient_checkpointing()`` (its resnets and spatial transformer blocks, not the
temporal ones). ``blocks``: every spatial and temporal transformer block and every
spatio-temporal resnet runs under ``torch.utils.checkpoint`` (non-reentrant, the RNG state
preserved so that dropout replays identically), installed per instance and removed exactly.
Checkpointing changes memory and time, never the loss or the gradients."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
from torch.utils.checkpoint import checkpoint

#: the values of ``lora.checkpointing`` (``config.CHECKPOINTING``), lightest on memory last
POLICIES = ("none", "diffusers", "blocks")


def _block_types() -> tuple[type, ...]:
    """What ``blocks`` recomputes: the transformer blocks and the resnets (an outer one of these
    holding an inner one is checkpointed once, as a whole)."""
    from diffusers.models.attention import BasicTransformerBlock, TemporalBasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D, SpatioTemporalResBlock, TemporalResnetBlock

    return (
        BasicTransformerBlock,
        TemporalBasicTransformerBlock,
        SpatioTemporalResBlock,
        ResnetBlock2D,
        TemporalResnetBlock,
    )


def checkpointed_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules ``blocks`` wraps, in module order: the outermost transformer blocks and
    resnets (on SVD's UNet each spatial and temporal transformer block and each
    ``SpatioTemporalResBlock``, whose spatial and temporal resnets go with it), none inside
    another."""
    kinds = _block_types()
    found: list[torch.nn.Module] = []

    def visit(module: torch.nn.Module) -> None:
        for child in module.children():
            if isinstance(child, kinds):
                found.append(child)
            else:
                visit(child)

    visit(unet)
    return found


def _recomputed(forward: Callable) -> Callable:
    """``forward`` run under a non-reentrant checkpoint when gradients are on (plain otherwise:
    a no-grad pass, such as a preview or the anchor's keys and values, keeps nothing anyway)."""

    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)

    return run


@contextlib.contextmanager
def block_checkpointing(unet: torch.nn.Module) -> Iterator[list[torch.nn.Module]]:
    """Every module of ``checkpointed_blocks(unet)`` recomputed in backward while inside; on
    exit each is exactly as before (its forward is its class's again). The wrap is an instance
    attribute: the modules, their parameters and the state-dict keys stay as they are."""
    blocks = checkpointed_blocks(unet)
    if any("forward" in block.__dict__ for block in blocks):
        raise RuntimeError("a UNet block already has its own forward: checkpointing twice?")
    try:
        for block in blocks:
            block.forward = _recomputed(block.forward)
        yield blocks
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)


@contextlib.contextmanager
def diffusers_checkpointing(unet: torch.nn.Module) -> Iterator[None]:
    """The UNet's own gradient checkpointing while inside."""
    unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        unet.disable_gradient_checkpointing()


@contextlib.contextmanager
def checkpointed(unet: torch.nn.Module, policy: str) -> Iterator[None]:
    """The ``lora.checkpointing`` policy installed on ``unet`` while inside."""
    if policy not in POLICIES:
        raise ValueError(f"unknown checkpointing policy {policy!r}, expected one of {POLICIES}")
    if policy == "blocks":
        with block_checkpointing(unet):
            yield
    elif policy == "diffusers":
        with diffusers_checkpointing(unet):
            yield
    else:
        yield
