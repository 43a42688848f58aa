"""Shared fixtures: the tiny SVD (built once), configs composed like the CLI, a synthetic video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from PIL import Image

from i2vedit.config import register_configs
from i2vedit.data.video import write_video
from i2vedit.models.svd import LoadedModel
from i2vedit.models.tiny import build_tiny_pipeline

register_configs()


def compose_edit(overrides: list[str]) -> object:
    """The edit config exactly as ``i2vedit-edit <overrides>`` composes it."""
    with initialize_config_module("i2vedit.conf", version_base=None):
        return compose("edit", overrides=overrides)


def compose_train(overrides: list[str]) -> object:
    """The train config exactly as ``i2vedit-train <overrides>`` composes it."""
    with initialize_config_module("i2vedit.conf", version_base=None):
        return compose("train", overrides=overrides)


@pytest.fixture(scope="session")
def tiny_model() -> LoadedModel:
    pipe = build_tiny_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(pipe, torch.device("cpu"), torch.float32, "tiny-seed0")


def moving_square_frames(n: int = 24, h: int = 48, w: int = 64) -> np.ndarray:
    """uint8 (n, h, w, 3): a red square crossing a two-tone background."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    frames[:, : h // 2] = (40, 90, 160)
    frames[:, h // 2 :] = (90, 140, 60)
    for i in range(n):
        x = 4 + i * (w - 20) // n
        frames[i, 14:30, x : x + 14] = (220, 40, 40)
    return frames


@pytest.fixture(scope="session")
def source_video(tmp_path_factory) -> Path:
    """A 2 s, 12 fps, 48x64 H.264 video (24 frames)."""
    path = tmp_path_factory.mktemp("video") / "square.mp4"
    return write_video(path, moving_square_frames(), 12)


@pytest.fixture(scope="session")
def keyframe(tmp_path_factory) -> Path:
    """An edited first frame: the square recoloured blue."""
    frame = moving_square_frames(1)[0]
    frame[14:30, 4:18] = (40, 60, 220)
    path = tmp_path_factory.mktemp("keyframes") / "blue.png"
    Image.fromarray(frame).save(path)
    return path


@pytest.fixture
def edit_overrides(source_video, keyframe, tmp_path) -> list[str]:
    """Overrides for a fast tiny edit of the synthetic video into a fresh output_dir."""
    return [
        f"data.video_path={source_video}",
        f"data.keyframe_paths=[{keyframe}]",
        "data.sample_fps=12",
        "data.end_clip_id=0",  # one clip of the three (the chaining tests take all)
        "num_steps=3",
        f"output_dir={tmp_path / 'out'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
