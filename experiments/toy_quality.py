"""Edit quality against the exact ground truth of the toy world (docs/QUALITY.md).

For each of a fixed set of held-out toy cases (``i2vedit.toy.world.held_out_cases``), every
variant below edits the case's source from its edited first frame with the toy model
(``model=toy``), through ``run_edit`` itself (so the cache shares inversions and LoRAs between
variants), and is scored against the true edited video:

- PSNR against the ground truth over frames 1..N (frame 0 is the given edit);
- trajectory error: mean distance (px) between the edited object's centroid in the output
  (pixels of its true colour) and in the ground truth, over frames 1..N where both are seen
  (recolor, reshape and dance cases; a restyled background has no single object);
- colour error of the edited region: mean |RGB| difference (0..255) between the output and
  the ground truth inside the object's true mask, frames 1..N.

Variants: the full method (inversion + SARP + attention matching + motion LoRA, beta (0.5,
0.8)), and ablations: no inversion (I2V from seeded noise), no attention matching, no motion
LoRA, no SARP, each beta preset, exact pairing, and the repeat-the-edited-frame baseline.
The last row is no edit: the ground truth encoded and decoded by the toy VAE, which every
edit's frames pass through; it bounds what any method can reach with this model.

    python experiments/toy_quality.py --cases 20 --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from hydra import compose, initialize_config_module  # noqa: E402

from i2vedit.config import register_configs  # noqa: E402
from i2vedit.core.edm import decode_video, encode_video  # noqa: E402
from i2vedit.data.resize import to_model_frames, to_uint8_frames  # noqa: E402
from i2vedit.data.video import read_video_frames  # noqa: E402
from i2vedit.metrics import psnr  # noqa: E402
from i2vedit.models.device import resolve_device  # noqa: E402
from i2vedit.models.svd import LoadedModel, load_model  # noqa: E402
from i2vedit.progress import CONSOLE, setup_logging  # noqa: E402
from i2vedit.tasks.edit import run_edit  # noqa: E402
from i2vedit.toy.items import ensure_toy_case  # noqa: E402
from i2vedit.toy.world import ToyCase, held_out_cases, sprite_centroid  # noqa: E402

log = logging.getLogger("toy_quality")

#: name -> overrides on top of the full method's
VARIANTS: dict[str, list[str]] = {
    "full method": [],
    "no inversion (I2V from noise)": ["inversion=none", "attention_matching=off"],
    "no attention matching": ["attention_matching=off"],
    "no motion LoRA": ["lora.checkpoint=null"],
    "no SARP": ["sarp=off"],
    "beta (0.4, 0.5)": ["attention_matching.beta=[0.4,0.5]"],
    "beta (0.8, 0.9)": ["attention_matching.beta=[0.8,0.9]"],
    "exact pairing": ["attention_matching.pairing=exact"],
}
REPEAT = "repeat the edited frame"
#: not an edit: the truth encoded and decoded by the toy VAE, the best any edit through it can do
CEILING = "(the truth through the VAE: the ceiling)"
TRACKED_KINDS = ("recolor", "reshape", "dance")


@dataclass
class Score:
    psnr: float
    trajectory: float  #: NaN where the case has no tracked object
    colour: float


def object_colour(case: ToyCase) -> np.ndarray:
    """The edited object's true colour: the median of its pixels in the first true frame."""
    return np.median(case.truth[0][case.target_mask[0]], axis=0)


def score(case: ToyCase, output: np.ndarray) -> Score:
    """PSNR, trajectory error and colour error of ``output`` (F, H, W, 3) against the truth,
    over frames 1..N."""
    truth, out = case.truth[1:], output[1 : len(case.truth)]
    trajectory = float("nan")
    if case.kind in TRACKED_KINDS:
        colour = object_colour(case)
        ours = sprite_centroid(out, colour)
        true = case.centroids[1:]
        seen = ~np.isnan(ours).any(axis=1) & ~np.isnan(true).any(axis=1)
        # an object the output lost counts as off by the frame's diagonal
        diagonal = math.hypot(*truth.shape[1:3])
        errors = np.where(seen, np.linalg.norm(np.nan_to_num(ours - true), axis=1), diagonal)
        trajectory = float(errors[~np.isnan(true).any(axis=1)].mean())
    mask = case.target_mask[1:]
    diff = np.abs(out.astype(np.float64) - truth.astype(np.float64)).mean(axis=-1)
    colour_error = float(diff[mask].mean()) if mask.any() else float("nan")
    return Score(psnr(out, truth), trajectory, colour_error)


