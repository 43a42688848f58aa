"""Rich console, logging set-up and step progress bars shared by the commands."""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator

from rich.console import Console, ConsoleDimensions
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: The width of the console off a terminal: wider than anything we print, so tables keep their
#: natural width (a table is as wide as its cells, not as the console; nothing we print fills it).
OFF_TERMINAL_WIDTH = 10_000


class LogConsole(Console):
    """A console whose tables come out whole in log files, CI logs and cluster jobs.

    On a terminal it fits the terminal, as any Rich console. Off a terminal (a pipe or a file,
    decided at each print, so redirecting stderr later counts) Rich would fall back to 80
    columns, or to the width of whatever other stream is a terminal, and cut table cells with
    an ellipsis; this one is :data:`OFF_TERMINAL_WIDTH` wide instead, unless a width was asked
    for (the ``COLUMNS`` variable or ``width=``)."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        if (
            self.is_terminal
            or self._width is not None
            or self._environ.get("COLUMNS", "").isdigit()
        ):
            return size
        return ConsoleDimensions(OFF_TERMINAL_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)


#: Everything human-facing goes to stderr; stdout stays free for machine-readable output.
CONSOLE = LogConsole(stderr=True)


def setup_logging(level: int = logging.INFO, names: tuple[str, ...] = ("i2vedit",)) -> None:
    """Rich log lines on stderr for the i2vedit loggers, and those ``names`` (idempotent)."""
    for name in names:
        _attach(logging.getLogger(name), level)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)


def _attach(root: logging.Logger, level: int) -> None:
    if not any(getattr(h, "_i2vedit", False) for h in root.handlers):
        if CONSOLE.is_terminal:
            handler: logging.Handler = RichHandler(console=CONSOLE, show_path=False)
            handler.setFormatter(logging.Formatter("%(message)s"))
        else:  # pipes and log files: one unwrapped line per record
            handler = logging.StreamHandler(CONSOLE.file)
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
            )
        handler._i2vedit = True
        root.addHandler(handler)
    root.setLevel(level)


#: (stage, steps done, steps in all) -> None; called at every step of every long stage
StepListener = Callable[[str, int, int], None]
_listener: contextvars.ContextVar[StepListener | None] = contextvars.ContextVar(
    "i2vedit_step_listener", default=None
)


class Cancelled(Exception):
    """Raised from a step listener to stop the work at a step boundary (the app's cancel).

    Every stage writes its cache entry atomically once it is whole, so nothing half-written
    is left behind."""


@contextlib.contextmanager
def step_listener(listener: StepListener) -> Iterator[None]:
    """Within the block, and in this thread, every step of every stage (motion-LoRA training,
    inversion, sampling) is also reported to ``listener``, which may raise :class:`Cancelled`."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def report_step(stage: str, done: int, total: int) -> None:
    """Tell this thread's step listener, if any, that ``stage`` is at ``done`` of ``total``."""
    listener = _listener.get()
    if listener is not None:
        listener(stage, done, total)


@contextlib.contextmanager
def step_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar over ``total`` steps; yields the per-step callback (which also reports
    to the step listener)."""
    report_step(description, 0, total)
    done = 0
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

        def advance(_step: int) -> None:
            nonlocal done
            done += 1
            progress.advance(task)
            report_step(description, done, total)

        yield advance
