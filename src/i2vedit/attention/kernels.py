"""Which kernel runs the spatial blend (``attention_matching.kernel``), without importing
torch or Triton: the config checks use it before anything heavy loads.

``torch``: ``matching.blocked_masked_attention`` (explicit probabilities in query blocks; the
CPU path and the oracle). ``triton``: ``fused.fused_masked_attention`` (no probability
tensors). ``auto``: ``triton`` on a device that runs compiled Triton kernels, with Triton
installed; else ``torch``.
"""

from __future__ import annotations

import importlib.util

from i2vedit.errors import InputError

#: the spatial blend's kernels
SPATIAL_KERNELS = ("torch", "triton")
#: ``attention_matching.kernel`` values: ``auto`` resolves to one of the kernels
KERNELS = ("auto", *SPATIAL_KERNELS)
#: the torch device type whose devices run compiled Triton kernels (NVIDIA and ROCm builds)
TRITON_DEVICE_TYPE = "cuda"
KEY = "attention_matching.kernel"


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``, as Triton
    itself reads it). Imports Triton: call only where it is installed."""
    import triton

    return bool(triton.knobs.runtime.interpret)


def check_kernel_name(name: str) -> None:
    if name not in KERNELS:
        raise InputError(KEY, name, f"expected one of {', '.join(KERNELS)}")


def resolve_kernel(name: str, device_type: str) -> str:
    """The spatial blend's kernel on devices of ``device_type`` (a torch device type).
    ``triton`` where it cannot run is an InputError naming ``attention_matching.kernel``."""
    check_kernel_name(name)
    if name == "auto":
        return "triton" if device_type == TRITON_DEVICE_TYPE and triton_installed() else "torch"
    if name == "triton":
        if not triton_installed():
            raise InputError(KEY, name, "Triton is not installed (pip install triton)")
        if device_type != TRITON_DEVICE_TYPE and not interpreting():
            raise InputError(
                KEY,
                name,
                f"Triton kernels need a {TRITON_DEVICE_TYPE} device, not {device_type} "
                "(set TRITON_INTERPRET=1 to run them, slowly, in Triton's CPU interpreter)",
            )
    return name
