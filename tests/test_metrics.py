"""Edit-quality metrics against constructed oracles, and the ``i2vedit-eval`` command."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from i2vedit import metrics as M
from i2vedit.data.video import write_video
from i2vedit.errors import InputError
from i2vedit.files import write_json

EVAL = Path(sys.executable).parent / "i2vedit-eval"


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 (h, w, 3) smoothed noise stretched to 0..255: locally distinct, so flow is defined."""
    noise = np.random.default_rng(seed).uniform(0, 255, (h, w, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255
    return smooth.astype(np.uint8)


def translating(n: int = 6, h: int = 64, w: int = 96, dx: int = 2, seed: int = 0) -> np.ndarray:
    """uint8 (n, h, w, 3): a texture moving right by ``dx`` px per frame (windows of a canvas)."""
    canvas = texture(h, w + dx * n, seed)
    return np.stack([canvas[:, dx * (n - t) : dx * (n - t) + w] for t in range(n)])


# --------------------------------------------------------------------------------------------
# PSNR / SSIM
# --------------------------------------------------------------------------------------------


def test_psnr_identical_is_the_cap_and_constant_difference_is_exact() -> None:
    img = texture(32, 40)
    assert M.psnr(img, img) == M.PSNR_CAP_DB == 100.0
    a = np.full((16, 20, 3), 100, np.uint8)
    b = a + 10
    assert M.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-12)
    assert M.psnr(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(28.1308, abs=1e-4)


def test_masked_psnr_ignores_the_masked_region() -> None:
    a = texture(32, 32)
    b = a.copy()
    b[8:16, 8:16] = 255 - b[8:16, 8:16]  # differences only inside the square
    inside = np.zeros((32, 32), bool)
    inside[8:16, 8:16] = True
    assert M.psnr(a, b) < 30
    assert M.psnr(a, b, mask=~inside) == 100.0
    assert M.psnr(a, b, mask=inside) < M.psnr(a, b)
    assert math.isnan(M.psnr(a, b, mask=np.zeros((32, 32), bool)))
    # video + one (H, W) mask for all frames, as preservation_psnr uses it
    video_a, video_b = np.stack([a, a]), np.stack([a, b])
    assert M.preservation_psnr(video_a, video_b, inside) == 100.0
    assert M.preservation_psnr(video_a, video_b, np.zeros((32, 32), bool)) < 40


def test_ssim_identical_is_one_and_inverse_is_low() -> None:
    img = texture(48, 56)
    assert M.ssim(img, img) == 1.0
    assert M.ssim(img, 255 - img) < 0.5  # measured -0.72
    flat = np.full_like(img, 128)
    assert M.ssim(img, flat) < 0.3  # measured 0.163
    noisy = np.clip(img + np.random.default_rng(1).normal(0, 5, img.shape), 0, 255)
    assert 0.9 < M.ssim(img, noisy.astype(np.uint8)) < 1.0  # measured 0.963


# --------------------------------------------------------------------------------------------
# Flow, motion EPE, warping error
# --------------------------------------------------------------------------------------------


def test_farneback_recovers_a_known_translation() -> None:
    video = translating(dx=2)
    flow = M.optical_flow(video)
    assert flow.shape == (5, 64, 96, 2) and flow.dtype == np.float32
    interior = flow[:, 16:-16, 16:-16].reshape(-1, 2)
    # measured: mean (1.9997, 0.0000), max deviation 0.0015 px
    np.testing.assert_allclose(interior.mean(0), (2.0, 0.0), atol=0.3)


def test_motion_epe_separates_same_motion_from_no_motion() -> None:
    source = translating(seed=0)
    same_motion = translating(seed=1)  # other texture, same 2 px/frame shift
    static = np.repeat(source[:1], len(source), axis=0)
    assert M.motion_epe(source, same_motion) < 0.1  # measured 0.008
    assert M.motion_epe(source, static) > 1.5  # measured 2.0 (the whole shift)
    # a differently sized edit is resized to the source first
    bigger = np.stack([cv2.resize(f, (192, 128), interpolation=cv2.INTER_CUBIC) for f in source])
    assert M.motion_epe(source, bigger) < 0.1
    with pytest.raises(ValueError, match="frame counts"):
        M.motion_epe(source, source[:3])


def test_warping_error_zero_for_identical_pair_positive_for_noise() -> None:
    frame = texture(48, 64)
    assert M.warping_error(np.stack([frame, frame])) == 0.0
    noisy = np.clip(frame + np.random.default_rng(5).normal(0, 20, frame.shape), 0, 255)
    assert M.warping_error(np.stack([frame, noisy.astype(np.uint8)])) > 0.02  # measured 0.052
    # a clean translation is well explained by its flow: far below the noisy pair
    assert M.warping_error(translating()) < 0.005  # measured 0.0002


def test_raft_from_a_local_state_dict(tmp_path: Path) -> None:
    from torchvision.models.optical_flow import raft_small

    with pytest.raises(InputError) as err:
        M.optical_flow(translating(n=2), "raft", tmp_path / "missing.pth")
    assert err.value.key == "metrics.raft_weights" and err.value.reason == "file not found"
    assert M.resolve_flow_method("auto", tmp_path / "missing.pth") == "farneback"

    torch.manual_seed(0)
    weights = tmp_path / "raft_small.pth"
    torch.save(raft_small(weights=None).state_dict(), weights)  # random: shapes only
    assert M.resolve_flow_method("auto", weights) == "raft"
    video = translating(n=2, h=36, w=44)  # not multiples of 8, below RAFT's 128 minimum
    flow = M.optical_flow(video, "auto", weights)
    assert flow.shape == (1, 36, 44, 2) and np.isfinite(flow).all()


# --------------------------------------------------------------------------------------------
# Edit mask
# --------------------------------------------------------------------------------------------


def test_edit_mask_marks_the_changed_square_up_to_dilation() -> None:
    source = texture(48, 64)
    key = source.copy()
    key[10:26, 20:36] = 255 - key[10:26, 20:36]
    key[10:26, 20:36, 0] = np.where(key[10:26, 20:36, 0] > 127, 0, 255)  # surely > 0.1 apart
    diff = np.abs(key.astype(int) - source.astype(int)).mean(-1) / 255
    assert diff[10:26, 20:36].min() > 0.1
    expected = np.zeros((48, 64), bool)
    expected[8:28, 18:38] = True  # 5x5 dilation grows the square by 2 px per side
    np.testing.assert_array_equal(M.edit_mask(key, source), expected)
    undilated = np.zeros((48, 64), bool)
    undilated[10:26, 20:36] = True
    np.testing.assert_array_equal(M.edit_mask(key, source, dilate=1), undilated)
    assert not M.edit_mask(source, source).any()


# --------------------------------------------------------------------------------------------
# evaluate, JSON
# --------------------------------------------------------------------------------------------


def edited_version(source: np.ndarray) -> np.ndarray:
    out = source.copy()
    out[:, 20:40, 30:50] = (230, 40, 40)  # a red patch pasted on every frame
    return out


def test_evaluate_all_metrics_and_json(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = translating(n=5)
    edited = edited_version(source)
    result = M.evaluate(torch.from_numpy(edited), source, keyframe=edited[0], flow="farneback")
    assert result["frames"] == 5 and result["flow_method"] == "farneback"
    assert result["first_frame_psnr"] == 100.0 and result["first_frame_ssim"] == 1.0
    assert result["mask_source"] == "derived" and result["preservation_psnr"] == 100.0
    assert 0 < result["motion_epe"] < 1.0 and result["warping_error"] >= 0
    assert "clip_keyframe_similarity" not in result

    mask = np.zeros((64, 96), bool)  # wrong mask: the patch counts as background now
    with caplog.at_level("WARNING", logger="i2vedit.metrics"):
        given = M.evaluate(edited[:4], source, mask=mask)
    assert "comparing the first 4" in caplog.text
    assert given["frames"] == 4 and given["mask_source"] == "given"
    assert given["preservation_psnr"] < 30
    assert "first_frame_psnr" not in given

    alone = M.evaluate(edited)
    assert set(alone) == {"frames", "flow_method", "warping_error"}

    path = write_json(tmp_path / "m.json", {**result, "nothing": float("nan")})
    loaded = json.loads(path.read_text())
    assert loaded["nothing"] is None and loaded["first_frame_psnr"] == 100.0
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_load_mask(tmp_path: Path) -> None:
    img = np.zeros((8, 10), np.uint8)
    img[2:4, 3:6] = 255
    Image.fromarray(img).save(tmp_path / "m.png")
    np.testing.assert_array_equal(M.load_mask(tmp_path / "m.png"), img > 0)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError) as err:
        M.load_mask(tmp_path / "bad.png", "eval.mask")
    assert err.value.key == "eval.mask"


# --------------------------------------------------------------------------------------------
# CLIP (tiny random model, saved locally)
# --------------------------------------------------------------------------------------------


def test_clip_scores_with_a_tiny_local_clip(tmp_path: Path) -> None:
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(0)
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=8,
    )
    text = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=100,
        max_position_embeddings=16,
        projection_dim=8,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    full = tmp_path / "clip"
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(
        full
    )
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(full)
    vision_only = tmp_path / "image_encoder"  # like SVD's: no preprocessor config
    CLIPVisionModelWithProjection(CLIPVisionConfig(**vision)).save_pretrained(vision_only)

    frames = translating(n=3, h=40, w=48)
    for folder in (full, vision_only):
        scores = M.clip_scores(frames, frames[0], folder)
        assert set(scores) == {"clip_keyframe_similarity", "clip_temporal_consistency"}
        for value in scores.values():
            assert math.isfinite(value) and 0.0 <= value <= 100.0
    # a frame identical to the keyframe scores exactly 100
    same = M.clip_scores(frames[:1].repeat(2, 0), frames[0], full)
    assert same["clip_keyframe_similarity"] == pytest.approx(100.0, abs=1e-9)

    with pytest.raises(InputError) as err:
        M.clip_scores(frames, frames[0], tmp_path / "nowhere")
    assert err.value.key == "metrics.clip_path" and err.value.reason == "not found"


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def test_cli_writes_metrics_json(tmp_path: Path) -> None:
    source = translating(n=8)
    edited = edited_version(source)
    write_video(tmp_path / "src.mp4", source, 8)
    write_video(tmp_path / "out.mp4", edited, 8)
    Image.fromarray(edited[0]).save(tmp_path / "key.png")
    out = tmp_path / "metrics" / "m.json"
    proc = subprocess.run(
        [EVAL, tmp_path / "out.mp4", "--source", tmp_path / "src.mp4"]
        + ["--keyframe", tmp_path / "key.png", "--out", out],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # human-facing output goes to stderr
    metrics = json.loads(out.read_text())
    assert set(metrics) == {
        "frames",
        "flow_method",
        "first_frame_psnr",
        "first_frame_ssim",
        "motion_epe",
        "warping_error",
        "mask_source",
        "preservation_psnr",
    }
    assert metrics["frames"] == 8 and metrics["mask_source"] == "derived"
    # H.264 (yuv420p: halved chroma of a noise texture) against the lossless PNG keyframe:
    # measured 30.9 dB and SSIM 0.923; background vs the decoded source 41.9 dB
    assert metrics["first_frame_psnr"] > 27 and metrics["first_frame_ssim"] > 0.85
    assert metrics["preservation_psnr"] > 35
    assert metrics["motion_epe"] < 0.5  # measured 0.092
    assert "first_frame_psnr" in proc.stderr  # the table


def test_cli_missing_video_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    out = tmp_path / "m.json"
    proc = subprocess.run(
        [EVAL, missing, "--out", out], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(missing) in lines[0]
    assert not out.exists()
