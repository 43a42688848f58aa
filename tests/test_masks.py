"""Edit masks (data.mask_paths): the auto mask, propagation, latent preservation, compositing,
the mask video, metrics.json, long videos and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import i2vedit.tasks.edit as edit_task
from i2vedit.data.resize import ResolutionPlan
from i2vedit.data.video import read_video_frames, write_video
from i2vedit.errors import InputError
from i2vedit.masks import auto_mask, composite, feather, latent_weights, propagate
from i2vedit.metrics import preservation_psnr
from i2vedit.outputs import mask_name
from i2vedit.sampling.sampler import Preservation, preserve_latents
from i2vedit.tasks.edit import run_edit
from i2vedit.tasks.inputs import first_frame_mask, read_inputs
from tests.conftest import compose_edit, moving_square_frames

FAST = ["attention_matching=off", "sarp=off"]  # inversion on: preservation needs its trajectory


def test_auto_mask_is_the_difference_region_dilated():
    source = np.full((20, 30, 3), 100, np.uint8)
    edited = source.copy()
    edited[5:9, 10:14] = (100, 100, 200)  # mean |diff| 100/3/255 = 0.13 > 0.1
    edited[15, 25] = (110, 110, 110)  # 10/255: below the threshold
    edited[2, 25] = (200, 200, 200)  # 0.39, but a lone speck: blurred, 0.06 < 0.08 (no seed)
    expected = np.zeros((20, 30), bool)
    expected[3:11, 8:16] = True  # the 4x4 block grown by 2 px each way
    assert np.array_equal(auto_mask(edited, source, 0.1, 2), expected)
    block = np.zeros((20, 30), bool)
    block[5:9, 10:14] = True
    assert np.array_equal(auto_mask(edited, source, 0.1, 0), block)


def test_propagation_follows_a_moving_square():
    frames = moving_square_frames(8)  # the square moves 5-6 px a frame
    truth = (frames == (220, 40, 40)).all(-1)
    masks = propagate(truth[0], frames, safety=1)
    assert np.array_equal(masks[0], truth[0])
    for t in range(1, 8):
        assert (masks[t] & truth[t]).sum() == truth[t].sum()  # every frame fully covered
        iou = (masks[t] & truth[t]).sum() / (masks[t] | truth[t]).sum()
        assert iou > 0.45, (t, iou)  # measured 0.77 at frame 1 down to 0.51 at frame 7


def test_feather_and_composite_keep_the_source_exactly_outside_the_band():
    mask = np.zeros((1, 12, 12), bool)
    mask[0, 4:6, 4:6] = True
    w = feather(mask, 2)
    assert w[0, 4, 4] == 1 and w[0, 4, 7] == pytest.approx(1 - 2 / 3) and w[0, 4, 9] == 0
    edited = torch.full((1, 12, 12, 3), 200, dtype=torch.uint8)
    source = torch.randint(0, 256, (1, 12, 12, 3), dtype=torch.uint8)
    out = composite(edited, source, w)
    outside = w == 0
    assert torch.equal(out[torch.from_numpy(outside)], source[torch.from_numpy(outside)])
    assert torch.equal(out[0, 4:6, 4:6], edited[0, 4:6, 4:6])


def test_latent_weights_only_grow_the_region():
    mask = np.zeros((2, 48, 64), bool)
    mask[:, 17, 9] = True  # one pixel: its whole latent cell counts
    w = latent_weights(mask, ResolutionPlan.build((48, 64), (48, 64), False), 8, 1)[0, 0]
    assert w.shape == (6, 8) and w[2, 1] == 1 and w[2, 2] == 0.5 and w[2, 0] == 0.5
    assert w[1, 2] == pytest.approx(1 - 2**-0.5) and w[0].sum() == 0 and w[:, 3:].sum() == 0
    # at another resolution: pixel (17, 9) lands in the model's row 11.3, column 4.5
    w = latent_weights(mask, ResolutionPlan.build((48, 64), (32, 32), False), 8, 1)
    assert w.shape == (2, 1, 4, 4) and w[1, 0, 1, 0] == 1 and w[1, 0, 3].sum() == 0


def test_preserve_latents_takes_the_source_at_the_same_sigma_outside():
    x = torch.ones(1, 2, 4, 2, 2)
    trajectory = torch.arange(4.0).view(4, 1, 1, 1, 1, 1).expand(4, 1, 2, 4, 2, 2)
    weights = torch.zeros(1, 2, 1, 2, 2)
    weights[..., 0, 0] = 1
    p = Preservation(weights, trajectory, steps=2)
    out = preserve_latents(x, 1, p)  # step 1 runs at sigmas[1]: the inversion's index 3 - 1
    assert torch.equal(out[..., 0, 0], x[..., 0, 0]) and (out[..., 1, 1] == 2).all()
    assert preserve_latents(x, 2, p) is x and preserve_latents(x, 0, None) is x


def test_preservation_psnr_with_one_mask_per_frame_by_hand():
    source = np.zeros((2, 4, 4, 3), np.uint8)
    edited = source.copy()
    edited[0, 0, 0] = 90  # masked out in frame 0 only
    edited[1, 3, 3] = 30  # counted: frame 1's mask is elsewhere
    masks = np.zeros((2, 4, 4), bool)
    masks[0, 0, 0] = masks[1, 0, 0] = True
    mse = 3 * 30**2 / (2 * 15 * 3)  # 30 pixels outside the masks, 3 channels each
    assert preservation_psnr(source, edited, masks) == pytest.approx(10 * np.log10(255**2 / mse))


def _masked(edit_overrides, *extra):
    return compose_edit([*edit_overrides, *FAST, *extra])


def test_masked_edit_keeps_the_source_outside_the_feather_band(tiny_model, edit_overrides):
    cfg = _masked(edit_overrides, "data.mask_paths=[auto]")
    result = run_edit(cfg, model=tiny_model)
    inputs = read_inputs(cfg)
    mask = inputs.keyframes[0].mask
    assert mask.kind == "auto" and mask.frames.shape == (8, 48, 64)
    weights = torch.from_numpy(feather(mask.frames, cfg.data.mask_feather))
    written, source = result.clip_frames["blue"][0], result.plan[0].clip.frames
    outside = weights == 0
    assert outside.float().mean() > 0.5
    assert torch.equal(written[outside], source[outside])  # uint8 equality
    assert not torch.equal(written[~outside], source[~outside])  # the edit is there
    video = read_video_frames(result.masks["blue"])
    assert result.masks["blue"].name == mask_name("blue") and len(video) == 8
    assert np.array_equal(video.numpy().mean(-1) > 127.5, mask.frames)
    metrics = json.loads(result.metrics_path.read_text())["blue"]
    assert metrics["mask_source"] == "auto" and metrics["mask"] == "blue_mask.mp4"
    measured = preservation_psnr(  # outside the propagated masks, frame by frame
        read_video_frames(result.source), read_video_frames(result.edited[0]), mask.frames
    )
    assert metrics["preservation_psnr"] == pytest.approx(measured)


def test_no_mask_is_todays_path(tiny_model, edit_overrides, tmp_path, monkeypatch):
    """mask_paths=null and [null] give the same keys and frames as a run that never heard of
    masks (no preservation, no compositing)."""
    plain = run_edit(_masked(edit_overrides), model=tiny_model)
    nulls = _masked(
        [o for o in edit_overrides if not o.startswith("output_dir")],
        "data.mask_paths=[null]",
        f"output_dir={tmp_path / 'nulls'}",
        f"paths.cache_dir={tmp_path / 'fresh'}",
    )
    calls = []
    monkeypatch.setattr(edit_task, "composite", lambda *a: calls.append(a))
    again = run_edit(nulls, model=tiny_model)
    assert calls == [] and not again.masks
    assert again.plan[0].edits["blue"].key == plain.plan[0].edits["blue"].key
    assert again.plan[0].inversion.key == plain.plan[0].inversion.key
    assert torch.equal(again.clip_frames["blue"][0], plain.clip_frames["blue"][0])
    assert again.edited[0].read_bytes() == plain.edited[0].read_bytes()


def test_per_frame_masks_are_used_as_given(tiny_model, edit_overrides, tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    given = np.zeros((8, 24, 32), bool)  # half the source's size: resized (nearest)
    for t in range(8):
        given[t, 2 + t : 10 + t, 3:12] = True
        Image.fromarray(given[t].astype(np.uint8) * 255).save(folder / f"{t:03d}.png")
    cfg = _masked(edit_overrides, f"data.mask_paths=[{folder}]")
    mask = read_inputs(cfg).keyframes[0].mask
    assert mask.kind == "frames"
    assert np.array_equal(mask.frames, given.repeat(2, 1).repeat(2, 2))
    assert np.array_equal(first_frame_mask(cfg), mask.frames[0])
    result = run_edit(cfg, model=tiny_model)
    assert json.loads(result.metrics_path.read_text())["blue"]["mask_source"] == "frames"
    # the mask key changes the edit's entry, not the inversion's
    plain = _masked(edit_overrides)
    from i2vedit.tasks.plan import prepare_edit

    unmasked = prepare_edit(plain, tiny_model).plans[0]
    assert unmasked.inversion.key == result.plan[0].inversion.key
    assert unmasked.edits["blue"].key != result.plan[0].edits["blue"].key


def test_a_long_video_with_a_mask(tiny_model, edit_overrides):
    overrides = [o for o in edit_overrides if not o.startswith("data.end_clip_id")]
    cfg = _masked(overrides, "data.end_t=1.83", "data.mask_paths=[auto]")
    result = run_edit(cfg, model=tiny_model)
    mask = read_inputs(cfg).keyframes[0].mask
    assert mask.frames.shape[0] == 22 and [p.mask_start for p in result.plan] == [0, 7, 14]
    clips = result.clip_frames["blue"]
    for plan, written in zip(result.plan, clips, strict=True):
        masks = mask.frames[plan.mask_start : plan.mask_start + 8]
        outside = torch.from_numpy(feather(masks, cfg.data.mask_feather) == 0)
        assert torch.equal(written[outside], plan.clip.frames[outside])
    for previous, current in zip(clips, clips[1:], strict=False):
        assert torch.equal(current[0], previous[-1])
    assert len(read_video_frames(result.masks["blue"])) == 22


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("not a mask")
    return path


def _short_video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "three.mp4", np.zeros((3, 48, 64, 3), np.uint8), 12)


BAD_MASKS = [
    (lambda p: "[/nonexistent/mask.png]", "data.mask_paths[0]"),
    (lambda p: f"[{_text_file(p)}]", "data.mask_paths[0]"),
    (lambda p: f"[{_short_video(p)}]", "data.mask_paths[0]"),
    (lambda p: "[auto,auto]", "data.mask_paths"),
    (lambda p: "[auto]", "data.mask_preserve"),
]


@pytest.mark.parametrize(("value", "key"), BAD_MASKS)
def test_bad_masks_refused_before_model_load(value, key, edit_overrides, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded for bad input")

    monkeypatch.setattr(edit_task, "load_model", no_model)
    extra = ["data.mask_preserve=1.5"] if key == "data.mask_preserve" else []
    cfg = compose_edit([*edit_overrides, f"data.mask_paths={value(tmp_path)}", *extra])
    with pytest.raises(InputError) as err:
        run_edit(cfg)
    assert err.value.key == key
    assert "\n" not in str(err.value)
    assert not Path(cfg.output_dir).exists()


def test_the_command_exits_2_with_one_line_for_a_bad_mask(source_video, keyframe, tmp_path):
    exe = shutil.which("i2vedit-edit", path=str(Path(sys.executable).parent))
    env = {**os.environ, "I2VEDIT_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            exe,
            f"data.video_path={source_video}",
            f"data.keyframe_paths=[{keyframe}]",
            f"data.mask_paths=[{tmp_path / 'nowhere.png'}]",
            f"output_dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: data.mask_paths[0]='{tmp_path / 'nowhere.png'}': file not found"]
    assert not (tmp_path / "out").exists()
