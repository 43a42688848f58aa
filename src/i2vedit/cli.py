"""Command-line entry points (thin: the work is in i2vedit.tasks)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from i2vedit.config import register_configs
from i2vedit.errors import EXIT_BAD_INPUT, InputError
from i2vedit.progress import CONSOLE, setup_logging

register_configs()


@hydra.main(version_base=None, config_path="pkg://i2vedit.conf", config_name="edit")
def edit(cfg: DictConfig) -> None:
    """``i2vedit-edit``: edit a video from one or more edited first frames."""
    from i2vedit.tasks.edit import run_edit

    setup_logging()
    try:
        result = run_edit(cfg)
    except InputError as err:
        CONSOLE.print(f"error: {err}", soft_wrap=True, markup=False, highlight=False)
        raise SystemExit(EXIT_BAD_INPUT) from None
    for path in result.written:
        CONSOLE.print(f"wrote {path}", soft_wrap=True, markup=False, highlight=False)


@hydra.main(version_base=None, config_path="pkg://i2vedit.conf", config_name="train")
def train(cfg: DictConfig) -> None:
    """``i2vedit-train``: train the motion LoRA of every selected clip."""
    from i2vedit.tasks.train import run_train

    setup_logging()
    try:
        result = run_train(cfg)
    except InputError as err:
        CONSOLE.print(f"error: {err}", soft_wrap=True, markup=False, highlight=False)
        raise SystemExit(EXIT_BAD_INPUT) from None
    for clip_id, folder in result.clip_dirs.items():
        steps = ", ".join(str(s) for s in result.checkpoints[clip_id])
        CONSOLE.print(
            f"clip {clip_id}: {folder} (checkpoints {steps})", soft_wrap=True, markup=False
        )
