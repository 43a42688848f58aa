"""Sweep reports: one row per job (and edit) of an ``i2vedit-edit -m`` sweep, with its
overrides, metrics, seconds and cache use, as ``report.md``, ``report.csv`` and a labelled
``contact_sheet.png`` in the sweep folder, plus a rich table on the terminal.

Written by the ``SweepReport`` Hydra callback when a multirun ends (``conf/edit.yaml`` installs
it), and by ``i2vedit-report <sweep dir>`` at any time (for instance while a SLURM sweep is
still running, or after a job was rerun).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from PIL import Image, ImageDraw, ImageFont
from rich.table import Table

from i2vedit.errors import EXIT_BAD_INPUT, InputError
from i2vedit.files import write_bytes, write_json, write_text
from i2vedit.outputs import RUN_NAME
from i2vedit.progress import CONSOLE, setup_logging

log = logging.getLogger(__name__)

REPORT_MD, REPORT_CSV, CONTACT_SHEET = "report.md", "report.csv", "contact_sheet.png"
#: metrics shown as columns, in this order (those present in at least one job)
METRIC_COLUMNS = (
    "first_frame_psnr",
    "first_frame_ssim",
    "motion_epe",
    "warping_error",
    "preservation_psnr",
    "clip_keyframe_similarity",
    "clip_temporal_consistency",
)
SHEET_FRAMES = 4  #: frames per contact-sheet row, evenly spaced from first to last
THUMB_HEIGHT = 96  #: pixel height of a contact-sheet frame (width keeps the aspect ratio)
LABEL_WIDTH = 280  #: pixel width of the label column
GAP = 4  #: pixels between and around the cells


@dataclass
class JobRow:
    """One edit of one job (a failed or unfinished job has one row, without an edit)."""

    job: str  #: the job's folder name (its number)
    folder: Path
    overrides: list[str]
    status: str  #: ok, failed, or unfinished (no run.json: killed, or still running)
    edit: str = ""
    video: Path | None = None
    seconds: float | None = None
    cache_hits: int = 0
    computed: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def _job_folders(sweep_dir: Path) -> list[Path]:
    """Job folders: numbered subfolders (Hydra's ``hydra.job.num``) in numeric order, then any
    other subfolder holding a run record."""
    subdirs = [p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    numbered = sorted((p for p in subdirs if p.name.isdigit()), key=lambda p: int(p.name))
    named = sorted(p for p in subdirs if not p.name.isdigit() and (p / RUN_NAME).is_file())
    return numbered + named


def collect(sweep_dir: str | os.PathLike[str]) -> list[JobRow]:
    """Read every job's ``run.json`` under ``sweep_dir``."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise InputError("sweep_dir", str(sweep_dir), "folder not found")
    rows = []
    for folder in _job_folders(sweep):
        path = folder / RUN_NAME
        if not path.is_file():
            rows.append(JobRow(folder.name, folder, [], "unfinished"))
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            rows.append(JobRow(folder.name, folder, [], "unreadable", error=str(err)))
            continue
        common = {
            "job": folder.name,
            "folder": folder,
            "overrides": list(record.get("overrides", [])),
            "status": record.get("status", "ok"),
            "seconds": record.get("seconds", {}).get("total"),
            "cache_hits": len(record.get("cache_hits", [])),
            "computed": len(record.get("computed", [])),
            "error": record.get("error", ""),
        }
        edits = record.get("edits") or {}
        if not edits:
            rows.append(JobRow(**common))
        for stem, edit in edits.items():
            video = folder / edit["video"]
            rows.append(JobRow(**common, edit=stem, video=video, metrics=edit.get("metrics", {})))
    return rows


def varying_overrides(rows: list[JobRow]) -> dict[str, list[str]]:
    """Per job, the overrides that not every job shares (what the sweep varied)."""
    jobs = {row.job: row.overrides for row in rows if row.overrides}
    shared = set.intersection(*(set(o) for o in jobs.values())) if jobs else set()
    return {job: [o for o in overrides if o not in shared] for job, overrides in jobs.items()}


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(rows: list[JobRow]) -> tuple[list[str], list[list[str]]]:
    varying = varying_overrides(rows)
    metrics = [m for m in METRIC_COLUMNS if any(m in row.metrics for row in rows)]
    header = ["job", "overrides", "edit", "status", "seconds", "cache hits", "computed", *metrics]
    body = []
    for row in rows:
        shown = " ".join(varying.get(row.job, row.overrides)) or "(none)"
        status = row.status if not row.error else f"{row.status}: {row.error}"
        body.append(
            [
                row.job,
                shown,
                row.edit,
                status,
                _fmt(row.seconds),
                str(row.cache_hits),
                str(row.computed),
                *(_fmt(row.metrics.get(m)) for m in metrics),
            ]
        )
    return header, body


def _markdown(sweep_dir: Path, header: list[str], body: list[list[str]], sheet: bool) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [
        f"# Sweep report: {sweep_dir}",
        "",
        "One row per job and edit. Overrides: those the jobs do not all share (report.csv has "
        "each job's full list). Seconds: the whole job. Cache hits / computed: artifacts "
        "(inversions, LoRA checkpoints, clip edits) taken from the cache / computed by the job. "
        "Metrics: see `i2vedit-eval --help` (PSNR in dB, capped at 100; EPE in pixels; warping "
        "error on a 0..1 scale).",
        "",
        line(header),
        line(["---"] * len(header)),
        *(line(row) for row in body),
    ]
    if sheet:
        out += ["", f"![contact sheet]({CONTACT_SHEET})"]
    return "\n".join(out) + "\n"


def _csv(rows: list[JobRow]) -> str:
    metrics = [m for m in METRIC_COLUMNS if any(m in row.metrics for row in rows)]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["job", "overrides", "edit", "status", "error", "seconds", "cache_hits", "computed"]
        + metrics
    )
    for row in rows:
        writer.writerow(
            [
                row.job,
                " ".join(row.overrides),
                row.edit,
                row.status,
                row.error,
                "" if row.seconds is None else f"{row.seconds:.3f}",
                row.cache_hits,
                row.computed,
                *("" if row.metrics.get(m) is None else row.metrics[m] for m in metrics),
            ]
        )
    return buffer.getvalue()


