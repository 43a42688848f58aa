"""Edit-quality metrics for an edited video, computed on the CPU with no downloads.

Frames are uint8 RGB arrays or tensors of shape (N, H, W, 3), images (H, W, 3), masks bool
(H, W) with True marking the edited region.

* :func:`psnr` on the 0..255 scale. Identical inputs give the cap ``PSNR_CAP_DB`` (100 dB)
  instead of infinity, so the numbers always stay valid JSON; an empty mask gives NaN
  (written as ``null`` by :func:`i2vedit.files.write_json`).
* :func:`ssim`: SSIM of Wang et al. (2004), Gaussian window 11x11 with sigma 1.5,
  K1 = 0.01, K2 = 0.03, L = 255, over the 'valid' region (no padding), per channel, averaged.
* :func:`optical_flow`: OpenCV Farneback with fixed parameters, or torchvision RAFT from a
  local state dict (``raft_weights``); never downloads.
* :func:`motion_epe`: how far the output's motion is from the source's (mean end-point error
  of the two forward flows, pixels; lower is better).
* :func:`warping_error`: temporal consistency of one video (mean absolute difference, 0..1
  scale, between each frame and the next one warped back by the flow; lower is better).
* :func:`edit_mask`, :func:`preservation_psnr`: how well the unedited region is kept.
* :func:`clip_scores`: CLIP image-embedding similarity to the keyframe and between consecutive
  frames (CLIPScore scale, 100 * max(cos, 0)), from a local CLIP folder only.
* :func:`evaluate` runs all of them that the given inputs allow;
  :func:`i2vedit.files.write_json` saves the result as JSON.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from i2vedit.errors import InputError
from i2vedit.metrics_spec import FLOW_METHODS

logger = logging.getLogger(__name__)

#: PSNR reported for identical inputs (zero error), instead of infinity.
PSNR_CAP_DB = 100.0

#: ``cv2.calcOpticalFlowFarneback`` parameters used by :func:`optical_flow`.
FARNEBACK_PARAMS: dict[str, float | int] = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}

#: SSIM constants (Wang et al. 2004).
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_L = 255.0

#: Smallest frame side RAFT accepts; smaller frames are replicate-padded up to it.
RAFT_MIN_SIZE = 128

ArrayLike = np.ndarray | torch.Tensor


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _np(x: ArrayLike) -> np.ndarray:
    """A numpy view of a tensor or array (on the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _frames(x: ArrayLike, name: str = "frames") -> np.ndarray:
    """Check and return uint8-like (N, H, W, 3) frames as a numpy array."""
    arr = _np(x)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, H, W, 3) with N >= 1, got {arr.shape}")
    return arr


