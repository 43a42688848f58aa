"""The names of what a run writes into its output folder (one place; the edit task, the
sweep report, the app and the tests read them here)."""

from __future__ import annotations

SOURCE_NAME = "source.mp4"  #: the selected clips' resampled source frames, overlaps once
CONFIG_NAME = "config.yaml"  #: the run's resolved config
METRICS_NAME = "metrics.json"  #: per edit, its metrics
RUN_NAME = "run.json"  #: what the run did (seconds, cache hits, metrics), read by sweep reports
LAST_FRAME_SUFFIX = "_last.safetensors"  #: ``<edit>_last.safetensors``: continue an edit later


def edited_name(stem: str) -> str:
    """The edited video of the keyframe ``<stem>.png``: ``<stem>.mp4``."""
    return f"{stem}.mp4"


def last_frame_name(stem: str) -> str:
    """The saved last frame of the edit of ``<stem>.png``."""
    return f"{stem}{LAST_FRAME_SUFFIX}"


def mask_name(stem: str) -> str:
    """The masks a masked edit of ``<stem>.png`` used, one per frame of ``<stem>.mp4``."""
    return f"{stem}_mask.mp4"
