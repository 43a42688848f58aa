"""The real folder layout: a diffusers folder as stable-video-diffusion-img2vid ships it
(every component in its subfolder, fp16 variant files), with SVD's real architecture and
random weights (``experiments/make_random_svd.py``), trained on and edited through
``model=svd model.path=DIR model.variant=fp16`` by the commands themselves. Slow: the folder
is 4.5 GB (built once, kept in pytest's cache) and each full-size UNet pass takes seconds on
a CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from i2vedit.data.video import read_video_frames

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def random_svd(request) -> Path:
    """The random full-size SVD folder, made once and kept in pytest's cache."""
    folder = Path(request.config.cache.mkdir("random-svd")) / "svd"
    if not (folder / "model_index.json").is_file():
        script = ROOT / "experiments" / "make_random_svd.py"
        subprocess.run([sys.executable, str(script), str(folder)], check=True, timeout=1800)
    return folder


def _run(command: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "I2VEDIT_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(
        [str(BIN / command), *args], capture_output=True, text=True, env=env, timeout=3600
    )


def test_train_and_edit_on_the_real_layout(random_svd, tmp_path):
    model = ["model=svd", f"model.path={random_svd}", "model.variant=fp16"]
    train = _run(
        "i2vedit-train",
        [
            *model,
            "lora.max_steps=2",
            "lora.checkpoint_every=2",
            "lora.resolution=[64,64]",
            f"output_dir={tmp_path / 'train'}",
        ],
        tmp_path,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert "checkpoints 2" in train.stderr
    edit = _run(
        "i2vedit-edit",
        [
            *model,
            "num_steps=2",
            "data.output_res=[64,64]",
            "metrics=off",
            f"output_dir={tmp_path / 'edit'}",
        ],
        tmp_path,
    )
    assert edit.returncode == 0, edit.stderr[-3000:]
    video = read_video_frames(tmp_path / "edit" / "demo_edit.mp4")
    source = read_video_frames(tmp_path / "edit" / "source.mp4")
    assert video.shape == source.shape and len(video) == 14  # the demo's 14 frames, one clip