def sheet_frame_indices(count: int, frames: int = SHEET_FRAMES) -> list[int]:
    """``frames`` indices spread evenly from the first frame to the last (repeats for short
    videos)."""
    return [int(round(i)) for i in np.linspace(0, count - 1, frames)]


def contact_sheet(rows: list[JobRow], path: Path) -> Path | None:
    """A grid: the source first (from the first job that wrote one), then one row per edit
    that has a video, each with its label (job, varied overrides, edit) and ``SHEET_FRAMES``
    frames. Cells are ``THUMB_HEIGHT`` high and as wide as the first edit's aspect ratio gives
    (w); the sheet is ``LABEL_WIDTH + SHEET_FRAMES * (w + GAP) + GAP`` wide and
    ``rows * (THUMB_HEIGHT + GAP) + GAP`` high, the source row included. None when no job
    has a video."""
    from i2vedit.data.video import read_video_frames
    from i2vedit.outputs import SOURCE_NAME

    shown = [row for row in rows if row.video is not None and row.video.is_file()]
    if not shown:
        return None
    varying = varying_overrides(rows)
    labelled = [
        (
            [f"job {row.job}: " + (" ".join(varying.get(row.job, row.overrides)) or "-")],
            f"edit: {row.edit}",
            row.video,
        )
        for row in shown
    ]
    source = next(
        (r.folder / SOURCE_NAME for r in shown if (r.folder / SOURCE_NAME).is_file()), None
    )
    if source is not None:
        labelled.insert(0, (["source"], f"({source.parent.name}/{source.name})", source))
    videos = [read_video_frames(video, "video").numpy() for _, _, video in labelled]
    h, w = videos[-1].shape[1:3]
    cell_w = max(1, round(w * THUMB_HEIGHT / h))
    width = LABEL_WIDTH + SHEET_FRAMES * (cell_w + GAP) + GAP
    height = len(labelled) * (THUMB_HEIGHT + GAP) + GAP
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for r, ((label, last, _), frames) in enumerate(zip(labelled, videos, strict=True)):
        top = GAP + r * (THUMB_HEIGHT + GAP)
        lines = textwrap.wrap(label[0], width=44)[:5] + [last]
        draw.multiline_text((GAP, top + 2), "\n".join(lines), fill=(0, 0, 0), font=font)
        for c, index in enumerate(sheet_frame_indices(len(frames))):
            thumb = Image.fromarray(frames[index]).resize((cell_w, THUMB_HEIGHT), Image.BICUBIC)
            sheet.paste(thumb, (LABEL_WIDTH + GAP + c * (cell_w + GAP), top))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())
    return path


@dataclass
class Report:
    rows: list[JobRow]
    markdown: Path
    csv: Path
    sheet: Path | None

    @property
    def failed(self) -> list[JobRow]:
        return [row for row in self.rows if row.status != "ok"]


def write_report(sweep_dir: str | os.PathLike[str], show: bool = True) -> Report:
    """Write ``report.md``, ``report.csv`` and ``contact_sheet.png`` into ``sweep_dir`` (and
    print the table)."""
    sweep = Path(sweep_dir)
    rows = collect(sweep)
    header, body = _table(rows)
    sheet = contact_sheet(rows, sweep / CONTACT_SHEET)
    md = sweep / REPORT_MD
    write_text(md, _markdown(sweep, header, body, sheet is not None))
    csv_path = sweep / REPORT_CSV
    write_text(csv_path, _csv(rows))
    if show:
        table = Table(title=f"sweep {sweep}: {len({r.job for r in rows})} job(s)")
        for column in header:
            table.add_column(column)
        for cells in body:
            table.add_row(*cells)
        CONSOLE.print(table)
    log.info("sweep report: %s, %s%s", md, csv_path, f", {sheet}" if sheet else "")
    return Report(rows, md, csv_path, sheet)


def record_failed_job(folder: Path, overrides: list[str], error: BaseException) -> Path:
    """The run record of a job that failed, so the report lists it with its reason."""
    record = {"status": "failed", "overrides": overrides, "error": str(error).splitlines()[0]}
    return write_json(folder / RUN_NAME, record)


class SweepReport(Callback):
    """Hydra callback: the sweep report when a multirun ends; exit code 1 if a job failed
    (after the report is written, so the failures are listed there)."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        report = write_report(config.hydra.sweep.dir)
        if report.failed:
            log.error(
                "%d of %d job(s) did not finish: see %s",
                len({r.job for r in report.failed}),
                len({r.job for r in report.rows}),
                report.markdown,
            )
            raise SystemExit(1)


def run(argv: list[str] | None = None) -> int:
    """``i2vedit-report <sweep dir>``: rebuild a sweep's report from its jobs' run records."""
    parser = argparse.ArgumentParser(
        prog="i2vedit-report",
        description="Rebuild report.md, report.csv and contact_sheet.png of an i2vedit-edit "
        "sweep (-m) from its job folders.",
    )
    parser.add_argument("sweep_dir", help="the sweep folder (hydra.sweep.dir)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        report = write_report(args.sweep_dir)
    except InputError as err:
        CONSOLE.print(f"error: {err}", soft_wrap=True, markup=False, highlight=False)
        return EXIT_BAD_INPUT
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(run())
