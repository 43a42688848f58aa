"""docs/toy_demo.png: the demo's edit (``make demo``: ``i2vedit-edit +item=dance``) beside its
source and the exact ground truth (and, for a masked edit, its mask), every ``--every``-th
frame; logs the run's metrics, time and its scores against the exact truth over frames 1..N
(``toy_quality.score``: PSNR, trajectory and colour error, PSNR inside and outside the true
edit region). ``--set`` adds overrides to the item's, e.g. ``--set data.mask_paths=[auto]``.

    python experiments/toy_demo_sheet.py [--every 3] [--threads 1] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from i2vedit.app.jobs import compose_edit  # noqa: E402
from i2vedit.data.video import read_video_frames  # noqa: E402
from i2vedit.metrics import psnr  # noqa: E402
from i2vedit.progress import setup_logging  # noqa: E402
from i2vedit.tasks.edit import run_edit  # noqa: E402
from i2vedit.toy.cases import parse_case  # noqa: E402
from i2vedit.toy.items import ensure_toy_case  # noqa: E402
from i2vedit.toy.world import make_case  # noqa: E402
from toy_quality import contact_sheet, score  # noqa: E402

log = logging.getLogger("i2vedit.experiments.toy_demo_sheet")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "toy_demo.png")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override after the item's (repeatable), e.g. data.mask_paths=[auto]",
    )
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = compose_edit(
            [
                "+item=dance",
                f"output_dir={work / 'out'}",
                f"paths.cache_dir={work / 'cache'}",
                *args.set,
            ]
        )
        start = time.perf_counter()
        result = run_edit(cfg)
        seconds = time.perf_counter() - start
        case = ensure_toy_case(work / "cache", cfg.data.toy_case, cfg.data.toy_frames)
        source = read_video_frames(result.source).numpy()
        truth = read_video_frames(case["truth"]).numpy()
        edited = read_video_frames(result.edited[0]).numpy()
        masks = {stem: read_video_frames(path).numpy() for stem, path in result.masks.items()}
    picked = slice(0, None, args.every)
    rows = {
        "source": source[picked],
        "ground truth": truth[picked],
        "i2vedit (toy)": edited[picked],
    }
    for stem, mask in masks.items():
        rows[f"its mask ({stem})"] = mask[picked]
    contact_sheet(rows, args.out)
    metrics = {
        k: v for k, v in result.metrics[result.edited[0].stem].items() if isinstance(v, float)
    }
    log.info(
        "%d frames in %.0f s; PSNR vs truth, frames 1..N: %.2f dB",
        len(edited),
        seconds,
        psnr(edited[1:], truth[1:]),
    )
    log.info("metrics: %s", ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()))
    exact = score(make_case(*parse_case(cfg.data.toy_case), frames=cfg.data.toy_frames), edited)
    log.info(
        "against the exact truth, frames 1..N: PSNR %.2f dB, trajectory %.2f px, colour %.2f, "
        "PSNR inside the edit region %.2f dB, outside %.2f dB",
        exact.psnr,
        exact.trajectory,
        exact.colour,
        exact.psnr_inside,
        exact.psnr_outside,
    )
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
