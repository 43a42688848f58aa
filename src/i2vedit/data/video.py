"""Video input and output: probing, timestamp-based sampling, clip layout and H.264 writing.

A "video" is either a file that PyAV (FFmpeg) can decode (mp4, mov, webm, mkv, gif, ...) or a
folder of images (png, jpg, jpeg, webp, bmp) sorted by file name and played at ``folder_fps``.

Timestamps are measured in seconds from the first decoded frame, so a stream whose first frame
carries a non-zero presentation time still starts at ``t = 0``. Frames carrying a display
rotation (phone recordings) are rotated upright, as players show them.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from av.error import FFmpegError
from PIL import Image, ImageOps, UnidentifiedImageError

from i2vedit.errors import InputError
from i2vedit.files import atomic_path

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})

# Tolerance (seconds) when comparing a frame timestamp with a target time.
_TIME_EPS = 1e-6
# Frame rate assumed when a stream carries no usable rate at all (FFmpeg's own default).
_FALLBACK_FPS = 25.0


@dataclass(frozen=True)
class VideoInfo:
    """Basic properties of a video as it is displayed (after any display rotation)."""

    fps: float
    duration: float
    width: int
    height: int


@dataclass
class SampledVideo:
    """Frames picked from a video at a fixed sampling rate."""

    frames: torch.Tensor  # uint8, (N, H, W, 3)
    times: list[float]  # source timestamp (s) of each chosen frame
    indices: list[int]  # source frame index of each chosen frame
    info: VideoInfo


@dataclass
class _RawFrame:
    """One decoded (or listed) frame whose pixels are produced only on demand."""

    index: int
    time: float
    duration: float
    load: Callable[[], np.ndarray]


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _open_rgb(path: Path, key: str) -> np.ndarray:
    if not path.exists():
        raise InputError(key, str(path), "file not found")
    if path.is_dir():
        raise InputError(key, str(path), "expected an image file, got a folder")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                if img.mode == "P" and "transparency" in img.info:
                    img = img.convert("RGBA")
                img = img.convert("RGB")
            return np.asarray(img, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(key, str(path), f"cannot read image: {_short(exc)}") from exc


def load_image(path: str | os.PathLike[str], key: str = "data.keyframe_paths") -> torch.Tensor:
    """Read an image as an RGB uint8 tensor of shape (H, W, 3).

    EXIF orientation is applied; palette, grey and alpha images are converted to RGB.
    """
    return torch.from_numpy(_open_rgb(Path(path), key))


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        ),
        key=lambda p: p.name,
    )


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def _short(exc: BaseException, limit: int = 160) -> str:
    """A one-line, bounded description of an exception."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_folder_fps(folder_fps: float) -> float:
    try:
        fps = float(folder_fps)
    except (TypeError, ValueError) as exc:
        raise InputError("data.folder_fps", folder_fps, "must be a number") from exc
    if not (math.isfinite(fps) and fps > 0):
        raise InputError("data.folder_fps", folder_fps, "must be a positive number")
    return fps


