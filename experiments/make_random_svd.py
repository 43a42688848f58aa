"""Write a diffusers folder laid out as ``stabilityai/stable-video-diffusion-img2vid`` (or
``-xt``) is: every component in its subfolder, fp16 variant weight files, ``model_index.json``;
with the real architecture and random weights. Lets the real-size loading path
(``model=svd model.path=DIR model.variant=fp16``) run without the weights.

    python experiments/make_random_svd.py DIR [--xt] [--seed 0]

About 4.2 GB on disk (SVD; the UNet is 1.52 B parameters) and 10 GB of memory while it is
built; the folder appears whole or not at all.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from i2vedit.files import atomic_path  # noqa: E402
from i2vedit.models.specs import build_full_size_pipeline  # noqa: E402
from i2vedit.progress import setup_logging  # noqa: E402

log = logging.getLogger("i2vedit.experiments.make_random_svd")


def make_random_svd(folder: Path, xt: bool = False, seed: int = 0) -> Path:
    """Build the full-size pipeline (fp32 on the CPU, then fp16) and save it as ``folder``."""
    option = "svd_xt" if xt else "svd"
    start = time.perf_counter()
    pipe = build_full_size_pipeline(torch.device("cpu"), torch.float32, seed, option)
    pipe.to(dtype=torch.float16)
    with atomic_path(folder, folder=True) as tmp:
        pipe.save_pretrained(tmp, variant="fp16", safe_serialization=True)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    log.info(
        "wrote %s: %s with random weights, fp16 variant, %.2f GB, %.0f s",
        folder,
        option,
        size / 1e9,
        time.perf_counter() - start,
    )
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the diffusers folder to write")
    parser.add_argument("--xt", action="store_true", help="SVD-XT (25 frames) instead of SVD")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup_logging(names=("i2vedit",))
    make_random_svd(args.folder, args.xt, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
