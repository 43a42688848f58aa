"""Command-line entry points (thin: the work is in i2vedit.tasks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import hydra
from omegaconf import DictConfig

from i2vedit.config import register_configs
from i2vedit.errors import EXIT_BAD_INPUT, InputError
from i2vedit.progress import CONSOLE, setup_logging

register_configs()
T = TypeVar("T")


def _say(line: str) -> None:
    CONSOLE.print(line, soft_wrap=True, markup=False, highlight=False)


def _run(task: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run a task; bad input becomes one line on stderr and exit code 2."""
    setup_logging()
    try:
        return task(cfg)
    except InputError as err:
        _say(f"error: {err}")
        raise SystemExit(EXIT_BAD_INPUT) from None


@hydra.main(version_base=None, config_path="pkg://i2vedit.conf", config_name="edit")
def edit(cfg: DictConfig) -> None:
    """``i2vedit-edit``: edit a video from one or more edited first frames."""
    from i2vedit.tasks.edit import run_edit

    for path in _run(run_edit, cfg).written:
        _say(f"wrote {path}")


@hydra.main(version_base=None, config_path="pkg://i2vedit.conf", config_name="train")
def train(cfg: DictConfig) -> None:
    """``i2vedit-train``: train the motion LoRA of every selected clip."""
    from i2vedit.tasks.train import run_train

    result = _run(run_train, cfg)
    for clip_id, folder in result.clip_dirs.items():
        _say(
            f"clip {clip_id}: {folder} (checkpoints {', '.join(map(str, result.checkpoints[clip_id]))})"
        )
