"""``compile=true``: the UNet's repeated blocks compiled in place (``i2vedit.models.compile``)
for inversion, sampling and training, off by default.

The tiny edit compiled equals the eager one within a measured tolerance (slow: inductor
compiles every block shape with the C++ compiler on the CPU: 4 to 30 minutes on two shared
cores, depending on their load and on inductor's cache; skipped where there is no C++
compiler)."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from i2vedit.models.compile import EAGER_ATTENTION, REPEATED_BLOCKS, compile_repeated_blocks
from i2vedit.models.svd import load_model
from tests.conftest import compose_edit, compose_train

#: Differences (0..255) allowed between the compiled and the eager tiny edit's uint8 frames.
#: Measured on the CPU (inductor, fp32, 2 steps, this edit): max 1.0 (a pixel one level off:
#: the compiled blocks round differently, ~1e-6 on the UNet's output), mean 0.00057. Another
#: seed of the model differs by a mean of 36.5 (tests/test_gpu.py), so these bounds still
#: tell a wrong routing (e.g. matching skipped) from rounding.
MAX_PIXEL_DIFF = 2.0
MEAN_PIXEL_DIFF = 0.01


def test_compile_is_off_by_default_for_both_commands():
    assert compose_edit([]).compile is False
    assert compose_train([]).compile is False
    assert compose_edit(["compile=true"]).compile is True


def test_load_model_compiles_every_repeated_block_in_place():
    model = load_model("tiny", None, 0, None, torch.device("cpu"), torch.float32, compile=True)
    blocks = [m for m in model.unet.modules() if type(m).__name__ in REPEATED_BLOCKS]
    assert len(blocks) == 24  # 12 ResNet blocks, 6 spatial and 6 temporal transformer blocks
    for block in blocks:
        assert block._compiled_call_impl is not None  # compiled where it sits in the UNet
        attention = getattr(block, EAGER_ATTENTION, None)
        if attention is not None:  # the controllers' processors run there, eagerly
            assert getattr(attention.forward, "_torchdynamo_disable", False)
    eager = load_model("tiny", None, 0, None, torch.device("cpu"), torch.float32)
    assert all(m._compiled_call_impl is None for m in eager.unet.modules())


def test_a_unet_without_repeated_blocks_is_an_error():
    with pytest.raises(RuntimeError, match="no repeated blocks"):
        compile_repeated_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="inductor needs a C++ compiler on the CPU",
)
def test_compiled_tiny_edit_equals_the_eager_one(edit_overrides, tmp_path):
    """The whole tiny edit (inversion with recording, guided sampling with matching through
    the controllers' processors, decoding) with compile=true and without."""
    from i2vedit.tasks.edit import run_edit

    frames = {}
    for compiled in (False, True):
        folder = tmp_path / str(compiled)
        kept = [o for o in edit_overrides if not o.startswith(("output_dir=", "paths.cache_dir="))]
        cfg = compose_edit(
            [
                *kept,
                "num_steps=2",
                f"compile={str(compiled).lower()}",
                f"output_dir={folder / 'out'}",
                f"paths.cache_dir={folder / 'cache'}",
            ]
        )
        frames[compiled] = run_edit(cfg).clip_frames["blue"][0].float()
    diff = (frames[True] - frames[False]).abs()
    logging.getLogger(__name__).info(
        "compiled - eager: max %.4f, mean %.6f", diff.max(), diff.mean()
    )
    assert frames[False].std() > 1  # an image, not a constant
    assert diff.max() <= MAX_PIXEL_DIFF
    assert diff.mean() <= MEAN_PIXEL_DIFF
