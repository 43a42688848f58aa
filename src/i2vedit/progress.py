"""Rich console, logging set-up and step progress bars shared by the commands."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Everything human-facing goes to stderr; stdout stays free for machine-readable output.
CONSOLE = Console(stderr=True)


def setup_logging(level: int = logging.INFO) -> None:
    """Rich log lines on stderr for the i2vedit loggers (idempotent)."""
    root = logging.getLogger("i2vedit")
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        handler = RichHandler(console=CONSOLE, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    if not CONSOLE.is_terminal:
        CONSOLE.width = max(CONSOLE.width, 160)  # log files and pipes: keep a record on one line


@contextlib.contextmanager
def step_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar over ``total`` steps; yields the per-step callback."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=CONSOLE,
        transient=False,
        disable=not CONSOLE.is_terminal,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda _step: progress.advance(task)
