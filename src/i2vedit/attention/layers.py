"""The registered attention layers: self-attention ``attn1`` of every spatial and temporal
transformer block of the SVD UNet, named by module path and described by place and kind."""

from __future__ import annotations

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
