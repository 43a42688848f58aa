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
  the ground truth inside the object's true mask, frames 1..N;
- PSNR inside and outside the true edit region, frames 1..N: per frame, the pixels the
  edited object (restyle: the background) covers in the ground truth, dilated by 2 px (a 5x5
  square), and the rest of the frame; the squared error is pooled over the frames' pixels.
  Outside that region the truth is the source (but where a reshaped object's old shape was),
  so this column measures what an edit keeps of the source.

Variants: the full method (inversion + SARP + attention matching + motion LoRA, beta (0.5,
0.8)), and ablations: no inversion (I2V from seeded noise), no attention matching, no motion
LoRA, no SARP, each beta preset, exact pairing, and the repeat-the-edited-frame baseline.
Two variants add a mask of the edited region to the full method: `mask=auto`
(`data.mask_paths=[auto]`, computed from the edited first frame and the source) and
`mask=given` (the true first-frame mask of the edited object, written as a PNG). The last two
rows are not edits: the ground truth encoded and decoded by the toy VAE, which every edit's
frames pass through (it bounds what any method can reach with this model), and the source as
the pipeline reads it, unedited (the case's H.264 file: outside the edit region it bounds
what a mask can keep, the file's compression loss included). `--variants` runs some of the
variants (the full method, the repeated frame and the two rows that are not edits always
run); `--merge` then replaces only their rows in the existing table and keeps the others.

    python experiments/toy_quality.py --cases 20 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import math
import platform
import re
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
from i2vedit.files import atomic_path, write_text  # noqa: E402
from i2vedit.masks import square_dilate  # noqa: E402
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
    "mask=auto": ["data.mask_paths=[auto]"],
    "mask=given": [],  #: + data.mask_paths=[<the case's true first-frame mask>], per case
}
FULL = "full method"
GIVEN_MASK = "mask=given"
REPEAT = "repeat the edited frame"
#: not an edit: the truth encoded and decoded by the toy VAE, the best any edit through it can do
CEILING = "(the truth through the VAE: the ceiling)"
#: not an edit: the source as the pipeline reads it (its H.264 file), scored against the truth;
#: outside the edit region it is what a mask keeps, so it bounds the outside PSNR of any edit
SOURCE = "(the source as read, unedited: the outside ceiling)"
TRACKED_KINDS = ("recolor", "reshape", "dance")
REGION_PAD = 2  #: px by which the true edit region is dilated for the inside/outside PSNR
#: the table's columns after the variant's name; the last is filled by ``table``
COLUMNS = (
    "PSNR vs truth, frames 1..N (dB, higher is better)",
    "trajectory error (px, lower)",
    "colour error of the edited object (0..255, lower)",
    "PSNR inside the edit region (dB, higher)",
    "PSNR outside the edit region (dB, higher)",
    "beats the full method on PSNR",
)


@dataclass
class Score:
    psnr: float
    trajectory: float  #: NaN where the case has no tracked object
    colour: float
    psnr_inside: float  #: inside the true edit region (dilated by REGION_PAD), frames 1..N
    psnr_outside: float  #: the rest of the frames


def object_colour(case: ToyCase) -> np.ndarray:
    """The edited object's true colour: the median of its pixels in the first true frame."""
    return np.median(case.truth[0][case.target_mask[0]], axis=0)


def edit_region(case: ToyCase, pad: int = REGION_PAD) -> np.ndarray:
    """bool (F, H, W): per frame, the pixels the edited object covers in the truth
    (``target_mask``), dilated by ``pad`` px (a (2 pad + 1) square)."""
    return square_dilate(case.target_mask, pad)


def region_psnr(case: ToyCase, output: np.ndarray) -> tuple[float, float]:
    """PSNR of ``output`` (F, H, W, 3) against the truth inside and outside the true edit
    region (``edit_region``), frames 1..N, the squared error pooled over all their pixels."""
    truth, out = case.truth[1:], output[1 : len(case.truth)]
    region = edit_region(case)[1:]
    return psnr(out[region], truth[region]), psnr(out[~region], truth[~region])


def large_motion_order(cases: list[ToyCase]) -> list[int]:
    """Indices of the sprite cases (recolor, reshape) of ``cases``, the object that moves
    furthest first: by the mean distance of its true centroid from its place in frame 0, over
    frames 1..N (the figures in ``tests/test_toy.py``)."""

    def displacement(case: ToyCase) -> float:
        return float(np.linalg.norm(case.centroids[1:] - case.centroids[0], axis=1).mean())

    sprites = [i for i, c in enumerate(cases) if c.kind in ("recolor", "reshape")]
    return sorted(sprites, key=lambda i: -displacement(cases[i]))


def score(case: ToyCase, output: np.ndarray) -> Score:
    """PSNR, trajectory error, colour error and the PSNR inside and outside the true edit
    region of ``output`` (F, H, W, 3) against the truth, over frames 1..N."""
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
    return Score(psnr(out, truth), trajectory, colour_error, *region_psnr(case, output))


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


def given_mask(case: ToyCase, folder: Path) -> Path:
    """The case's true first-frame mask of the edited object as a PNG (white where edited)."""
    from PIL import Image

    path = folder / f"{case.name}_given_mask.png"
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(case.target_mask[0].astype(np.uint8) * 255).save(tmp, format="PNG")
    return path


def variant_overrides(name: str, case: ToyCase, work: Path) -> list[str]:
    """The variant's overrides on ``case``: ``VARIANTS[name]``, with mask=given's mask file."""
    if name == GIVEN_MASK:
        return [f"data.mask_paths=[{given_mask(case, work / case.name)}]"]
    return VARIANTS[name]


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
    variants = [name for name in VARIANTS if name in args.variants]
    scores: dict[str, list[Score]] = {name: [] for name in [*variants, REPEAT, CEILING, SOURCE]}
    shown = next((c for c in cases if c.kind == "dance"), cases[0])
    sheet_rows = {"source": shown.source, "ground truth": shown.truth}
    for i, case in enumerate(cases):
        files = ensure_toy_case(work / "cache", case.name, len(case.source))
        scores[SOURCE].append(score(case, read_video_frames(files["video"]).numpy()))
        scores[REPEAT].append(score(case, np.repeat(case.edited_first[None], len(case.source), 0)))
        scores[CEILING].append(score(case, vae_round_trip(model, case.truth)))
        for name in variants:
            start = time.perf_counter()
            extra = variant_overrides(name, case, work)
            cfg = compose_case(case, extra, [*common, f"output_dir={work / case.name / str(i)}"])
            result = run_edit(cfg, model=model)
            output = read_video_frames(result.edited[0]).numpy()
            scores[name].append(score(case, output))
            if case is shown and name in (FULL, "no inversion (I2V from noise)"):
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


def table_rows(scores: dict[str, list[Score]]) -> dict[str, list[str]]:
    """Per variant, its cells under ``COLUMNS``: the means over the cases (NaN left out)."""

    def mean(values: list[float]) -> str:
        values = [v for v in values if not math.isnan(v)]
        return f"{np.mean(values):.2f}" if values else "n/a"

    full = scores[FULL]
    rows = {}
    for name, values in scores.items():
        wins = sum(v.psnr > f.psnr for v, f in zip(values, full, strict=True))
        rows[name] = [
            *(mean([getattr(v, f.name) for v in values]) for f in dataclasses.fields(Score)),
            "-" if name in (FULL, CEILING, SOURCE) else f"{wins} of {len(values)} cases",
        ]
    return rows


def table(rows: dict[str, list[str]], columns: tuple[str, ...] = COLUMNS) -> list[str]:
    """The markdown table of ``rows`` (name -> cells under ``columns``)."""
    lines = ["| variant | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
    return lines


@dataclass
class QualityPage:
    """docs/QUALITY.md in parts: what precedes its header's ``- `` lines, those lines, the
    table (rows by variant, cells by column) and whatever follows the table."""

    facts: list[str]  #: the ``- Command: ...`` lines above the table
    rows: dict[str, dict[str, str]]
    after: list[str]

    @classmethod
    def read(cls, path: Path) -> QualityPage:
        lines = path.read_text().splitlines()
        top = next((i for i, line in enumerate(lines) if line.startswith("| variant |")), None)
        if top is None:
            raise SystemExit(f"--merge: no table in {path}")
        end = next((i for i in range(top, len(lines)) if not lines[i].startswith("|")), len(lines))
        columns = [c.strip() for c in lines[top].strip("|").split("|")]
        rows = {}
        for line in lines[top + 2 : end]:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = dict(zip(columns[1:], cells[1:], strict=True))
        first = top
        while first > 0 and not lines[first - 1].strip():
            first -= 1
        facts_end = first
        while first > 0 and lines[first - 1].startswith("- "):
            first -= 1
        facts = lines[first:facts_end]
        return cls(facts, rows, lines[end:])

    def fact(self, label: str) -> str | None:
        return next((f for f in self.facts if f.startswith(f"- {label}")), None)


def merged_rows(old: QualityPage, new: dict[str, list[str]]) -> dict[str, list[str]]:
    """The old table's rows with the measured ones replaced, in the order of the variants;
    a column the old table lacked reads "not run"."""
    rows = {}
    for name in [*VARIANTS, REPEAT, CEILING, SOURCE, *old.rows]:
        if name in new:
            rows[name] = new[name]
        elif name in old.rows:
            rows[name] = [old.rows[name].get(column, "not run") for column in COLUMNS]
    return rows


def parse_variants(text: str | None) -> list[str]:
    """``--variants``: names separated by commas outside parentheses; the full method always."""
    if not text:
        return list(VARIANTS)
    names = [n.strip() for n in re.split(r",(?![^()]*\))", text) if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; expected some of {list(VARIANTS)}")
    return [FULL, *(n for n in names if n != FULL)]


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
        "--variants",
        help="NAME[,NAME]: run only these variants (the full method, the repeated frame and "
        "the ceiling always run); default: all",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace only the measured rows of --out's table, keep the others and the text "
        "after the table (the cases and steps must be the table's)",
    )
    parser.add_argument(
        "--sheet",
        type=Path,
        help="contact sheet PNG (default: docs/toy_edit.png when every variant runs)",
    )
    args = parser.parse_args(argv)
    args.variants = parse_variants(args.variants)
    if args.sheet is None and args.variants == list(VARIANTS):
        args.sheet = ROOT / "docs" / "toy_edit.png"
    old = QualityPage.read(args.out) if args.merge else None
    setup_logging(names=("i2vedit", "toy_quality"))
    register_configs()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    names, scores = run(args)
    measured = table_rows(scores)
    command = "python experiments/toy_quality.py " + shlex.join(argv or sys.argv[1:])
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    device = (
        f"{platform.processor() or platform.machine()}, torch threads "
        f"{torch.get_num_threads()}; {time.perf_counter() - start:.0f} s in all"
    )
    facts = [
        f"- Command: `{command}`",
        f"- Date: {now}",
        f"- Device: {device}",
        f"- Cases ({len(names)}): {', '.join(names)}",
        f"- Steps: {args.steps}; motion LoRA: {args.lora_steps} steps per clip",
    ]
    rows, after = measured, []
    if old is not None:
        for label, fact in zip(("Cases", "Steps"), facts[3:], strict=True):
            if old.fact(label) != fact:
                raise SystemExit(f"--merge: {args.out} has {old.fact(label)!r}, this run {fact!r}")
        rows, after = merged_rows(old, measured), old.after
        facts = [
            *old.facts,
            f"- Rows {', '.join(measured)} re-measured by `{command}` ({now}; {device})",
        ]
    lines = table(rows)
    CONSOLE.print("\n".join(lines), markup=False, highlight=False)
    header = [
        "# Edit quality on the toy world, against the exact ground truth",
        "",
        (__doc__ or "").split("\n\n", 1)[1].rsplit("\n\n", 1)[0],
        "",
        *facts,
        "",
    ]
    write_text(args.out, "\n".join(header + lines + after) + "\n")
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
