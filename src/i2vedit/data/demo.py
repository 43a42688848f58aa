"""The embedded demo item: a short synthetic video and an edited first frame, generated
deterministically (no files shipped, nothing downloaded)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from i2vedit.data.video import write_video
from i2vedit.files import atomic_path

log = logging.getLogger(__name__)

DEMO_VERSION = "v1"
DEMO_SIZE = (96, 160)  # height, width
DEMO_FPS = 14
DEMO_SECONDS = 2.0
SOURCE_COLOUR = (220, 60, 40)  # the ball, red
EDITED_COLOUR = (40, 110, 230)  # blue in the edited first frame


def _frame(t: float, ball: tuple[int, int, int]) -> np.ndarray:
    """Frame at time ``t``: a ball moving on an arc over a soft gradient, a swinging bar."""
    h, w = DEMO_SIZE
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[..., 0] = 70 + 80 * x / w
    img[..., 1] = 120 + 60 * y / h
    img[..., 2] = 150 - 40 * x / w
    img[y > 0.78 * h] = (90, 80, 60)  # the floor
    cx = 0.2 * w + 0.6 * w * t / DEMO_SECONDS
    cy = 0.62 * h - 0.35 * h * math.sin(math.pi * t / DEMO_SECONDS)
    img[(x - cx) ** 2 + (y - cy) ** 2 <= (0.11 * h) ** 2] = ball
    angle = 1.2 * math.sin(2 * math.pi * t / DEMO_SECONDS)
    px, py = 0.8 * w, 0.15 * h  # a bar swinging from a pivot
    along = (x - px) * math.sin(angle) + (y - py) * math.cos(angle)
    across = (x - px) * math.cos(angle) - (y - py) * math.sin(angle)
    img[(along >= 0) & (along <= 0.45 * h) & (np.abs(across) <= 3)] = (245, 235, 200)
    return img.round().clip(0, 255).astype(np.uint8)


def ensure_demo_assets(cache_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write (once) and return the demo's source video and edited first frame."""
    folder = Path(cache_dir).expanduser() / "demo" / DEMO_VERSION
    video, keyframe = folder / "demo.mp4", folder / "demo_edit.png"
    if video.is_file() and keyframe.is_file():
        return video, keyframe
    folder.mkdir(parents=True, exist_ok=True)
    log.info("generating the demo item into %s", folder)
    n = int(DEMO_SECONDS * DEMO_FPS)
    frames = np.stack([_frame(i / DEMO_FPS, SOURCE_COLOUR) for i in range(n)])
    with atomic_path(keyframe) as tmp:
        Image.fromarray(_frame(0.0, EDITED_COLOUR)).save(tmp)
    write_video(video, frames, DEMO_FPS)
    return video, keyframe