def _resolve(path: str | os.PathLike[str], key: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(key, str(path), "file not found")
    return p


class _FolderSource:
    def __init__(self, folder: Path, key: str, fps: float) -> None:
        self.key = key
        self.files = _list_images(folder)
        if not self.files:
            exts = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
            raise InputError(key, str(folder), f"folder contains no images ({exts})")
        first = _open_rgb(self.files[0], key)
        self.shape = first.shape
        self.info = VideoInfo(
            fps=fps,
            duration=len(self.files) / fps,
            width=int(first.shape[1]),
            height=int(first.shape[0]),
        )

    def _load(self, path: Path) -> np.ndarray:
        arr = _open_rgb(path, self.key)
        if arr.shape != self.shape:
            raise InputError(
                self.key,
                str(path),
                f"image is {arr.shape[1]}x{arr.shape[0]} but the first image "
                f"({self.files[0].name}) is {self.shape[1]}x{self.shape[0]}; "
                "all frames must have the same size",
            )
        return arr

    def frames(self) -> Iterator[_RawFrame]:
        fps = self.info.fps
        for i, f in enumerate(self.files):
            yield _RawFrame(i, i / fps, 1.0 / fps, lambda f=f: self._load(f))


def _rotation_steps(frame: av.VideoFrame) -> int:
    """Quarter turns (counter-clockwise) needed to show ``frame`` upright."""
    try:
        degrees = frame.rotation
    except Exception:  # side data absent or unreadable: treat the frame as upright
        return 0
    if not degrees:
        return 0
    steps = round(degrees / 90)
    if abs(degrees - 90 * steps) > 1:
        logger.warning("ignoring display rotation of %s degrees (not a multiple of 90)", degrees)
        return 0
    return steps % 4


def _frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    arr = frame.to_ndarray(format="rgb24")
    steps = _rotation_steps(frame)
    if steps:
        arr = np.rot90(arr, steps)
    return np.ascontiguousarray(arr)


class _VideoFileSource:
    """A video file opened with PyAV; every :meth:`frames` call decodes from the start."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self.info = self._probe()

    def _error(self, exc: BaseException) -> InputError:
        return InputError(self.key, str(self.path), f"cannot decode video: {_short(exc)}")

    def _open(self) -> av.container.InputContainer:
        try:
            return av.open(str(self.path), mode="r")
        except (FFmpegError, OSError, ValueError) as exc:
            raise self._error(exc) from exc

    def _probe(self) -> VideoInfo:
        container = self._open()
        try:
            if not container.streams.video:
                raise InputError(self.key, str(self.path), "file has no video stream")
            stream = container.streams.video[0]
            try:
                first = next(container.decode(stream), None)
            except FFmpegError as exc:
                raise self._error(exc) from exc
            if first is None:
                raise InputError(self.key, str(self.path), "cannot decode video: no frames")
            width, height = first.width, first.height
            if _rotation_steps(first) % 2:
                width, height = height, width

            tb = stream.time_base
            duration = 0.0
            if stream.duration is not None and tb is not None and stream.duration > 0:
                duration = float(stream.duration * tb)
            elif container.duration is not None and container.duration > 0:
                duration = container.duration / av.time_base
            n_frames = stream.frames or 0
            rate = _stream_rate(stream)
        finally:
            container.close()

        if duration <= 0:
            # No usable metadata: measure the stream by decoding it (frames are discarded).
            n_frames, duration = self._scan(rate or _FALLBACK_FPS)
        fps = _pick_fps(rate, n_frames, duration)
        if fps is None:
            logger.warning(
                "%s: no frame rate in the stream; assuming %g fps", self.path, _FALLBACK_FPS
            )
            fps = _FALLBACK_FPS
        return VideoInfo(fps=fps, duration=duration, width=int(width), height=int(height))

    def _scan(self, fps: float) -> tuple[int, float]:
        count, end = 0, 0.0
        for raw in self._iterate(fps):
            count += 1
            end = raw.time + raw.duration
        return count, end

    def frames(self) -> Iterator[_RawFrame]:
        return self._iterate(self.info.fps)

    def _iterate(self, fps: float) -> Iterator[_RawFrame]:
        container = self._open()
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            offset: float | None = None
            last_time = -math.inf
            index = 0
            decoded = container.decode(stream)
            while True:
                try:
                    frame = next(decoded, None)
                except FFmpegError as exc:
                    raise self._error(exc) from exc
                if frame is None:
                    break
                if frame.time is None:
                    t = index / fps
                else:
                    if offset is None:
                        offset = float(frame.time)
                    t = float(frame.time) - offset
                # Keep timestamps monotonic even for streams with broken ordering.
                t = max(t, last_time)
                last_time = t
                dur = 1.0 / fps
                frame_dur = getattr(frame, "duration", None)  # PyAV >= 13
                if frame_dur and frame.time_base is not None:
                    dur = float(frame_dur * frame.time_base)
                yield _RawFrame(index, t, dur, lambda frame=frame: self._convert(frame))
                index += 1
        finally:
            container.close()

    def _convert(self, frame: av.VideoFrame) -> np.ndarray:
        try:
            return _frame_to_rgb(frame)
        except FFmpegError as exc:
            raise self._error(exc) from exc


def _stream_rate(stream: av.video.stream.VideoStream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return None


def _pick_fps(rate: float | None, n_frames: int, duration: float) -> float | None:
    """Average frame rate; prefers the container's rate unless the frame count disagrees.

    GIF timestamps are stored in centiseconds, so FFmpeg's rate estimate for a 30 fps GIF
    is 33.3 fps; the frame count over the duration gives the true average.
    """
    measured = n_frames / duration if n_frames > 0 and duration > 0 else None
    if rate is None:
        return measured
    if measured is not None and abs(measured - rate) > 0.01 * rate:
        return measured
    return rate


def _open_source(
    path: str | os.PathLike[str], key: str, folder_fps: float
) -> _FolderSource | _VideoFileSource:
    p = _resolve(path, key)
    if p.is_dir():
        return _FolderSource(p, key, _check_folder_fps(folder_fps))
    return _VideoFileSource(p, key)


# --------------------------------------------------------------------------------------------
# Public reading API
# --------------------------------------------------------------------------------------------


def probe_video(
    path: str | os.PathLike[str], key: str = "data.video_path", folder_fps: float = 30.0
) -> VideoInfo:
    """Frame rate, duration (seconds) and displayed size of a video file or image folder."""
    return _open_source(path, key, folder_fps).info


def _as_float(value: object, key: str) -> float:
    if isinstance(value, bool):
        raise InputError(key, value, "must be a number")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise InputError(key, value, "must be a number") from exc


def _sampling_times(
    sample_fps: float, start_t: float, end_t: float | None
) -> tuple[float, float, float]:
    """(fps, start, end) checked, ``end`` infinite when ``end_t`` is None."""
    fps = _as_float(sample_fps, "data.sample_fps")
    if not (math.isfinite(fps) and fps > 0):
        raise InputError("data.sample_fps", sample_fps, "must be a positive number")
    start = _as_float(start_t, "data.start_t")
    if not (math.isfinite(start) and start >= 0):
        raise InputError("data.start_t", start_t, "must be a number >= 0")
    end = math.inf
    if end_t is not None:
        end = _as_float(end_t, "data.end_t")
        if not end > start:
            raise InputError("data.end_t", end_t, f"must be greater than start_t={start:g}")
    return fps, start, end


def _within_video(
    start_t: float, start: float, end_t: float | None, end: float, duration: float
) -> float:
    """The sampling end within a video of ``duration`` seconds (its end when ``end_t`` is
    None); a start at or past the end is refused."""
    if start >= duration:
        raise InputError(
            "data.start_t",
            start_t,
            f"must be less than the video's duration (the video is {duration:.2f} s long)",
        )
    if end_t is None:
        return duration
    if end > duration + _TIME_EPS:
        logger.debug(
            "end_t=%g is past the end of the video (%.2f s); sampling up to the end",
            end,
            duration,
        )
    return end


def sample_video(
    path: str | os.PathLike[str],
    sample_fps: float,
    start_t: float = 0.0,
    end_t: float | None = None,
    *,
    key: str = "data.video_path",
    folder_fps: float = 30.0,
) -> SampledVideo:
    """Sample frames at ``start_t + k / sample_fps`` for every k with a time ``< end_t``.

    For each target time the frame showing at that time is chosen: the last frame whose
    timestamp is ``<= target``. Decoding streams through the video and keeps only the chosen
    frames; it stops at the first frame past the last target. ``end_t=None`` means the end of
    the video, and an ``end_t`` past the end is clamped to it.
    """
    fps, start, end = _sampling_times(sample_fps, start_t, end_t)
    source = _open_source(path, key, folder_fps)
    info = source.info
    end = _within_video(start_t, start, end_t, end, info.duration)

    def target(k: int) -> float:
        return start + k / fps

    chosen: list[np.ndarray] = []
    times: list[float] = []
    indices: list[int] = []
    cache: tuple[int, np.ndarray] | None = None

    def choose(raw: _RawFrame) -> None:
        nonlocal cache
        if cache is None or cache[0] != raw.index:
            cache = (raw.index, raw.load())
        chosen.append(cache[1])
        times.append(raw.time)
        indices.append(raw.index)

    k = 0
    prev: _RawFrame | None = None
    exhausted = True
    for raw in source.frames():
        # Every pending target strictly before this frame shows the previous frame.
        while target(k) < end and target(k) + _TIME_EPS < raw.time:
            if prev is not None:
                choose(prev)
            k += 1
        if target(k) >= end:
            exhausted = False
            break
        prev = raw
    if exhausted and prev is not None:
        # Past the last frame: it keeps showing until its own end time.
        last_end = prev.time + prev.duration
        while target(k) < end and target(k) < last_end - _TIME_EPS:
            choose(prev)
            k += 1

    if not chosen:
        last = f"{prev.time + prev.duration:.2f}" if prev is not None else "0.00"
        raise InputError(
            "data.start_t",
            start_t,
            f"no frame selected: the decoded video ends at {last} s, before start_t",
        )
    frames = torch.from_numpy(np.stack(chosen))
    logger.debug(
        "sampled %d frames from %s at %g fps (source indices %d..%d)",
        len(indices),
        path,
        fps,
        indices[0],
        indices[-1],
    )
    return SampledVideo(frames=frames, times=times, indices=indices, info=info)


def read_video_frames(
    path: str | os.PathLike[str], key: str = "data.video_path", folder_fps: float = 30.0
) -> torch.Tensor:
    """Decode every frame of a video (or image folder) as uint8 (N, H, W, 3)."""
    source = _open_source(path, key, folder_fps)
    frames = [raw.load() for raw in source.frames()]
    if not frames:
        raise InputError(key, str(path), "cannot decode video: no frames")
    return torch.from_numpy(np.stack(frames))


# --------------------------------------------------------------------------------------------
# Clips
# --------------------------------------------------------------------------------------------


def clip_ranges(
    num_frames: int,
    chunk_size: int,
    overlay_size: int,
    *,
    key: str = "data.end_t",
    value: object = None,
    context: str = "between start_t and end_t",
) -> list[range]:
    """Split ``num_frames`` sampled frames into clips of ``chunk_size`` frames, every frame in
    at least one clip.

    Consecutive clips share ``overlay_size`` frames: clip k covers
    ``range(k * (chunk_size - overlay_size), k * (chunk_size - overlay_size) + chunk_size)``.
    Frames left over after the last full clip make one shorter last clip that shares
    ``overlay_size`` frames with the one before (SVD samples any frame count), and fewer than
    ``chunk_size`` frames in all make one short clip. ``key``/``value``/``context`` describe
    the setting blamed when fewer than 2 frames are sampled (by default ``data.end_t``);
    ``context`` is inserted after "only N frames sampled".
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 2:
        raise InputError("data.chunk_size", chunk_size, "must be an integer >= 2")
    if isinstance(overlay_size, bool) or not isinstance(overlay_size, int):
        raise InputError("data.overlay_size", overlay_size, "must be an integer")
    if not 0 <= overlay_size < chunk_size:
        raise InputError(
            "data.overlay_size",
            overlay_size,
            f"must be >= 0 and less than chunk_size={chunk_size}",
        )
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    if num_frames < 2:
        sep = f" {context}" if context else ""
        raise InputError(
            key, value, f"only {num_frames} frame(s) sampled{sep}; a clip needs at least 2"
        )
    if num_frames <= chunk_size:
        return [range(num_frames)]
    stride = chunk_size - overlay_size
    count = (num_frames - chunk_size) // stride + 1
    ranges = [range(k * stride, k * stride + chunk_size) for k in range(count)]
    if ranges[-1].stop < num_frames:  # the rest, as a shorter last clip
        ranges.append(range(ranges[-1].stop - overlay_size, num_frames))
    return ranges


def select_clips(
    ranges: Sequence[range], begin_clip_id: int = 0, end_clip_id: int | None = None
) -> list[tuple[int, range]]:
    """Pick clips ``begin_clip_id <= id < end_clip_id`` (``None``: through the last clip)."""
    n = len(ranges)
    ids = f"ids 0..{n - 1}" if n else "no ids"
    if isinstance(begin_clip_id, bool) or not isinstance(begin_clip_id, int):
        raise InputError("data.begin_clip_id", begin_clip_id, "must be an integer")
    if not 0 <= begin_clip_id < n:
        raise InputError(
            "data.begin_clip_id", begin_clip_id, f"out of range: the video has {n} clips ({ids})"
        )
    if end_clip_id is None:
        end = n
    else:
        if isinstance(end_clip_id, bool) or not isinstance(end_clip_id, int):
            raise InputError("data.end_clip_id", end_clip_id, "must be an integer or null")
        if not begin_clip_id < end_clip_id <= n:
            raise InputError(
                "data.end_clip_id",
                end_clip_id,
                f"out of range: must be greater than begin_clip_id={begin_clip_id} and at most "
                f"{n} (exclusive end; the video has {n} clips, {ids})",
            )
        end = end_clip_id
    return [(i, ranges[i]) for i in range(begin_clip_id, end)]


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _tag_bt709(stream: av.video.stream.VideoStream) -> str | None:
    """Tag the stream as BT.709 limited range; returns the matrix to convert RGB with.

    Untagged HD video is shown as BT.709 by players but as BT.601 by FFmpeg, so the tags make
    every reader agree. Without tag support (old PyAV) the FFmpeg default (BT.601) is used.
    """
    ctx = stream.codec_context
    try:
        ctx.colorspace = 1  # AVCOL_SPC_BT709
        ctx.color_primaries = 1  # AVCOL_PRI_BT709 (the sRGB primaries)
        ctx.color_trc = 1  # AVCOL_TRC_BT709
        ctx.color_range = 1  # AVCOL_RANGE_MPEG (limited)
    except (AttributeError, TypeError, ValueError):
        logger.debug("this PyAV cannot tag colour metadata; writing untagged BT.601")
        return None
    return "itu709"


def write_video(
    path: str | os.PathLike[str],
    frames: torch.Tensor | np.ndarray,
    fps: float,
    *,
    crf: int = 17,
) -> Path:
    """Write uint8 (N, H, W, 3) RGB frames as an H.264 (yuv420p, BT.709) mp4.

    Odd widths/heights are padded by one replicated edge pixel, as yuv420p needs even sizes.
    The file appears atomically: it is written to a hidden temporary file in the same folder
    and renamed over ``path``; on failure the temporary file is removed.
    """
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {tuple(frames.shape)}"
        )
    n, height, width, _ = frames.shape
    if n == 0 or height == 0 or width == 0:
        raise ValueError(f"cannot write an empty video {tuple(frames.shape)}")
    if not (math.isfinite(float(fps)) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    rate = Fraction(fps).limit_denominator(1001)

    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:
        logger.warning(
            "padding %dx%d frames to %dx%d (H.264 yuv420p needs even sizes)",
            width,
            height,
            width + pad_w,
            height + pad_h,
        )

    out = Path(path)
    with atomic_path(out) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width = width + pad_w
        stream.height = height + pad_h
        stream.pix_fmt = "yuv420p"
        # x264's macroblock-tree rate control reads memory it never set on small frames and
        # then encodes identical input differently now and then (seen at 64x48: 1 run in
        # 8 to 30 of 30); without it the bytes depend on the frames alone, so a resumed
        # run writes the very file an uninterrupted one does
        stream.options = {"crf": str(int(crf)), "x264-params": "no-mbtree=1"}
        dst_colorspace = _tag_bt709(stream)
        for index, arr in enumerate(frames):
            if pad_h or pad_w:
                arr = np.pad(arr, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            frame = frame.reformat(format="yuv420p", dst_colorspace=dst_colorspace)
            frame.pts = index  # explicit timestamps at the stream's rate
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    logger.debug("wrote %d frames (%dx%d @ %s fps) to %s", n, width, height, rate, out)
    return out
