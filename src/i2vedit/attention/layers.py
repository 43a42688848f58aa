"""The registered attention layers: self-attention ``attn1`` of every spatial and temporal
transformer block of the SVD UNet, named by module path and described by place and kind."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from torch import nn

SPATIAL = "spatial"
TEMPORAL = "temporal"

_PATTERN = re.compile(
    r"^(?P<place>down|up|mid)_blocks?(?:\.(?P<block>\d+))?\.attentions\.(?P<attn>\d+)\."
    r"(?P<kind>transformer_blocks|temporal_transformer_blocks)\.(?P<tb>\d+)\.attn1$"
)


@dataclass(frozen=True)
class AttentionLayer:
    """One registered layer. ``index`` counts layers of the same place and kind in forward
    order (down blocks first to last, the mid block, up blocks first to last)."""

    path: str  #: module path, e.g. ``up_blocks.1.attentions.0.temporal_transformer_blocks.0.attn1``
    place: str  #: ``down``, ``mid`` or ``up``
    kind: str  #: ``spatial`` or ``temporal``
    index: int

    @property
    def processor_name(self) -> str:
        return f"{self.path}.processor"


def registered_layers(unet: nn.Module) -> list[AttentionLayer]:
    """Every spatial and temporal ``attn1`` of the UNet, sorted in forward order."""
    found = []
    for name in unet.attn_processors:
        path = name.removesuffix(".processor")
        match = _PATTERN.match(path)
        if match is None:
            continue
        kind = TEMPORAL if match["kind"].startswith("temporal") else SPATIAL
        order = (int(match["block"] or 0), int(match["attn"]), int(match["tb"]))
        found.append((match["place"], kind, order, path))
    layers = []
    for place in ("down", "mid", "up"):
        for kind in (SPATIAL, TEMPORAL):
            same = sorted((order, path) for p, k, order, path in found if p == place and k == kind)
            layers += [AttentionLayer(path, place, kind, i) for i, (_, path) in enumerate(same)]
    return layers


def is_high_resolution(layer: AttentionLayer) -> bool:
    """The high-resolution temporal layers of the temporal schedule: the first 4 of the down
    path and all but the first 2 of the up path."""
    if layer.place == "down":
        return layer.index < 4
    if layer.place == "up":
        return layer.index >= 2
    return False


def latent_sizes(unet: nn.Module, h: int, w: int) -> list[tuple[int, int]]:
    """Latent size at each UNet level (stride-2 convs with padding 1 round up)."""
    sizes = [(h, w)]
    for _ in range(len(unet.config.block_out_channels) - 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes.append((h, w))
    return sizes


def analytic_record_elements(
    unet: nn.Module, frames: int, h: int, w: int
) -> tuple[int, int, int, int]:
    """Elements recorded per step from the architecture alone: (spatial, temporal, number of
    spatial layers, number of temporal layers). Spatial: F x heads x tokens x head_dim for each
    of Q and K; temporal: tokens x heads x F x F."""
    sizes = latent_sizes(unet, h, w)
    levels = len(sizes)
    spatial = temporal = n_spatial = n_temporal = 0
    for layer in registered_layers(unet):
        block = 0 if layer.place == "mid" else int(layer.path.split(".")[1])
        level = {"down": block, "mid": levels - 1, "up": levels - 1 - block}[layer.place]
        tokens = sizes[level][0] * sizes[level][1]
        attn = unet.get_submodule(layer.path)
        heads = attn.heads
        head_dim = attn.to_q.out_features // heads
        if layer.kind == SPATIAL:
            spatial += frames * heads * tokens * head_dim * 2
            n_spatial += 1
        else:
            temporal += tokens * heads * frames * frames
            n_temporal += 1
    return spatial, temporal, n_spatial, n_temporal


def record_bytes_per_step(unet: nn.Module, frames: int, h: int, w: int, element_size: int) -> int:
    """Bytes of one step of attention records (one evaluation of the source) at latent size
    h x w, from the architecture alone."""
    spatial, temporal, _, _ = analytic_record_elements(unet, frames, h, w)
    return (spatial + temporal) * element_size
