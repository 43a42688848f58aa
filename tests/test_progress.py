"""The console off a terminal: tables come out whole in log files, CI logs and cluster jobs."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from i2vedit.progress import OFF_TERMINAL_WIDTH, LogConsole

LONG = "c" * 150
WORDS = " ".join(["sample"] * 25)  # 174 characters in a column that may wrap

#: A command's table, printed on the shared console to stderr (a pipe here, as in a log file).
CHILD = f"""
from rich.table import Table
from i2vedit.progress import CONSOLE

table = Table(title="plan", caption="a caption")
table.add_column("clip", no_wrap=True)
table.add_column("notes")
table.add_row({LONG!r}, {WORDS!r})
CONSOLE.print(table)
"""


def _run(columns: str | None) -> str:
    env = {
        k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE")
    }
    if columns is not None:
        env["COLUMNS"] = columns
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_tables_print_whole_off_a_terminal():
    out = _run(columns=None)
    assert "…" not in out
    (row,) = [line for line in out.splitlines() if LONG in line]
    assert WORDS in row  # the wrapping column kept on the row's one line
    assert len(row) > 300


def test_columns_still_sets_the_width():
    out = _run(columns="60")
    assert "…" in out
    assert max(len(line) for line in out.splitlines()) <= 60


def test_width_follows_the_stream_at_each_print():
    console = LogConsole(file=io.StringIO(), _environ={})
    assert console.width == OFF_TERMINAL_WIDTH
    assert LogConsole(file=io.StringIO(), _environ={"COLUMNS": "90"}).width == 90
    assert LogConsole(file=io.StringIO(), width=70, _environ={}).width == 70
    console.file = io.StringIO()
    console.width = 50  # the setters still work
    assert console.width == 50
    terminal = LogConsole(file=io.StringIO(), force_terminal=True, _environ={})
    assert terminal.width < OFF_TERMINAL_WIDTH  # a terminal's own width (80 without one)