def _to_uint8(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    return np.clip(np.rint(x.astype(np.float64)), 0, 255).astype(np.uint8)


def resize_image(image: ArrayLike, height: int, width: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image with PIL bicubic (no-op when the size already matches)."""
    arr = _to_uint8(_np(image))
    if arr.shape[:2] == (height, width):
        return arr
    return np.asarray(Image.fromarray(arr).resize((width, height), Image.Resampling.BICUBIC))


def resize_frames(frames: ArrayLike, height: int, width: int) -> np.ndarray:
    """Resize (N, H, W, 3) uint8 frames with PIL bicubic (no-op when the size already matches)."""
    arr = _frames(frames)
    if arr.shape[1:3] == (height, width):
        return arr
    return np.stack([resize_image(f, height, width) for f in arr])


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize bool masks (H, W) or (N, H, W) with PIL nearest (no-op when the size matches)."""
    if mask.shape[-2:] == (height, width):
        return mask
    if mask.ndim == 3:
        return np.stack([resize_mask(m, height, width) for m in mask])
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((width, height), Image.Resampling.NEAREST)) > 0


# --------------------------------------------------------------------------------------------
# Image metrics
# --------------------------------------------------------------------------------------------


def psnr(a: ArrayLike, b: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Peak signal-to-noise ratio (dB) on the 0..255 scale, over all pixels and channels.

    ``a`` and ``b`` have the same shape: (H, W, C) or (N, H, W, C) (or (H, W)). With ``mask``
    (bool (H, W), shared by all frames, or (N, H, W), one per frame) only the pixels where it
    is True count; the mean
    squared error is pooled over every frame before taking the log. Identical inputs give
    ``PSNR_CAP_DB`` (100 dB) instead of infinity, and any larger value is capped to it; an
    empty mask gives NaN.
    """
    x = _np(a).astype(np.float64)
    y = _np(b).astype(np.float64)
    if x.shape != y.shape:
        raise ValueError(f"psnr needs equal shapes, got {x.shape} and {y.shape}")
    sq = (x - y) ** 2
    if mask is not None:
        m = _np(mask).astype(bool)
        if sq.ndim == 2:
            sq = sq[..., None]
        h, w = sq.shape[-3], sq.shape[-2]
        sq = sq.reshape(-1, h, w, sq.shape[-1])
        if m.shape not in ((h, w), (len(sq), h, w)):
            raise ValueError(f"mask must have shape {(h, w)} or {(len(sq), h, w)}, got {m.shape}")
        if not m.any():
            return float("nan")
        sq = sq[:, m] if m.ndim == 2 else sq[m]
    mse = float(sq.mean())
    if mse == 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(SSIM_L**2 / mse))


def _gaussian_kernel(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """A normalised 1-D Gaussian of ``size`` taps (float64)."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter keeping only the 'valid' region (window fully inside)."""
    full = cv2.sepFilter2D(x, cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REFLECT)
    r = len(kernel) // 2
    return full[r:-r, r:-r]


def ssim(a: ArrayLike, b: ArrayLike) -> float:
    """Structural similarity (Wang et al. 2004) of two uint8 images (H, W, C) or (H, W).

    Gaussian window 11x11 with sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255. The SSIM map is
    computed per channel over the 'valid' region only (every window fully inside the image;
    no padding), averaged over the map and then over the channels. Identical images give
    exactly 1.0. Both sides must be at least 11 pixels.
    """
    x = _np(a).astype(np.float64)
    y = _np(b).astype(np.float64)
    if x.shape != y.shape:
        raise ValueError(f"ssim needs equal shapes, got {x.shape} and {y.shape}")
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    if x.ndim != 3 or min(x.shape[:2]) < SSIM_WINDOW:
        raise ValueError(
            f"ssim needs (H, W[, C]) images of at least {SSIM_WINDOW}px, got {x.shape}"
        )
    kernel = _gaussian_kernel()
    c1 = (SSIM_K1 * SSIM_L) ** 2
    c2 = (SSIM_K2 * SSIM_L) ** 2
    scores = []
    for ch in range(x.shape[2]):
        p = np.ascontiguousarray(x[..., ch])
        q = np.ascontiguousarray(y[..., ch])
        mu_p = _filter_valid(p, kernel)
        mu_q = _filter_valid(q, kernel)
        var_p = _filter_valid(p * p, kernel) - mu_p * mu_p
        var_q = _filter_valid(q * q, kernel) - mu_q * mu_q
        cov = _filter_valid(p * q, kernel) - mu_p * mu_q
        num = (2 * mu_p * mu_q + c1) * (2 * cov + c2)
        den = (mu_p * mu_p + mu_q * mu_q + c1) * (var_p + var_q + c2)
        scores.append(float((num / den).mean()))
    return float(np.mean(scores))


# --------------------------------------------------------------------------------------------
# Optical flow
# --------------------------------------------------------------------------------------------


def resolve_flow_method(
    method: str = "auto", raft_weights: str | os.PathLike[str] | None = None
) -> str:
    """``"farneback"`` or ``"raft"``: ``"auto"`` is RAFT only when ``raft_weights`` exists."""
    if method not in FLOW_METHODS:
        raise InputError("metrics.flow", method, f"must be one of {', '.join(FLOW_METHODS)}")
    if method == "auto":
        if raft_weights is not None and Path(raft_weights).is_file():
            return "raft"
        if raft_weights is not None:
            logger.warning("RAFT weights %s not found; using Farneback flow", raft_weights)
        return "farneback"
    if method == "raft":
        if raft_weights is None or not Path(raft_weights).is_file():
            raise InputError(
                "metrics.raft_weights",
                None if raft_weights is None else str(raft_weights),
                "file not found",
            )
    return method


def _farneback(frames: np.ndarray) -> np.ndarray:
    gray = [cv2.cvtColor(_to_uint8(f), cv2.COLOR_RGB2GRAY) for f in frames]
    p = FARNEBACK_PARAMS
    flows = [
        cv2.calcOpticalFlowFarneback(
            gray[t],
            gray[t + 1],
            None,
            p["pyr_scale"],
            p["levels"],
            p["winsize"],
            p["iterations"],
            p["poly_n"],
            p["poly_sigma"],
            p["flags"],
        )
        for t in range(len(gray) - 1)
    ]
    return np.stack(flows).astype(np.float32)


def _load_raft(path: Path) -> torch.nn.Module:
    """torchvision RAFT (large, else small) with the local state dict at ``path``."""
    from torchvision.models.optical_flow import raft_large, raft_small

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have no common base class
        raise InputError("metrics.raft_weights", str(path), f"cannot load: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError("metrics.raft_weights", str(path), "not a state dict")
    for build in (raft_large, raft_small):
        model = build(weights=None, progress=False)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError:
            continue
        logger.debug("loaded %s weights from %s", build.__name__, path)
        return model.eval()
    raise InputError(
        "metrics.raft_weights", str(path), "not a torchvision raft_large/raft_small state dict"
    )


@torch.no_grad()
def _raft(frames: np.ndarray, weights: Path, batch: int = 4) -> np.ndarray:
    model = _load_raft(weights)
    n, h, w, _ = frames.shape
    # RAFT needs sizes divisible by 8 and at least 128 (its correlation pyramid)
    pad_h, pad_w = max((-h) % 8, RAFT_MIN_SIZE - h), max((-w) % 8, RAFT_MIN_SIZE - w)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = x / 127.5 - 1.0  # RAFT expects [-1, 1]
    if pad_h or pad_w:
        x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    flows = []
    for start in range(0, n - 1, batch):
        stop = min(start + batch, n - 1)
        pred = model(x[start:stop], x[start + 1 : stop + 1])[-1]
        flows.append(pred[:, :, :h, :w].permute(0, 2, 3, 1).numpy())
    return np.concatenate(flows).astype(np.float32)


def optical_flow(
    frames: ArrayLike,
    method: str = "farneback",
    raft_weights: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Forward optical flow from frame t to t+1: float32 (N-1, H, W, 2) as (dx, dy) pixels.

    ``flow[t, y, x]`` is the displacement such that ``frames[t][y, x]`` appears at
    ``frames[t+1][y + dy, x + dx]``.

    * ``"farneback"``: ``cv2.calcOpticalFlowFarneback`` on grayscale frames with
      ``FARNEBACK_PARAMS`` (pyr_scale 0.5, levels 3, winsize 15, iterations 3, poly_n 5,
      poly_sigma 1.2).
    * ``"raft"``: torchvision ``raft_large`` or ``raft_small`` (whichever the state dict fits)
      with weights from the local ``raft_weights`` file, on the CPU, 12 refinement steps;
      frames are replicate-padded to multiples of 8 of at least ``RAFT_MIN_SIZE`` (128) and
      the flow cropped back. Nothing is
      downloaded; a missing file raises ``InputError("metrics.raft_weights", ...)``.
    * ``"auto"``: RAFT when ``raft_weights`` names an existing file, else Farneback.

    The flow between two identical frames is set to exactly zero.
    """
    arr = _frames(frames)
    if len(arr) < 2:
        return np.zeros((0, *arr.shape[1:3], 2), np.float32)
    resolved = resolve_flow_method(method, raft_weights)
    if resolved == "raft":
        flow = _raft(_to_uint8(arr), Path(raft_weights))  # type: ignore[arg-type]
    else:
        flow = _farneback(arr)
    # Both estimators return sub-pixel noise (up to ~0.1 px near borders) for a pair of
    # identical frames; their true motion is zero, so a static video scores exactly 0.
    for t in range(len(arr) - 1):
        if np.array_equal(arr[t], arr[t + 1]):
            flow[t] = 0.0
    return flow


def endpoint_error(flow_a: np.ndarray, flow_b: np.ndarray) -> float:
    """Mean Euclidean distance (pixels) between two flow fields of equal shape (..., 2)."""
    if flow_a.shape != flow_b.shape:
        raise ValueError(f"flows differ in shape: {flow_a.shape} and {flow_b.shape}")
    if flow_a.size == 0:
        return float("nan")
    diff = flow_a.astype(np.float64) - flow_b.astype(np.float64)
    return float(np.sqrt((diff**2).sum(-1)).mean())


def motion_epe(
    source_frames: ArrayLike,
    edited_frames: ArrayLike,
    method: str = "farneback",
    raft_weights: str | os.PathLike[str] | None = None,
) -> float:
    """Mean end-point error (pixels) between the source's flow and the edited video's flow.

    Both videos need the same frame count (at least 2). When their sizes differ the edited
    frames are first resized to the source's size (PIL bicubic). Lower is better: 0 means the
    edit moves exactly as the source does. NaN for single-frame videos.
    """
    src = _frames(source_frames, "source_frames")
    out = _frames(edited_frames, "edited_frames")
    if len(src) != len(out):
        raise ValueError(f"motion_epe needs equal frame counts, got {len(src)} and {len(out)}")
    out = resize_frames(out, *src.shape[1:3])
    return endpoint_error(
        optical_flow(src, method, raft_weights), optical_flow(out, method, raft_weights)
    )


def warp_back(next_frame: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Warp frame t+1 to frame t with the flow t -> t+1 (cv2.remap, bilinear).

    Returns the warped float32 image and a bool (H, W) mask of the pixels whose sampling
    position ``(x + dx, y + dy)`` lies inside the image.
    """
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x = gx + flow[..., 0].astype(np.float32)
    map_y = gy + flow[..., 1].astype(np.float32)
    warped = cv2.remap(
        np.ascontiguousarray(next_frame, dtype=np.float32),
        map_x,
        map_y,
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    return warped, inside


def warping_error_from_flow(frames: ArrayLike, flow: np.ndarray) -> float:
    """:func:`warping_error` with the forward flow (N-1, H, W, 2) already computed."""
    arr = _frames(frames)
    if len(arr) < 2:
        return float("nan")
    errors = []
    for t in range(len(arr) - 1):
        warped, inside = warp_back(arr[t + 1], flow[t])
        if not inside.any():
            continue
        diff = np.abs(warped.astype(np.float64) - arr[t].astype(np.float64)) / 255.0
        errors.append(float(diff[inside].mean()))
    return float(np.mean(errors)) if errors else float("nan")


def warping_error(
    frames: ArrayLike,
    method: str = "farneback",
    raft_weights: str | os.PathLike[str] | None = None,
) -> float:
    """Temporal consistency of one video (lower is better; 0..1 scale).

    For each consecutive pair, frame t+1 is warped back to frame t with the flow t -> t+1
    (:func:`optical_flow`, bilinear ``cv2.remap``); the error is the mean absolute RGB
    difference (over 255) on pixels whose warped position stays inside the image (no
    occlusion handling), averaged over the pairs. A static video gives 0; NaN for one frame.
    """
    arr = _frames(frames)
    return warping_error_from_flow(arr, optical_flow(arr, method, raft_weights))


# --------------------------------------------------------------------------------------------
# Edited region and its complement
# --------------------------------------------------------------------------------------------


def edit_mask(
    keyframe: ArrayLike, source_first: ArrayLike, threshold: float = 0.1, dilate: int = 5
) -> np.ndarray:
    """Where the edited first frame differs from the source's first frame: bool (H, W).

    A pixel is edited when the mean absolute RGB difference over 255 exceeds ``threshold``;
    the mask is then dilated with a ``dilate`` x ``dilate`` square (cv2.dilate; 0 or 1: none)
    to cover soft edges. The keyframe is resized to the source frame's size (PIL bicubic)
    when they differ. Output size: the source frame's.
    """
    src = _to_uint8(_np(source_first))
    key = resize_image(keyframe, *src.shape[:2])
    diff = np.abs(key.astype(np.float64) - src.astype(np.float64)).mean(-1) / 255.0
    mask = (diff > threshold).astype(np.uint8)
    if dilate > 1:
        mask = cv2.dilate(mask, np.ones((dilate, dilate), np.uint8))
    return mask.astype(bool)


def preservation_psnr(source_frames: ArrayLike, edited_frames: ArrayLike, mask: ArrayLike) -> float:
    """PSNR of the edited frames against the source over every frame, outside ``mask``.

    ``mask`` is bool (H, W) (or (N, H, W), per frame) with True marking the edited region,
    which is left out; the squared
    error is pooled over all frames. Equal frame counts and sizes are required. NaN when the
    mask covers the whole frame; 100 dB (the cap) when the rest is untouched.
    """
    src = _frames(source_frames, "source_frames")
    out = _frames(edited_frames, "edited_frames")
    return psnr(src, out, mask=~_np(mask).astype(bool))


def load_mask(path: str | os.PathLike[str], key: str = "--mask") -> np.ndarray:
    """Read a mask image as bool (H, W): any nonzero RGB value marks the edited region.

    A missing or unreadable file raises ``InputError(key, path, reason)``.
    """
    from i2vedit.data.video import load_image

    return load_image(path, key).numpy().any(-1)


# --------------------------------------------------------------------------------------------
# CLIP
# --------------------------------------------------------------------------------------------


def _load_clip(path: Path) -> tuple[Any, Any]:
    """A CLIP image encoder and its processor from a local folder (no downloads).

    A full ``CLIPModel`` folder and a vision-only ``CLIPVisionModelWithProjection`` folder
    (such as SVD's ``image_encoder``) both work. The processor comes from the folder, else
    from a sibling ``feature_extractor`` folder, else CLIP's defaults at the model's size.
    """
    from transformers import CLIPImageProcessor, CLIPModel, CLIPVisionModelWithProjection

    config_file = path / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError("metrics.clip_path", str(path), f"cannot read config.json: {exc}") from exc
    try:
        if model_type == "clip":
            model = CLIPModel.from_pretrained(path, local_files_only=True)
            size = model.config.vision_config.image_size
        else:
            model = CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True)
            size = model.config.image_size
    except (OSError, ValueError) as exc:
        raise InputError("metrics.clip_path", str(path), f"cannot load CLIP: {exc}") from exc
    processor = None
    for folder in (path, path.parent / "feature_extractor"):
        if (folder / "preprocessor_config.json").is_file():
            processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
            break
    if processor is None:
        logger.warning("%s has no preprocessor_config.json; using CLIP's defaults", path)
        processor = CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        )
    return model.float().eval(), processor


@torch.no_grad()
def _clip_embed(model: Any, processor: Any, images: np.ndarray, batch: int = 16) -> torch.Tensor:
    """Unit-norm CLIP image embeddings (N, D) of uint8 (N, H, W, 3) images."""
    from transformers import CLIPModel

    out = []
    for start in range(0, len(images), batch):
        chunk = [Image.fromarray(f) for f in images[start : start + batch]]
        pixels = processor(images=chunk, return_tensors="pt")["pixel_values"].float()
        if isinstance(model, CLIPModel):
            pooled = model.vision_model(pixel_values=pixels).pooler_output
            emb = model.visual_projection(pooled)
        else:
            emb = model(pixel_values=pixels).image_embeds
        out.append(torch.nn.functional.normalize(emb.double(), dim=-1))
    return torch.cat(out)


def clip_scores(
    frames: ArrayLike, keyframe: ArrayLike, clip_path: str | os.PathLike[str]
) -> dict[str, float]:
    """CLIP image-embedding agreement, from a local CLIP folder (``local_files_only``).

    Returns ``clip_keyframe_similarity`` (mean over frames of the cosine to the keyframe) and
    ``clip_temporal_consistency`` (mean cosine between consecutive frames; NaN for one frame),
    each on CLIPScore's scale ``100 * max(cos, 0)`` (0..100, higher is better). A missing
    folder raises ``InputError("metrics.clip_path", path, "not found")``.
    """
    folder = Path(clip_path)
    if not folder.is_dir():
        raise InputError("metrics.clip_path", str(clip_path), "not found")
    arr = _to_uint8(_frames(frames))
    key = _to_uint8(_np(keyframe))
    model, processor = _load_clip(folder)
    emb = _clip_embed(model, processor, arr)
    key_emb = _clip_embed(model, processor, key[None])[0]

    def score(cos: torch.Tensor) -> float:
        return float((100.0 * cos.clamp(min=0)).mean()) if cos.numel() else float("nan")

    return {
        "clip_keyframe_similarity": score(emb @ key_emb),
        "clip_temporal_consistency": score((emb[:-1] * emb[1:]).sum(-1)),
    }


# --------------------------------------------------------------------------------------------
# All together
# --------------------------------------------------------------------------------------------


def evaluate(
    edited: ArrayLike,
    source: ArrayLike | None = None,
    keyframe: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    clip_path: str | os.PathLike[str] | None = None,
    flow: str = "auto",
    raft_weights: str | os.PathLike[str] | None = None,
    mask_threshold: float = 0.1,
) -> dict[str, Any]:
    """Every metric the inputs allow, as a flat dict (floats, plus a few labels).

    * always: ``frames`` (count evaluated), ``flow_method`` ("farneback" or "raft"),
      ``warping_error`` (edited video);
    * with ``keyframe``: ``first_frame_psnr``, ``first_frame_ssim`` (edited frame 0 against
      the keyframe, resized to the video's size with PIL bicubic when it differs);
    * with ``source``: ``motion_epe``; plus, with ``mask`` or a ``keyframe`` to derive one
      (:func:`edit_mask` against the source's first frame), ``preservation_psnr`` and
      ``mask_source`` ("given" or "derived");
    * with ``clip_path``: ``clip_keyframe_similarity``, ``clip_temporal_consistency`` (the
      keyframe, else the edited first frame, is the reference).

    Comparisons with the source are made at the source's size: edited frames are resized to it
    (PIL bicubic) and a given mask too (nearest). When the source and edited videos differ in
    length, only the first ``min(N)`` frames of each are used (a warning is logged).
    """
    out = _to_uint8(_frames(edited, "edited"))
    src = None if source is None else _to_uint8(_frames(source, "source"))
    if src is not None and len(src) != len(out):
        n = min(len(src), len(out))
        logger.warning(
            "source has %d frames and edited %d; comparing the first %d", len(src), len(out), n
        )
        src, out = src[:n], out[:n]
    method = resolve_flow_method(flow, raft_weights)
    result: dict[str, Any] = {"frames": len(out), "flow_method": method}

    out_flow = optical_flow(out, method, raft_weights)
    h, w = out.shape[1:3]
    key = None
    if keyframe is not None:
        key = resize_image(keyframe, h, w)
        result["first_frame_psnr"] = psnr(out[0], key)
        result["first_frame_ssim"] = ssim(out[0], key)
    if src is not None:
        sh, sw = src.shape[1:3]
        out_at_src = resize_frames(out, sh, sw)
        flow_at_src = (
            out_flow if (sh, sw) == (h, w) else optical_flow(out_at_src, method, raft_weights)
        )
        result["motion_epe"] = endpoint_error(optical_flow(src, method, raft_weights), flow_at_src)
    result["warping_error"] = warping_error_from_flow(out, out_flow)
    if src is not None and (mask is not None or keyframe is not None):
        sh, sw = src.shape[1:3]
        if mask is not None:
            region = resize_mask(_np(mask).astype(bool), sh, sw)
            region = region[: len(src)] if region.ndim == 3 else region  # one per frame
            result["mask_source"] = "given"
        else:
            region = edit_mask(keyframe, src[0], mask_threshold)  # type: ignore[arg-type]
            result["mask_source"] = "derived"
        result["preservation_psnr"] = preservation_psnr(src, out_at_src, region)
    if clip_path is not None:
        result.update(clip_scores(out, key if key is not None else out[0], clip_path))
    return result