def contact_sheet(rows: dict[str, np.ndarray], path: Path, zoom: int = 2) -> Path:
    """One labelled row per video (F, H, W, 3), every frame, ``zoom`` times enlarged."""
    from PIL import Image, ImageDraw

    label_w, gap = 190, 3
    f, h, w = next(iter(rows.values())).shape[:3]
    sheet = Image.new(
        "RGB", (label_w + f * (w * zoom + gap), len(rows) * (h * zoom + gap) + gap), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for r, (label, frames) in enumerate(rows.items()):
        top = gap + r * (h * zoom + gap)
        draw.text((4, top + h * zoom // 2 - 6), label, fill="black")
        for c, frame in enumerate(frames[:f]):
            tile = Image.fromarray(frame).resize((w * zoom, h * zoom), Image.NEAREST)
            sheet.paste(tile, (label_w + c * (w * zoom + gap), top))
    sheet.save(path)
    return path


def vae_round_trip(model: LoadedModel, frames: np.ndarray) -> np.ndarray:
    """uint8 frames encoded and decoded by the model's VAE, as every edit's frames are."""
    with torch.inference_mode():
        x = to_model_frames(torch.from_numpy(frames)).to(model.device)
        latents = encode_video(model.pipe, x)
        return to_uint8_frames(decode_video(model.pipe, latents).cpu()).numpy()


def compose_case(case: ToyCase, extra: list[str], common: list[str]):
    with initialize_config_module("i2vedit.conf", version_base=None):
        return compose(
            "edit",
            overrides=[
                "model=toy",
                f"data.toy_case={case.name}",
                f"data.toy_frames={len(case.source)}",
                "data.sample_fps=7",
                *common,
                *extra,
            ],
        )


def run(args: argparse.Namespace) -> tuple[list[str], dict[str, list[Score]]]:
    cases = held_out_cases(args.cases)
    device = resolve_device(args.device)
    model: LoadedModel = load_model("toy", None, 0, None, device, torch.float32)
    work = Path(args.work or tempfile.mkdtemp(prefix="toy-quality-"))
    common = [
        f"num_steps={args.steps}",
        f"paths.cache_dir={work / 'cache'}",
        f"lora.checkpoint={args.lora_steps}",
        f"lora.max_steps={args.lora_steps}",
        f"lora.checkpoint_every={args.lora_steps}",
        "metrics=off",
    ]
    scores: dict[str, list[Score]] = {name: [] for name in [*VARIANTS, REPEAT, CEILING]}
    shown = next((c for c in cases if c.kind == "dance"), cases[0])
    sheet_rows = {"source": shown.source, "ground truth": shown.truth}
    for i, case in enumerate(cases):
        ensure_toy_case(work / "cache", case.name, len(case.source))
        scores[REPEAT].append(score(case, np.repeat(case.edited_first[None], len(case.source), 0)))
        scores[CEILING].append(score(case, vae_round_trip(model, case.truth)))
        for name, extra in VARIANTS.items():
            start = time.perf_counter()
            cfg = compose_case(case, extra, [*common, f"output_dir={work / case.name / str(i)}"])
            result = run_edit(cfg, model=model)
            output = read_video_frames(result.edited[0]).numpy()
            scores[name].append(score(case, output))
            if case is shown and name in ("full method", "no inversion (I2V from noise)"):
                sheet_rows[name] = output
            log.info(
                "%s / %s: %s (%.1f s)",
                case.name,
                name,
                scores[name][-1],
                time.perf_counter() - start,
            )
    if args.sheet is not None:
        log.info("contact sheet of %s: %s", shown.name, contact_sheet(sheet_rows, args.sheet))
    return [case.name for case in cases], scores


def table(scores: dict[str, list[Score]]) -> list[str]:
    def mean(values: list[float]) -> str:
        values = [v for v in values if not math.isnan(v)]
        return f"{np.mean(values):.2f}" if values else "n/a"

    full = scores["full method"]
    lines = [
        "| variant | PSNR vs truth, frames 1..N (dB, higher is better) | trajectory error (px, lower) "
        "| colour error of the edited object (0..255, lower) | beats the full method on PSNR |",
        "|---|---|---|---|---|",
    ]
    for name, values in scores.items():
        wins = sum(v.psnr > f.psnr for v, f in zip(values, full, strict=True))
        lines.append(
            f"| {name} | {mean([v.psnr for v in values])} | {mean([v.trajectory for v in values])} "
            f"| {mean([v.colour for v in values])} | "
            f"{'-' if name in ('full method', CEILING) else f'{wins} of {len(values)} cases'} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--steps", type=int, default=25, help="inversion and sampling steps")
    parser.add_argument("--lora-steps", type=int, default=100, help="motion-LoRA steps per case")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", help="work folder (default: a new temporary one)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "QUALITY.md")
    parser.add_argument(
        "--sheet", type=Path, default=ROOT / "docs" / "toy_edit.png", help="contact sheet PNG"
    )
    args = parser.parse_args(argv)
    setup_logging(names=("i2vedit", "toy_quality"))
    register_configs()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    names, scores = run(args)
    lines = table(scores)
    CONSOLE.print("\n".join(lines), markup=False, highlight=False)
    command = "python experiments/toy_quality.py " + shlex.join(argv or sys.argv[1:])
    header = [
        "# Edit quality on the toy world, against the exact ground truth",
        "",
        (__doc__ or "").split("\n\n", 1)[1].rsplit("\n\n", 1)[0],
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- Device: {platform.processor() or platform.machine()}, torch threads "
        f"{torch.get_num_threads()}; {time.perf_counter() - start:.0f} s in all",
        f"- Cases ({len(names)}): {', '.join(names)}",
        f"- Steps: {args.steps}; motion LoRA: {args.lora_steps} steps per clip",
        "",
    ]
    args.out.write_text("\n".join(header + lines) + "\n")
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
