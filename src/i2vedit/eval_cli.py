"""``i2vedit-eval EDITED [--source SRC] [--keyframe PNG] [--mask PNG] [--out JSON]``: score an
edited video (first-frame fidelity, motion against the source, temporal consistency, background
preservation, optional CLIP similarity), with no downloads."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from rich.table import Table

from i2vedit.errors import EXIT_BAD_INPUT, InputError
from i2vedit.metrics_spec import FLOW_METHODS
from i2vedit.progress import CONSOLE, setup_logging

#: How to read each metric: "higher" or "lower" is better.
BETTER = {
    "first_frame_psnr": "higher",
    "first_frame_ssim": "higher",
    "motion_epe": "lower",
    "warping_error": "lower",
    "preservation_psnr": "higher",
    "clip_keyframe_similarity": "higher",
    "clip_temporal_consistency": "higher",
}
UNITS = {
    "first_frame_psnr": "dB",
    "preservation_psnr": "dB",
    "motion_epe": "px",
}


def _say(line: str) -> None:
    CONSOLE.print(line, soft_wrap=True, markup=False, highlight=False)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2vedit-eval", description=__doc__.splitlines()[0])
    parser.add_argument("edited", type=Path, help="the edited video (file or image folder)")
    parser.add_argument("--source", type=Path, help="the source video that was edited")
    parser.add_argument("--keyframe", type=Path, help="the edited first frame (image)")
    parser.add_argument(
        "--mask", type=Path, help="edited-region mask image (nonzero = edited); default: derived"
    )
    parser.add_argument(
        "--mask-threshold",
        type=float,
        default=0.1,
        help="keyframe vs source first frame difference (0..1) that marks a pixel edited",
    )
    parser.add_argument("--clip-path", type=Path, help="local CLIP model folder (optional)")
    parser.add_argument("--flow", choices=FLOW_METHODS, default="auto")
    parser.add_argument(
        "--raft-weights", type=Path, help="torchvision RAFT state dict (.pth), local file"
    )
    parser.add_argument(
        "--folder-fps", type=float, default=30.0, help="frame rate of image-folder videos"
    )
    parser.add_argument("--out", type=Path, help="write the metrics as JSON here")
    return parser


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


def _table(metrics: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    for column in ("metric", "value", "better"):
        table.add_column(column, no_wrap=True)
    for name, value in metrics.items():
        unit = UNITS.get(name, "")
        table.add_row(name, _format(value) + (f" {unit}" if unit else ""), BETTER.get(name, ""))
    return table


def run(argv: list[str] | None = None) -> int:
    """The command (console script ``i2vedit-eval``, whose wrapper passes the result to
    ``sys.exit``): 0 on success, ``EXIT_BAD_INPUT`` (2) on bad input with one ``error:`` line."""
    from i2vedit.data.video import load_image, read_video_frames
    from i2vedit.files import write_json
    from i2vedit.metrics import evaluate, load_mask

    args = _parser().parse_args(argv)
    setup_logging()
    try:
        if not (math.isfinite(args.mask_threshold) and 0 <= args.mask_threshold < 1):
            raise InputError("--mask-threshold", args.mask_threshold, "must be in [0, 1)")
        if args.flow == "raft" and (args.raft_weights is None or not args.raft_weights.is_file()):
            raise InputError(
                "--raft-weights",
                args.raft_weights and str(args.raft_weights),
                "file not found (needed by --flow raft)",
            )
        if args.clip_path is not None and not args.clip_path.is_dir():
            raise InputError("--clip-path", str(args.clip_path), "not found")
        edited = read_video_frames(args.edited, "edited", args.folder_fps)
        source = None
        if args.source is not None:
            source = read_video_frames(args.source, "--source", args.folder_fps)
        keyframe = None if args.keyframe is None else load_image(args.keyframe, "--keyframe")
        mask = None if args.mask is None else load_mask(args.mask, "--mask")
        metrics = evaluate(
            edited,
            source=source,
            keyframe=keyframe,
            mask=mask,
            clip_path=args.clip_path,
            flow=args.flow,
            raft_weights=args.raft_weights,
            mask_threshold=args.mask_threshold,
        )
    except InputError as err:
        _say(f"error: {err}")
        return EXIT_BAD_INPUT
    CONSOLE.print(_table(metrics, f"i2vedit-eval: {args.edited}"))
    if args.out is not None:
        _say(f"wrote {write_json(args.out, metrics)}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
