"""The conditioning values of SVD (the ``conditioning`` config group's schema): a plain
dataclass, light enough for the config layer to import."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ConditioningParams:
    """The conditioning values, identical in inversion, training and sampling (and the
    schema of the ``conditioning`` config group)."""

    fps: int = 7  #: frame rate the model is told; its fps id is ``fps - 1``
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 2.0
