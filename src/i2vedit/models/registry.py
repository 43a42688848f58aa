"""The model kinds (``model.kind``), in one table: for each, the ``conf/model`` options that pick
it, how its config is checked before anything loads, the identity its weights give cache keys,
and how it loads.

Light to import (the config checks and the app read it): each kind's module is imported inside
the functions below, and diffusers only when weights load. To add a kind, write its builder
and add one ``ModelKind`` to ``KINDS`` (and its ``conf/model/<option>.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from i2vedit.errors import InputError

if TYPE_CHECKING:
    import torch
    from diffusers import StableVideoDiffusionPipeline

#: ``load(path, seed, variant, dtype)``: the kind's pipeline (its modules imported on the call)
Loader = Callable[[str | None, int, str | None, "torch.dtype"], "StableVideoDiffusionPipeline"]


@dataclass(frozen=True)
class ModelKind:
    """One kind of model: what picks it, checks it, names it and loads it."""

    name: str  #: the value of ``model.kind``
    options: tuple[str, ...]  #: the ``conf/model/<option>.yaml`` of this kind (the app's choices)
    check: Callable[[str | None], None]  #: ``check(model.path)``: InputError before loading
    identity: Callable[[str | None, int], str]  #: ``identity(path, seed)``: names the weights
    load: Loader
    named_by_path: bool = False  #: ``model.path`` names the weights (else it is unused)


# --------------------------------------------------------------------------- tiny


def _no_check(path: str | None) -> None:
    """The tiny model is built from its seed: nothing to check."""


def _tiny_identity(path: str | None, seed: int) -> str:
    return f"tiny-seed{seed}"


def _load_tiny(
    path: str | None, seed: int, variant: str | None, dtype: torch.dtype
) -> StableVideoDiffusionPipeline:
    from i2vedit.models.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed)


# --------------------------------------------------------------------------- toy


def _check_toy(path: str | None) -> None:
    from i2vedit.models.toy import check_toy_weights

    check_toy_weights()


def _toy_identity(path: str | None, seed: int) -> str:
    from i2vedit.models.toy import check_toy_weights, toy_identity

    check_toy_weights()
    return toy_identity()


def _load_toy(
    path: str | None, seed: int, variant: str | None, dtype: torch.dtype
) -> StableVideoDiffusionPipeline:
    from i2vedit.models.toy import load_toy_pipeline

    return load_toy_pipeline()


# --------------------------------------------------------------------------- pretrained


def _check_pretrained(path: str | None) -> None:
    from i2vedit.models.pretrained import check_model_path

    check_model_path(path or "")


def _pretrained_identity(path: str | None, seed: int) -> str:
    from i2vedit.models.pretrained import pretrained_identity

    return pretrained_identity(path)


def _load_pretrained(
    path: str | None, seed: int, variant: str | None, dtype: torch.dtype
) -> StableVideoDiffusionPipeline:
    from i2vedit.models.pretrained import load_pretrained_pipeline

    return load_pretrained_pipeline(path or "", variant, dtype)


# --------------------------------------------------------------------------- the table

KINDS: dict[str, ModelKind] = {
    kind.name: kind
    for kind in (
        ModelKind("tiny", ("tiny",), _no_check, _tiny_identity, _load_tiny),
        ModelKind("toy", ("toy",), _check_toy, _toy_identity, _load_toy),
        ModelKind(
            "pretrained",
            ("svd", "svd_xt"),
            _check_pretrained,
            _pretrained_identity,
            _load_pretrained,
            named_by_path=True,
        ),
    )
}

#: every ``conf/model`` option, kind by kind: tiny, toy, svd, svd_xt
MODEL_OPTIONS: tuple[str, ...] = tuple(o for kind in KINDS.values() for o in kind.options)


def model_kind(name: str, key: str = "model.kind") -> ModelKind:
    """The kind named ``name``; an unknown one is an ``InputError`` naming the known ones."""
    kind = KINDS.get(name)
    if kind is None:
        *rest, last = KINDS
        raise InputError(key, name, f"expected {', '.join(rest)} or {last}")
    return kind


def path_options() -> tuple[str, ...]:
    """The ``conf/model`` options whose weights ``model.path`` names (svd, svd_xt)."""
    return tuple(o for kind in KINDS.values() if kind.named_by_path for o in kind.options)


def model_identity(kind: str, path: str | None, seed: int) -> str:
    """What names the weights, known before loading: the tiny seed, the toy weights' content, a
    folder or a hub id."""
    return model_kind(kind).identity(path, seed)
