"""Device and dtype resolution from config (``auto``: the accelerator if present)."""

from __future__ import annotations

import logging

import torch

from i2vedit.errors import InputError

log = logging.getLogger(__name__)

#: where a component waits when it is moved off the accelerator between uses
HOST = torch.device("cpu")

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks the current accelerator (CUDA, XPU, MPS, ...) when there is one, else CPU."""
    if name == "auto":
        accelerator = torch.accelerator.current_accelerator(check_available=True)
        return accelerator if accelerator is not None else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise InputError("device", name, f"not a torch device ({err})") from None
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on an accelerator that supports it, fp16 on other accelerators, fp32 on CPU."""
    if name == "auto":
        if device.type == "cpu":
            return torch.float32
        backend = getattr(torch, device.type, None)
        bf16_check = getattr(backend, "is_bf16_supported", None)
        return torch.bfloat16 if bf16_check is None or bf16_check() else torch.float16
    if name not in _DTYPES:
        raise InputError("dtype", name, f"expected auto or one of {sorted(set(_DTYPES))}")
    return _DTYPES[name]


#: Lightning precision names and the dtype the frozen weights are kept in under each.
PRECISION_DTYPES = {"32": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto``: the precision matching ``resolve_dtype("auto", device)``."""
    if name == "auto":
        return precision_of(resolve_dtype("auto", device))
    if name not in PRECISION_DTYPES:
        raise InputError(
            "trainer.precision", name, f"expected auto or one of {list(PRECISION_DTYPES)}"
        )
    return name


def precision_of(dtype: torch.dtype) -> str:
    """The Lightning precision that trains over frozen weights of ``dtype``."""
    return next(name for name, d in PRECISION_DTYPES.items() if d == dtype)
