"""Tests for i2vedit.data.video: probing, sampling, clips, reading and writing."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from i2vedit.data import video as video_mod
from i2vedit.data.video import (
    SampledVideo,
    VideoInfo,
    clip_ranges,
    load_image,
    probe_video,
    read_video_frames,
    sample_video,
    select_clips,
    write_video,
)
from i2vedit.errors import InputError

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def flat_frames(values, h: int = 48, w: int = 64) -> np.ndarray:
    """uint8 (N, H, W, 3) frames, frame i filled with grey level values[i]."""
    return np.stack([np.full((h, w, 3), v, np.uint8) for v in values])


def encode(
    path: Path,
    frames: np.ndarray,
    fps,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    fmt: str | None = None,
    rotation: int | None = None,
) -> Path:
    """Encode RGB frames with PyAV (independently of write_video)."""
    if codec not in av.codecs_available:
        pytest.skip(f"encoder {codec} not available in this PyAV build")
    n, h, w, _ = frames.shape
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def ramp_video(path: Path, n: int = 30, fps=30, **kw) -> Path:
    """n frames at fps, frame i filled with grey 8*i (distinct, well inside [0, 255])."""
    return encode(path, flat_frames([8 * i for i in range(n)]), fps, **kw)


def frame_levels(frames: torch.Tensor) -> list[float]:
    return frames.float().mean(dim=(1, 2, 3)).tolist()


def smooth_frames(n: int, h: int, w: int) -> np.ndarray:
    """Smooth colour gradients that move a little every frame."""
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i, ..., 0] = 30 + 180 * xx
        out[i, ..., 1] = 40 + 150 * yy
        out[i, ..., 2] = 60 + 100 * (xx + yy) / 2 + 3 * i
    return out


@pytest.fixture()
def ramp30(tmp_path: Path) -> Path:
    return ramp_video(tmp_path / "ramp.mp4")


# --------------------------------------------------------------------------------------------
# write_video / read_video_frames
# --------------------------------------------------------------------------------------------


def test_write_read_round_trip(tmp_path: Path) -> None:
    frames = smooth_frames(12, 48, 64)
    out = write_video(tmp_path / "out.mp4", torch.from_numpy(frames), 12)
    assert out == tmp_path / "out.mp4"
    back = read_video_frames(out)
    assert back.dtype == torch.uint8
    assert back.shape == (12, 48, 64, 3)
    err = (back.float() - torch.from_numpy(frames).float()).abs()
    assert err.mean() < 3.0
    # colours (not just luma) survive: per-channel means match
    assert torch.allclose(
        back.float().mean(dim=(0, 1, 2)),
        torch.from_numpy(frames).float().mean(dim=(0, 1, 2)),
        atol=2,
    )
    info = probe_video(out)
    assert info == VideoInfo(fps=12.0, duration=1.0, width=64, height=48)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_write_read_keeps_saturated_colours(tmp_path: Path) -> None:
    # Writing with one YUV matrix and reading with another shifts these by 10-20 levels.
    colours = [(200, 50, 120), (30, 180, 90), (240, 220, 20)]
    frames = np.stack([np.broadcast_to(np.uint8(c), (16, 16, 3)) for c in colours])
    write_video(tmp_path / "c.mp4", frames, 5)
    back = read_video_frames(tmp_path / "c.mp4")
    assert (back.float() - torch.from_numpy(frames).float()).abs().max() <= 4


def test_write_accepts_numpy_and_fractional_fps(tmp_path: Path) -> None:
    out = write_video(tmp_path / "ntsc.mp4", flat_frames([100] * 6, 16, 16), 30000 / 1001)
    with av.open(str(out)) as c:
        assert c.streams.video[0].average_rate == Fraction(30000, 1001)
        assert c.streams.video[0].codec_context.name == "h264"
    info = probe_video(out)
    assert math.isclose(info.fps, 30000 / 1001, rel_tol=1e-6)
    assert read_video_frames(out).shape == (6, 16, 16, 3)


def test_write_pads_odd_sizes(tmp_path: Path, caplog) -> None:
    h, w = 21, 33
    frames = smooth_frames(4, h, w)
    with caplog.at_level("WARNING", logger="i2vedit.data.video"):
        write_video(tmp_path / "odd.mp4", frames, 8)
    assert any("even" in r.getMessage() for r in caplog.records)
    back = read_video_frames(tmp_path / "odd.mp4")
    assert back.shape == (4, h + 1, w + 1, 3)
    assert (back[:, :h, :w].float() - torch.from_numpy(frames).float()).abs().mean() < 3
    # the added row/column replicate the edge (no black border)
    assert (back[:, h, :w].float() - back[:, h - 1, :w].float()).abs().mean() < 3
    assert (back[:, :h, w].float() - back[:, :h, w - 1].float()).abs().mean() < 3


def test_write_replaces_existing_and_creates_folder(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "dir" / "v.mp4"
    write_video(target, flat_frames([10] * 3, 16, 16), 10)
    write_video(target, flat_frames([200] * 5, 16, 16), 10)
    back = read_video_frames(target)
    assert back.shape[0] == 5 and abs(back.float().mean().item() - 200) < 3
    assert sorted(p.name for p in target.parent.iterdir()) == ["v.mp4"]


def test_write_failure_during_rename_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(video_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        write_video(tmp_path / "v.mp4", flat_frames([10] * 3, 16, 16), 10)
    assert list(tmp_path.iterdir()) == []


def test_write_failure_during_encoding_keeps_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "v.mp4"
    write_video(target, flat_frames([50] * 3, 16, 16), 10)
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(video_mod.np, "pad", boom)  # only used for odd sizes
    with pytest.raises(RuntimeError, match="encoder exploded"):
        write_video(target, flat_frames([200] * 3, 15, 16), 10)
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
    assert target.read_bytes() == before


def test_write_rejects_bad_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_video(tmp_path / "v.mp4", np.zeros((2, 8, 8, 3), np.float32), 10)
    with pytest.raises(ValueError):
        write_video(tmp_path / "v.mp4", np.zeros((0, 8, 8, 3), np.uint8), 10)
    with pytest.raises(ValueError):
        write_video(tmp_path / "v.mp4", np.zeros((2, 8, 8, 3), np.uint8), 0)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# probe_video / sample_video on video files
# --------------------------------------------------------------------------------------------


def test_probe_mp4(ramp30: Path) -> None:
    assert probe_video(ramp30) == VideoInfo(fps=30.0, duration=1.0, width=64, height=48)


def test_sample_hand_computed_indices(ramp30: Path) -> None:
    # targets 0.25, 0.35, ..., 0.85 (< 0.9); frame showing at t is floor(30 t)
    s = sample_video(ramp30, sample_fps=10, start_t=0.25, end_t=0.9)
    assert isinstance(s, SampledVideo)
    assert s.indices == [7, 10, 13, 16, 19, 22, 25]
    assert s.times == pytest.approx([i / 30 for i in s.indices])
    assert s.frames.dtype == torch.uint8 and s.frames.shape == (7, 48, 64, 3)
    assert frame_levels(s.frames) == pytest.approx([8 * i for i in s.indices], abs=3)
    assert s.info == probe_video(ramp30)


def test_sample_to_end_of_video(ramp30: Path) -> None:
    # targets k/7 for k = 0..6 (< 1.0 s)
    s = sample_video(ramp30, sample_fps=7)
    assert s.indices == [0, 4, 8, 12, 17, 21, 25]
    assert frame_levels(s.frames) == pytest.approx([8 * i for i in s.indices], abs=3)


def test_sample_at_source_rate_takes_every_frame(ramp30: Path) -> None:
    s = sample_video(ramp30, sample_fps=30)
    assert s.indices == list(range(30))


def test_sample_faster_than_source_repeats_frames(tmp_path: Path) -> None:
    path = ramp_video(tmp_path / "slow.mp4", n=5, fps=10)
    # targets k/25 (< 0.5 s): frame floor(10 t)
    s = sample_video(path, sample_fps=25)
    assert s.indices == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4]
    assert torch.equal(s.frames[0], s.frames[2])
    assert frame_levels(s.frames) == pytest.approx([8 * i for i in s.indices], abs=3)


def test_end_t_past_the_end_is_clamped(tmp_path: Path) -> None:
    path = ramp_video(tmp_path / "short.mp4", n=5, fps=10)
    s = sample_video(path, sample_fps=10, start_t=0.2, end_t=100.0)
    assert s.indices == [2, 3, 4]


def test_sampling_converts_only_chosen_frames(ramp30: Path, monkeypatch) -> None:
    converted: list[int] = []
    real = video_mod._frame_to_rgb

    def counting(frame):
        converted.append(frame.pts)
        return real(frame)

    monkeypatch.setattr(video_mod, "_frame_to_rgb", counting)
    s = sample_video(ramp30, sample_fps=5, start_t=0.1, end_t=0.5)
    assert s.indices == [3, 9]
    assert len(converted) == 2


def test_fractional_rate_video(tmp_path: Path) -> None:
    path = ramp_video(tmp_path / "ntsc.mp4", n=30, fps=Fraction(30000, 1001))
    info = probe_video(path)
    assert math.isclose(info.fps, 30000 / 1001, rel_tol=1e-6)
    assert math.isclose(info.duration, 1.001, rel_tol=1e-6)
    # frame i at i * 1.001 / 30 s; targets k / 10
    s = sample_video(path, sample_fps=10)
    assert s.indices == [math.floor(k / 10 * 30000 / 1001 + 1e-9) for k in range(11)]


@pytest.mark.parametrize(
    ("suffix", "codec", "fmt"),
    [("webm", "libvpx-vp9", "webm"), ("mkv", "libx264", "matroska"), ("mov", "mpeg4", "mov")],
)
def test_other_containers(tmp_path: Path, suffix: str, codec: str, fmt: str) -> None:
    path = ramp_video(tmp_path / f"v.{suffix}", n=30, fps=30, codec=codec, fmt=fmt)
    info = probe_video(path)
    assert (info.width, info.height) == (64, 48)
    assert info.fps == pytest.approx(30.0)
    assert info.duration == pytest.approx(1.0, abs=0.02)
    s = sample_video(path, sample_fps=10, start_t=0.25, end_t=0.9)
    # webm/mkv store milliseconds (frame i at round(1000 i / 30) ms); same picks either way
    assert s.indices == [7, 10, 13, 16, 19, 22, 25]
    assert frame_levels(s.frames) == pytest.approx([8 * i for i in s.indices], abs=4)


def test_display_rotation_is_applied(tmp_path: Path) -> None:
    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("this PyAV cannot write a display matrix")
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:24, :32] = 255  # white top-left quadrant
    path = encode(tmp_path / "rot.mp4", np.stack([frame] * 3), 10, rotation=90)
    info = probe_video(path)
    assert (info.width, info.height) == (48, 64)
    frames = read_video_frames(path)
    assert frames.shape == (3, 64, 48, 3)
    # rotated 90 degrees counter-clockwise: the white quadrant ends up bottom-left
    quad = frames[0].float().mean(dim=-1)
    assert quad[32:, :24].mean() > 200 and quad[:32].mean() < 50 and quad[:, 24:].mean() < 50
    s = sample_video(path, sample_fps=10)
    assert s.frames.shape == (3, 64, 48, 3)


# --------------------------------------------------------------------------------------------
# GIF
# --------------------------------------------------------------------------------------------


def test_gif_at_10_fps(tmp_path: Path) -> None:
    values = [3 + 25 * i for i in range(10)]
    path = encode(tmp_path / "a.gif", flat_frames(values, 16, 24), 10, codec="gif", pix_fmt="gray")
    info = probe_video(path)
    assert info == VideoInfo(fps=10.0, duration=1.0, width=24, height=16)
    s = sample_video(path, sample_fps=5, start_t=0.1)
    assert s.indices == [1, 3, 5, 7, 9]
    # grey GIFs are lossless
    assert frame_levels(s.frames) == [float(values[i]) for i in s.indices]
    assert torch.equal(read_video_frames(path), torch.from_numpy(flat_frames(values, 16, 24)))


def test_gif_at_30_fps_has_centisecond_timestamps(tmp_path: Path) -> None:
    # GIF delays are whole centiseconds: a 30 fps GIF alternates 3/4/3 cs per frame, so frame
    # times are 0, .03, .07, .10, .13, .17, ... and FFmpeg's own rate estimate is 33.3 fps.
    frames = flat_frames(range(0, 240, 8), 8, 8)
    path = encode(tmp_path / "b.gif", frames, 30, codec="gif", pix_fmt="gray")
    with av.open(str(path)) as c:
        assert c.streams.video[0].average_rate != 30
    info = probe_video(path)
    assert info.fps == pytest.approx(30.0)  # frame count / duration
    assert info.duration == pytest.approx(1.0)
    s = sample_video(path, sample_fps=30)
    assert s.times[:4] == pytest.approx([0.0, 0.03, 0.03, 0.10])
    # target 2/30 = 0.0667 s comes before frame 2 (0.07 s): frame 1 repeats, frame 2 is skipped
    assert s.indices[:7] == [0, 1, 1, 3, 4, 4, 6]
    assert len(s.indices) == 30


def test_gif_with_variable_frame_durations(tmp_path: Path) -> None:
    frames = [Image.new("L", (12, 10), v) for v in (10, 90, 170, 250)]
    path = tmp_path / "vfr.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=[100, 200, 100, 50])
    info = probe_video(path)
    assert info.duration == pytest.approx(0.45)
    assert (info.width, info.height) == (12, 10)
    # frames at 0, .1, .3, .4 s; targets every 0.05 s
    s = sample_video(path, sample_fps=20)
    assert s.indices == [0, 0, 1, 1, 1, 1, 2, 2, 3]
    assert s.times == pytest.approx([[0.0, 0.1, 0.3, 0.4][i] for i in s.indices])
    assert frame_levels(s.frames) == pytest.approx([[10, 90, 170, 250][i] for i in s.indices])


# --------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------


def make_folder(folder: Path, n: int, h: int = 10, w: int = 14) -> list[np.ndarray]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]
    # write in reverse so that creation order differs from name order
    for i in reversed(range(n)):
        ext = ["png", "bmp", "PNG"][i % 3]
        Image.fromarray(images[i]).save(folder / f"frame_{i:03d}.{ext}")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"junk")
    return images


def test_image_folder_probe_and_sample(tmp_path: Path) -> None:
    images = make_folder(tmp_path / "frames", 12)
    info = probe_video(tmp_path / "frames", folder_fps=6)
    assert info == VideoInfo(fps=6.0, duration=2.0, width=14, height=10)
    # targets 0.5, 0.83, 1.17, 1.5, 1.83 s; frame i shows from i / 6 s
    s = sample_video(tmp_path / "frames", sample_fps=3, start_t=0.5, folder_fps=6)
    assert s.indices == [3, 5, 7, 9, 11]
    assert s.times == pytest.approx([i / 6 for i in s.indices])
    assert torch.equal(s.frames, torch.from_numpy(np.stack([images[i] for i in s.indices])))
    assert torch.equal(read_video_frames(tmp_path / "frames"), torch.from_numpy(np.stack(images)))


def test_image_folder_jpeg_and_default_fps(tmp_path: Path) -> None:
    folder = tmp_path / "jpgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 8), (40 * i, 100, 200)).save(folder / f"{i}.jpg", quality=95)
    info = probe_video(folder)
    assert info == VideoInfo(fps=30.0, duration=pytest.approx(0.1), width=16, height=8)
    s = sample_video(folder, sample_fps=30)
    assert s.indices == [0, 1, 2]


def test_image_folder_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(InputError) as exc:
        probe_video(empty)
    assert exc.value.key == "data.video_path" and "no images" in exc.value.reason

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (8, 8)).save(mixed / "a.png")
    Image.new("RGB", (8, 6)).save(mixed / "b.png")
    with pytest.raises(InputError) as exc:
        sample_video(mixed, sample_fps=30, key="input.video")
    assert exc.value.key == "input.video" and "same size" in exc.value.reason

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    with pytest.raises(InputError) as exc:
        probe_video(broken)
    assert "cannot read image" in exc.value.reason

    with pytest.raises(InputError) as exc:
        probe_video(mixed, folder_fps=0)
    assert exc.value.key == "data.folder_fps"


# --------------------------------------------------------------------------------------------
# input errors
# --------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    for call in (
        lambda: probe_video(missing),
        lambda: sample_video(missing, 10),
        lambda: read_video_frames(missing),
    ):
        with pytest.raises(InputError) as exc:
            call()
        assert exc.value.key == "data.video_path"
        assert exc.value.reason == "file not found"
        assert exc.value.value == str(missing)
    with pytest.raises(InputError) as exc:
        probe_video(missing, key="edit.source")
    assert exc.value.key == "edit.source"


def test_not_a_video(tmp_path: Path) -> None:
    for name, data in [("notes.mp4", b"hello, this is text"), ("zeros.mp4", bytes(4096))]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InputError) as exc:
            sample_video(path, 10)
        assert exc.value.key == "data.video_path"
        assert exc.value.reason.startswith("cannot decode video: ")


def test_truncated_video(tmp_path: Path, ramp30: Path) -> None:
    data = ramp30.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as exc:
        probe_video(cut)
    assert "cannot decode video" in exc.value.reason


def test_audio_only_file(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with av.open(str(path), mode="w") as c:
        stream = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    with pytest.raises(InputError) as exc:
        probe_video(path)
    assert exc.value.key == "data.video_path" and "no video stream" in exc.value.reason


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"sample_fps": 0}, "data.sample_fps"),
        ({"sample_fps": -3}, "data.sample_fps"),
        ({"sample_fps": float("nan")}, "data.sample_fps"),
        ({"sample_fps": "fast"}, "data.sample_fps"),
        ({"sample_fps": 10, "start_t": -0.1}, "data.start_t"),
        ({"sample_fps": 10, "start_t": 0.5, "end_t": 0.5}, "data.end_t"),
        ({"sample_fps": 10, "start_t": 0.5, "end_t": 0.2}, "data.end_t"),
    ],
)
def test_bad_sampling_parameters(ramp30: Path, kwargs: dict, key: str) -> None:
    with pytest.raises(InputError) as exc:
        sample_video(ramp30, **kwargs)
    assert exc.value.key == key


def test_start_t_beyond_duration(ramp30: Path) -> None:
    for start in (1.0, 5.0):
        with pytest.raises(InputError) as exc:
            sample_video(ramp30, sample_fps=10, start_t=start)
        assert exc.value.key == "data.start_t"
        assert "1.00 s long" in exc.value.reason


def test_no_frame_selected(tmp_path: Path) -> None:
    # The container says 2 s (audio) but the video track ends after 0.3 s.
    path = tmp_path / "av.mkv"
    with av.open(str(path), mode="w", format="matroska") as c:
        v = c.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 16, 16, "yuv420p"
        a = c.add_stream("pcm_s16le", rate=8000)
        for arr in flat_frames([0, 100, 200], 16, 16):
            for packet in v.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(packet)
        for packet in v.encode():
            c.mux(packet)
        samples = av.AudioFrame.from_ndarray(
            np.zeros((1, 16000), np.int16), format="s16", layout="mono"
        )
        samples.sample_rate = 8000
        for packet in a.encode(samples):
            c.mux(packet)
        for packet in a.encode():
            c.mux(packet)
    info = probe_video(path)
    assert info.duration > 1.5
    assert sample_video(path, sample_fps=10).indices == [0, 1, 2]
    with pytest.raises(InputError) as exc:
        sample_video(path, sample_fps=10, start_t=1.0)
    assert exc.value.key == "data.start_t"
    assert "no frame selected" in exc.value.reason


# --------------------------------------------------------------------------------------------
# clips
# --------------------------------------------------------------------------------------------


def test_clip_ranges_hand_computed() -> None:
    assert clip_ranges(27, 14, 1) == [range(0, 14), range(13, 27)]
    # 3 frames left over: a last clip of 4 (one shared with the clip before)
    assert clip_ranges(30, 14, 1) == [range(0, 14), range(13, 27), range(26, 30)]
    assert clip_ranges(14, 14, 0) == [range(0, 14)]
    assert clip_ranges(28, 14, 0) == [range(0, 14), range(14, 28)]
    assert clip_ranges(29, 14, 0) == [range(0, 14), range(14, 28), range(28, 29)]
    assert clip_ranges(10, 4, 2) == [range(0, 4), range(2, 6), range(4, 8), range(6, 10)]
    assert clip_ranges(11, 4, 2) == [
        range(0, 4),
        range(2, 6),
        range(4, 8),
        range(6, 10),
        range(8, 11),
    ]
    assert clip_ranges(5, 2, 1) == [range(k, k + 2) for k in range(4)]
    assert clip_ranges(12, 8, 1) == [range(0, 8), range(7, 12)]
    assert clip_ranges(22, 8, 1) == [range(0, 8), range(7, 15), range(14, 22)]  # exactly 3
    assert clip_ranges(5, 14, 1) == [range(0, 5)]  # fewer than a clip: one short clip


@pytest.mark.parametrize("chunk", [2, 3, 5, 8, 14])
@pytest.mark.parametrize("overlay", [0, 1, 2])
@pytest.mark.parametrize("frames", [2, 7, 12, 22, 40])
def test_clip_ranges_cover_every_frame_once_after_overlaps(chunk, overlay, frames) -> None:
    if overlay >= chunk:
        return
    ranges = clip_ranges(frames, chunk, overlay)
    assert all(len(r) <= chunk for r in ranges)
    output = list(ranges[0]) + [i for r in ranges[1:] for i in list(r)[overlay:]]
    assert output == list(range(frames))  # stitched as the edit does: each frame once


def test_clip_ranges_errors() -> None:
    with pytest.raises(InputError) as exc:
        clip_ranges(30, 1, 0)
    assert exc.value.key == "data.chunk_size"
    with pytest.raises(InputError) as exc:
        clip_ranges(30, 14, 14)
    assert exc.value.key == "data.overlay_size"
    with pytest.raises(InputError) as exc:
        clip_ranges(30, 14, -1)
    assert exc.value.key == "data.overlay_size"
    with pytest.raises(InputError) as exc:
        clip_ranges(1, 14, 1)
    assert exc.value.key == "data.end_t"
    assert "only 1 frame(s) sampled" in exc.value.reason
    assert "at least 2" in exc.value.reason
    with pytest.raises(InputError) as exc:
        clip_ranges(
            0,
            14,
            1,
            key="data.sample_fps",
            value=2,
            context="between start_t=0 and end_t=0.4 at sample_fps=2",
        )
    assert exc.value.key == "data.sample_fps" and exc.value.value == 2
    assert exc.value.reason == (
        "only 0 frame(s) sampled between start_t=0 and end_t=0.4 at sample_fps=2; "
        "a clip needs at least 2"
    )


def test_select_clips() -> None:
    ranges = clip_ranges(40, 14, 1)
    assert len(ranges) == 3
    assert select_clips(ranges) == list(enumerate(ranges))
    assert select_clips(ranges, 1) == [(1, ranges[1]), (2, ranges[2])]
    assert select_clips(ranges, 0, 2) == [(0, ranges[0]), (1, ranges[1])]
    assert select_clips(ranges, 2, 3) == [(2, ranges[2])]


@pytest.mark.parametrize(
    ("begin", "end", "key"),
    [
        (3, None, "data.begin_clip_id"),
        (-1, None, "data.begin_clip_id"),
        (0, 4, "data.end_clip_id"),
        (1, 1, "data.end_clip_id"),
        (2, 1, "data.end_clip_id"),
        (0, -1, "data.end_clip_id"),
    ],
)
def test_select_clips_out_of_range(begin: int, end: int | None, key: str) -> None:
    ranges = clip_ranges(40, 14, 1)
    with pytest.raises(InputError) as exc:
        select_clips(ranges, begin, end)
    assert exc.value.key == key
    assert "3 clips" in exc.value.reason


# --------------------------------------------------------------------------------------------
# load_image
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_load_image_modes(tmp_path: Path, mode: str) -> None:
    img = Image.new("RGB", (7, 5), (200, 100, 50)).convert(mode)
    path = tmp_path / f"img_{mode}.png"
    img.save(path)
    out = load_image(path)
    assert out.dtype == torch.uint8 and out.shape == (5, 7, 3)
    expected = torch.from_numpy(np.array(img.convert("RGB")))
    assert torch.equal(out, expected)


def test_load_image_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError) as exc:
        load_image(tmp_path / "missing.png")
    assert exc.value.key == "data.keyframe_paths" and exc.value.reason == "file not found"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(InputError) as exc:
        load_image(bad, key="edit.keyframe")
    assert exc.value.key == "edit.keyframe"
    assert exc.value.reason.startswith("cannot read image: ")


def test_written_bytes_depend_on_the_frames_alone(tmp_path):
    """The same frames give the same file, every time (with x264's macroblock-tree rate
    control on, 64x48 noisy frames came out differently in 13 of 30 writes)."""
    from tests.conftest import moving_square_frames

    rng = np.random.default_rng(0)
    noise = rng.integers(-20, 20, (22, 48, 64, 3))
    frames = np.clip(moving_square_frames(22).astype(int) + noise, 0, 255).astype(np.uint8)
    first = write_video(tmp_path / "a.mp4", frames, 12).read_bytes()
    for i in range(20):
        assert write_video(tmp_path / f"{i}.mp4", frames, 12).read_bytes() == first, i
