"""A deterministic procedural video world with exact ground truth for first-frame edits.

Every case is one seeded scene description rendered twice: as the source video and as the
edited video, where the only difference is the edit (a sprite's colour or shape, the background,
or the stick figure's shirt). The edited video keeps the source's motion exactly, so it is the
ground truth for first-frame-guided editing: its frame 0 is the edited first frame.

Scenes are a static background (plain, two-tone, gradient, stripes, checker or smooth noise)
with antialiased sprites (circle, square, triangle, diamond, ring, cross) moving along lines,
arcs, sine paths or bouncing off the borders, and/or an articulated stick figure dancing.
Everything is rendered with 4x4 supersampling and premultiplied "over" compositing in float64,
so pixels an edit does not reach are bit-identical between source and truth.

Coordinates: pixel ``(row i, column j)`` covers ``[j, j+1] x [i, i+1]`` in continuous (x, y)
coordinates. Centroids (:class:`ToyCase` and :func:`sprite_centroid`) are in pixel-index units:
the mean column ``x`` and row ``y`` of the object's pixels.
"""

from __future__ import annotations

import colorsys
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from i2vedit.files import atomic_path
from i2vedit.toy.cases import KINDS

logger = logging.getLogger(__name__)

SIZE = (64, 64)  # (height, width)
FRAMES = 8

SHAPES = ("circle", "square", "triangle", "diamond", "ring", "cross")
MOTIONS = ("linear", "arc", "sine", "bounce")
BACKGROUNDS = ("plain", "split", "gradient", "stripes", "checker", "noise")
TEXTURES = ("flat", "stripes", "outline")

HELD_OUT_FIRST_SEED = 1_000_000

Color = tuple[int, int, int]

_SS = 4  # supersampling factor per axis
_REF = 64.0  # the resolution all lengths below are given at
_DARK = 0.55  # a textured sprite's second colour: its colour times this
_SEP = 64.0  # max-abs distance between colours that must stay apart (incl. their blends)
_BACKDROP_SEP = 110.0  # an edited object's colours vs the background (and its blends)
_EDIT_SEP = 120.0  # max-abs distance between a colour and its edit
_EDIT_HUE_SEP = 0.12  # circular hue distance (0..0.5) between a colour and its edit
_OUTLINE_MAX = {"cross": 0.08, "ring": 0.05}  # outline width cap, in sizes (default 0.15)
_MIN_VISIBLE = 0.5  # least visible fraction of a watched object in every frame
_MARGIN = 0.7  # sprites' centres stay this many sizes (+1 px) from the borders
_ATTEMPTS = 40  # scene re-draws before accepting one that misses a soft constraint
_KIND_SALT = {kind: i + 1 for i, kind in enumerate(KINDS)}
_TRAIN_SALT = 99


# --------------------------------------------------------------------------------------------
# Public result type
# --------------------------------------------------------------------------------------------


@dataclass
class ToyCase:
    """One edit case: the source video, the edited first frame and the exact edited video."""

    name: str  # e.g. "recolor-10003"
    kind: str
    seed: int
    source: np.ndarray  # uint8 (F, H, W, 3)
    edited_first: np.ndarray  # uint8 (H, W, 3) == truth[0]
    truth: np.ndarray  # uint8 (F, H, W, 3), the exact edited video
    # bool (F, H, W): every pixel the edited object (restyle: the background) shows in, in
    # truth, antialiased and partly occluded edges included
    target_mask: np.ndarray
    # float (F, 2) (x, y): coverage-weighted centroid of the edited object's visible part in
    # truth (restyle: of the first, back-most sprite), in pixel-index units
    centroids: np.ndarray
    edit_color: Color | None  # the new colour (recolor, dance); None otherwise
    # bool (F, H, W): the edited object's pixels in the source (restyle: the background's);
    # equals target_mask except for reshape, where the source shape differs.
    source_mask: np.ndarray | None = None


# --------------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Background:
    """A static background: colour ``c1 + t * (c2 - c1)`` for a style-dependent field t."""

    style: str
    c1: Color
    c2: Color
    angle: float = 0.0  # radians: split / gradient / stripes orientation
    offset: float = 0.5  # split position (fraction) or pattern phase
    period: float = 12.0  # stripes period or checker cell pair, px at 64x64
    grid: tuple[tuple[float, ...], ...] | None = None  # noise: small grid of t values


@dataclass
class Sprite:
    """A flat (optionally textured) shape following ``path`` (centre (x, y) per frame)."""

    shape: str
    size: float  # px
    color: Color
    path: np.ndarray  # float (F, 2)
    motion: str = "linear"
    texture: str = "flat"
    tex_angle: float = 0.0
    tex_period: float = 4.0
    tex_phase: float = 0.0
    outline: float = 1.5


@dataclass
class Figure:
    """An articulated stick figure: capsules per frame with a colour slot each.

    Slots: 0 skin (head, forearms), 1 shirt (torso, upper arms), 2 trousers (legs);
    a lower slot is drawn in front of a higher one.
    """

    skin: Color
    shirt: Color
    trousers: Color
    segments: np.ndarray  # float (F, P, 2, 2): endpoints (x, y) of each capsule
    radii: np.ndarray  # float (P,)
    slots: np.ndarray  # int (P,)


@dataclass
class Scene:
    """A background and its layers, back to front."""

    background: Background
    layers: list[Sprite | Figure] = field(default_factory=list)


@dataclass
class _Render:
    frames: np.ndarray  # uint8 (F, H, W, 3)
    visible: list[np.ndarray]  # per layer: float (F, H, W, K) visible weight of each colour slot
    weights: list[np.ndarray]  # per layer: float (F, H, W, K) the same before occlusion
    background: np.ndarray  # float (F, H, W) visible weight of the background


# --------------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> Color:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def _hue(c: Sequence[float]) -> float:
    return colorsys.rgb_to_hsv(*(float(x) / 255 for x in c))[0]


def _hue_dist(a: Sequence[float], b: Sequence[float]) -> float:
    d = abs(_hue(a) - _hue(b)) % 1.0
    return min(d, 1.0 - d)


def _maxabs(a: Sequence[float], b: Sequence[float]) -> float:
    return float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float))))


def _blend_dist(c: Sequence[float], points: Sequence[Sequence[float]]) -> float:
    """Max-abs distance from ``c`` to every colour and every blend of two of ``points``."""
    if len(points) == 0:
        return math.inf
    p = np.asarray(points, float)
    t = np.linspace(0.0, 1.0, 33)[None, None, :, None]
    mix = p[:, None, None, :] + t * (p[None, :, None, :] - p[:, None, None, :])
    return float(np.abs(mix - np.asarray(c, float)).max(-1).min())


def _vivid(rng: np.random.Generator) -> Color:
    return _hsv(rng.uniform(0, 1), rng.uniform(0.65, 1.0), rng.uniform(0.6, 1.0))


def _pick_color(
    rng: np.random.Generator,
    blends: Sequence[Sequence[float]] = (),
    points: Sequence[Sequence[float]] = (),
    unlike: Color | None = None,
    sep: float = _SEP,
    backdrop: Sequence[Sequence[float]] = (),
) -> Color:
    """A vivid colour away from all ``blends`` (colours and their mixes) and ``points``.

    With ``unlike`` it is also clearly different (value and hue) from that colour; with
    ``backdrop`` (background colours) it is at least ``_BACKDROP_SEP`` from those and their
    mixes. Falls back to the best candidate seen when no draw satisfies everything.
    """
    best, best_score = None, -math.inf
    for _ in range(300):
        c = _vivid(rng)
        score = min(
            _blend_dist(c, blends) - sep, min((_maxabs(c, q) for q in points), default=1e9) - sep
        )
        if backdrop:
            score = min(score, _blend_dist(c, backdrop) - _BACKDROP_SEP)
        if unlike is not None:
            score = min(
                score, _maxabs(c, unlike) - _EDIT_SEP, 400 * (_hue_dist(c, unlike) - _EDIT_HUE_SEP)
            )
        if score >= 0:
            return c
        if score > best_score:
            best, best_score = c, score
    logger.debug("no colour met every separation; using the best (margin %.1f)", best_score)
    assert best is not None
    return best


def _dark(c: Sequence[float]) -> tuple[float, float, float]:
    return (c[0] * _DARK, c[1] * _DARK, c[2] * _DARK)


def _layer_colors(layer: Sprite | Figure) -> list[Sequence[float]]:
    """Every colour a layer shows."""
    if isinstance(layer, Figure):
        return [layer.skin, layer.shirt, layer.trousers]
    if layer.texture == "flat":
        return [layer.color]
    return [layer.color, _dark(layer.color)]


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _pool(a: np.ndarray) -> np.ndarray:
    """Box-downsample the last two axes by ``_SS`` (supersampled mask/values to pixels)."""
    h, w = a.shape[-2] // _SS, a.shape[-1] // _SS
    return a.reshape(*a.shape[:-2], h, _SS, w, _SS).mean(axis=(-3, -1))


def _subsamples(x0: int, x1: int, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
    """Continuous (X, Y) grids of the subsample centres of pixels [y0:y1, x0:x1]."""
    xs = x0 + (np.arange((x1 - x0) * _SS) + 0.5) / _SS
    ys = y0 + (np.arange((y1 - y0) * _SS) + 0.5) / _SS
    return np.meshgrid(xs, ys)


def _background_image(bg: Background, size: tuple[int, int]) -> np.ndarray:
    """float (H, W, 3)."""
    h, w = size
    scale = min(h, w) / _REF
    x, y = _subsamples(0, w, 0, h)
    if bg.style == "plain":
        t = np.zeros((h, w))
    elif bg.style == "split":
        u = x / w if math.cos(bg.angle) ** 2 > 0.5 else y / h
        t = _pool((u > bg.offset).astype(float))
    elif bg.style == "gradient":
        c, s = math.cos(bg.angle), math.sin(bg.angle)
        proj = (x - w / 2) * c + (y - h / 2) * s
        half = (abs(c) * w + abs(s) * h) / 2
        t = _pool((proj + half) / (2 * half))
    elif bg.style == "stripes":
        proj = x * math.cos(bg.angle) + y * math.sin(bg.angle)
        t = _pool(np.floor(2 * proj / (bg.period * scale) + bg.offset) % 2)
    elif bg.style == "checker":
        cell = bg.period * scale / 2
        t = _pool((np.floor(x / cell + bg.offset) + np.floor(y / cell + bg.offset)) % 2)
    elif bg.style == "noise":
        assert bg.grid is not None
        g = np.asarray(bg.grid, float)
        n = g.shape[0]
        gx = np.clip((np.arange(w) + 0.5) / w * (n - 1), 0, n - 1)
        gy = np.clip((np.arange(h) + 0.5) / h * (n - 1), 0, n - 1)
        rows = np.stack([np.interp(gx, np.arange(n), g[i]) for i in range(n)])  # (n, w)
        t = np.stack([np.interp(gy, np.arange(n), rows[:, j]) for j in range(w)], axis=1)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    else:
        raise ValueError(f"unknown background style {bg.style!r}")
    c1, c2 = np.asarray(bg.c1, float), np.asarray(bg.c2, float)
    return c1 + t[..., None] * (c2 - c1)


def _box(x: np.ndarray, y: np.ndarray, bx: float, by: float) -> np.ndarray:
    qx, qy = np.abs(x) - bx, np.abs(y) - by
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _shape_sdf(shape: str, x: np.ndarray, y: np.ndarray, s: float) -> np.ndarray:
    """Signed distance (negative inside; exact inside) of a shape of size ``s`` at the origin.

    Every shape has its area centroid at the origin, so a reshape keeps the centre.
    """
    if shape == "circle":
        return np.hypot(x, y) - s / 2
    if shape == "ring":
        return np.abs(np.hypot(x, y) - 0.375 * s) - 0.125 * s
    if shape == "square":
        return _box(x, y, 0.44 * s, 0.44 * s)
    if shape == "diamond":
        return (np.abs(x) + np.abs(y) - 0.6 * s) / math.sqrt(2)
    if shape == "cross":
        return np.minimum(_box(x, y, 0.5 * s, 0.18 * s), _box(x, y, 0.18 * s, 0.5 * s))
    if shape == "triangle":
        side = 1.15 * s
        h = side * math.sqrt(3) / 2
        n = math.hypot(h, side / 2)
        apex_y = -2 * h / 3
        right = (h * x - side / 2 * (y - apex_y)) / n
        left = (-h * x - side / 2 * (y - apex_y)) / n
        return np.maximum(np.maximum(right, left), y - h / 3)
    raise ValueError(f"unknown shape {shape!r}")


def _bbox(
    xmin: float, xmax: float, ymin: float, ymax: float, size: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    h, w = size
    x0, x1 = max(0, math.floor(xmin)), min(w, math.ceil(xmax))
    y0, y1 = max(0, math.floor(ymin)), min(h, math.ceil(ymax))
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, x1, y0, y1


def _sprite_weights(sp: Sprite, size: tuple[int, int]) -> np.ndarray:
    """float (F, H, W, 2): coverage of the sprite's main and dark colour per pixel."""
    n = len(sp.path)
    out = np.zeros((n, *size, 2))
    ext = 0.7 * sp.size + 1
    ca, sa = math.cos(sp.tex_angle), math.sin(sp.tex_angle)
    for f, (cx, cy) in enumerate(sp.path):
        box = _bbox(cx - ext, cx + ext, cy - ext, cy + ext, size)
        if box is None:
            continue
        x0, x1, y0, y1 = box
        gx, gy = _subsamples(x0, x1, y0, y1)
        lx, ly = gx - cx, gy - cy
        d = _shape_sdf(sp.shape, lx, ly, sp.size)
        inside = d < 0
        if sp.texture == "stripes":
            dark = np.floor(2 * (lx * ca + ly * sa) / sp.tex_period + sp.tex_phase) % 2 == 1
        elif sp.texture == "outline":  # thin enough to leave the main colour showing
            dark = d > -min(sp.outline, _OUTLINE_MAX.get(sp.shape, 0.15) * sp.size)
        else:
            dark = np.zeros_like(inside)
        out[f, y0:y1, x0:x1, 0] = _pool((inside & ~dark).astype(float))
        out[f, y0:y1, x0:x1, 1] = _pool((inside & dark).astype(float))
    return out


def _capsule(x: np.ndarray, y: np.ndarray, seg: np.ndarray, r: float) -> np.ndarray:
    (ax, ay), (bx, by) = seg
    dx, dy = bx - ax, by - ay
    ll = dx * dx + dy * dy
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / ll, 0, 1) if ll > 0 else 0.0
    return np.hypot(x - ax - t * dx, y - ay - t * dy) - r


def _figure_weights(fig: Figure, size: tuple[int, int]) -> np.ndarray:
    """float (F, H, W, 3): coverage of skin, shirt and trousers per pixel."""
    n = fig.segments.shape[0]
    out = np.zeros((n, *size, 3))
    pad = float(fig.radii.max()) + 1
    for f in range(n):
        pts = fig.segments[f].reshape(-1, 2)
        box = _bbox(
            pts[:, 0].min() - pad, pts[:, 0].max() + pad, pts[:, 1].min() - pad,
            pts[:, 1].max() + pad, size,
        )  # fmt: skip
        if box is None:
            continue
        x0, x1, y0, y1 = box
        gx, gy = _subsamples(x0, x1, y0, y1)
        inside = [np.zeros(gx.shape, bool) for _ in range(3)]
        for seg, r, slot in zip(fig.segments[f], fig.radii, fig.slots, strict=True):
            inside[slot] |= _capsule(gx, gy, seg, r) < 0
        taken = np.zeros(gx.shape, bool)
        for slot in range(3):  # skin in front of shirt in front of trousers
            own = inside[slot] & ~taken
            taken |= own
            out[f, y0:y1, x0:x1, slot] = _pool(own.astype(float))
    return out


def _geometry(layer: Sprite | Figure, size: tuple[int, int], cache: dict) -> np.ndarray:
    """Colour-independent slot coverage of a layer, memoised in ``cache``."""
    if isinstance(layer, Figure):
        key = ("figure", layer.segments.tobytes(), layer.radii.tobytes(), layer.slots.tobytes())
    else:
        key = (
            "sprite", layer.shape, layer.size, layer.path.tobytes(), layer.texture,
            layer.tex_angle, layer.tex_period, layer.tex_phase, layer.outline,
        )  # fmt: skip
    if key not in cache:
        if isinstance(layer, Figure):
            cache[key] = _figure_weights(layer, size)
        else:
            cache[key] = _sprite_weights(layer, size)
    return cache[key]


def _render(scene: Scene, frames: int, size: tuple[int, int], cache: dict | None = None) -> _Render:
    """Composite a scene back to front ("over", premultiplied, float64) into uint8 frames."""
    cache = {} if cache is None else cache
    h, w = size
    out = np.broadcast_to(_background_image(scene.background, size), (frames, h, w, 3)).copy()
    slot_weights, alphas = [], []
    for layer in scene.layers:
        wts = _geometry(layer, size, cache)
        colors = np.asarray(_layer_colors(layer) + [(0, 0, 0)] * 3, float)[: wts.shape[-1]]
        alpha = wts.sum(-1)
        out = wts @ colors + (1.0 - alpha)[..., None] * out
        slot_weights.append(wts)
        alphas.append(alpha)
    trans = np.ones((frames, h, w))
    visible: list[np.ndarray] = [np.empty(0)] * len(alphas)
    for k in range(len(alphas) - 1, -1, -1):  # front to back: light left for each layer
        visible[k] = slot_weights[k] * trans[..., None]
        trans = trans * (1.0 - alphas[k])
    frames_u8 = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return _Render(frames_u8, visible, slot_weights, trans)


# --------------------------------------------------------------------------------------------
# Random scene parts
# --------------------------------------------------------------------------------------------


def _scale(size: tuple[int, int]) -> float:
    return min(size) / _REF


def _random_background(
    rng: np.random.Generator, size: tuple[int, int], style: str | None = None
) -> Background:
    style = style or str(rng.choice(BACKGROUNDS))
    c1 = _hsv(rng.uniform(0, 1), rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0))
    c2 = c1
    if style != "plain":
        for _ in range(100):
            c2 = _hsv(rng.uniform(0, 1), rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0))
            if _maxabs(c1, c2) >= 90:
                break
    angle = float(rng.uniform(0, 2 * math.pi))
    if style in ("split", "stripes"):
        angle = float(
            rng.choice([0.0, math.pi / 2] + ([math.pi / 4, 3 * math.pi / 4] * (style == "stripes")))
        )
    grid = None
    if style == "noise":
        n = int(rng.integers(3, 7))
        grid = tuple(tuple(float(v) for v in row) for row in rng.uniform(0, 1, (n, n)))
    return Background(
        style=style,
        c1=c1,
        c2=c2,
        angle=angle,
        offset=float(rng.uniform(0.3, 0.7)) if style == "split" else float(rng.uniform(0, 2)),
        period=float(rng.uniform(8, 16)),
        grid=grid,
    )


def _bg_colors(bg: Background) -> list[Color]:
    return [bg.c1] if bg.c1 == bg.c2 else [bg.c1, bg.c2]


def _fold(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Reflect positions into [lo, hi] (a bounce off both ends)."""
    span = hi - lo
    y = np.mod(x - lo, 2 * span)
    return lo + np.where(y > span, 2 * span - y, y)


def _sprite_path(
    rng: np.random.Generator, motion: str, frames: int, size: tuple[int, int], sprite_size: float
) -> np.ndarray:
    """float (F, 2): centre (x, y) per frame, kept ``_MARGIN`` sizes inside the frame."""
    h, w = size
    scale = _scale(size)
    margin = _MARGIN * sprite_size + 1
    lo, hi = np.array([margin, margin]), np.array([w - margin, h - margin])
    t = np.arange(frames, dtype=float)[:, None]
    ang = rng.uniform(0, 2 * math.pi)
    d = np.array([math.cos(ang), math.sin(ang)])
    if motion == "bounce":
        v = rng.uniform(1.0, 3.0) * scale * d
        p0 = rng.uniform(lo, hi)
        axis = int(np.argmax(np.abs(v)))  # start near the border it heads for, so it bounces
        reach = abs(v[axis]) * (frames - 1) * rng.uniform(0.1, 0.35)
        p0[axis] = hi[axis] - reach if v[axis] > 0 else lo[axis] + reach
        return _fold(np.clip(p0, lo, hi) + v * t, lo, hi)
    if motion == "linear":
        off = rng.uniform(0.5, 3.0) * scale * d * t
    elif motion == "arc":
        speed = rng.uniform(0.5, 3.0) * scale
        radius = rng.uniform(8, 18) * scale
        omega = speed / radius * rng.choice([-1.0, 1.0])
        th = ang + omega * t[:, 0]
        off = radius * np.stack([np.cos(th) - math.cos(ang), np.sin(th) - math.sin(ang)], 1)
    elif motion == "sine":
        kappa = rng.uniform(0.5, 1.2)
        amp = min(rng.uniform(1.5, 4.0), 1.8 / kappa) * scale
        phase = rng.uniform(0, 2 * math.pi)
        nrm = np.array([-d[1], d[0]])
        wave = amp * (np.sin(kappa * t + phase) - math.sin(phase))
        off = rng.uniform(0.5, 2.2) * scale * d * t + wave * nrm
    else:
        raise ValueError(f"unknown motion {motion!r}")
    low, high = lo - off.min(0), hi - off.max(0)
    if np.all(low <= high):
        return rng.uniform(low, high) + off
    return _fold(rng.uniform(lo, hi) + off, lo, hi)  # too long a clip for the frame: bounce


def _random_sprite(
    rng: np.random.Generator,
    frames: int,
    size: tuple[int, int],
    color: Color,
    shape: str | None = None,
    textured: bool = True,
) -> Sprite:
    sprite_size = rng.uniform(12, 24) * _scale(size)
    shape = shape or str(rng.choice(SHAPES))
    motion = str(rng.choice(MOTIONS))
    texture = str(rng.choice(TEXTURES, p=[0.5, 0.25, 0.25])) if textured else "flat"
    if texture == "outline" and shape == "ring":
        texture = "stripes"
    return Sprite(
        shape=shape,
        size=float(sprite_size),
        color=color,
        path=_sprite_path(rng, motion, frames, size, sprite_size),
        motion=motion,
        texture=texture,
        tex_angle=float(rng.choice([0, 1, 2, 3])) * math.pi / 4,
        tex_period=float(rng.uniform(4, 7)) * _scale(size),
        tex_phase=float(rng.uniform(0, 2)),
        outline=float(rng.uniform(1.2, 2.0)) * _scale(size),
    )


def _limb_dir(down: np.ndarray, right: np.ndarray, side: float, theta: float) -> np.ndarray:
    """Unit direction ``theta`` from straight down, turning outward on ``side`` (-1 or 1)."""
    return down * math.cos(theta) + side * right * math.sin(theta)


def _random_figure(
    rng: np.random.Generator,
    frames: int,
    size: tuple[int, int],
    skin: Color,
    shirt: Color,
    trousers: Color,
) -> Figure:
    """A dancing stick figure: joint angles are sinusoids with seeded amplitudes and phases."""
    h, w = size
    u = _scale(size)
    deg = math.pi / 180
    period = rng.uniform(5, 10)
    omega = 2 * math.pi / period
    t = np.arange(frames, dtype=float)

    def wave(base: tuple[float, float], amp: tuple[float, float]) -> np.ndarray:
        b, a = rng.uniform(*base) * deg, rng.uniform(*amp) * deg
        return b + a * np.sin(omega * t + rng.uniform(0, 2 * math.pi))

    lean = wave((-3, 3), (3, 12))
    shoulder = [wave((20, 60), (25, 55)) for _ in range(2)]
    elbow = [wave((0, 50), (15, 45)) for _ in range(2)]
    thigh = [wave((5, 20), (5, 20)) for _ in range(2)]
    knee = [wave((10, 25), (5, 20)) for _ in range(2)]
    bob = (
        rng.uniform(0.5, 2.0) * u * 0.5 * (1 - np.cos(2 * omega * t + rng.uniform(0, 2 * math.pi)))
    )
    drift = rng.uniform(-0.6, 0.6) * u
    lo, hi = 20 * u, w - 20 * u
    xs = np.array([lo, hi]) - np.array([min(0, drift), max(0, drift)]) * (frames - 1)
    x0 = rng.uniform(xs[0], xs[1]) if xs[0] <= xs[1] else rng.uniform(lo, hi)
    hip_x = _fold(x0 + drift * t, np.array(lo), np.array(hi))
    hip_y = rng.uniform(37, 40) * (h / _REF) - bob

    torso, neck, head_r, shoulder_w, hip_w = 13 * u, 1.0 * u, 4.5 * u, 1.5 * u, 1.5 * u
    upper_arm, forearm, upper_leg, lower_leg = 7 * u, 7 * u, 9 * u, 9 * u
    radii = np.array([head_r, 2.5, 1.6, 1.6, 1.3, 1.3, 1.8, 1.8, 1.5, 1.5]) * np.array(
        [1] + [u] * 9
    )
    slots = np.array([0, 1, 1, 1, 0, 0, 2, 2, 2, 2])
    segs = np.zeros((frames, len(radii), 2, 2))
    for f in range(frames):
        up = np.array([math.sin(lean[f]), -math.cos(lean[f])])
        down, right = -up, np.array([-up[1], up[0]])
        hip = np.array([hip_x[f], hip_y[f]])
        top = hip + torso * up
        head = hip + (torso + neck + head_r) * up
        parts = [(head, head), (hip, top)]
        arms, legs = [], []
        for i, side in enumerate((-1.0, 1.0)):
            sh = top + side * shoulder_w * right
            el = sh + upper_arm * _limb_dir(down, right, side, shoulder[i][f])
            hand = el + forearm * _limb_dir(down, right, side, shoulder[i][f] + elbow[i][f])
            arms.append(((sh, el), (el, hand)))
            hp = hip + side * hip_w * right
            kn = hp + upper_leg * _limb_dir(down, right, side, thigh[i][f])
            foot = kn + lower_leg * _limb_dir(down, right, side, thigh[i][f] - knee[i][f])
            legs.append(((hp, kn), (kn, foot)))
        parts += [arms[0][0], arms[1][0], arms[0][1], arms[1][1]]
        parts += [legs[0][0], legs[1][0], legs[0][1], legs[1][1]]
        segs[f] = np.array(parts)
    return Figure(skin, shirt, trousers, segs, radii, slots)


def _figure_colors(
    rng: np.random.Generator, bg: Background, avoid: Sequence[Sequence[float]] = ()
) -> tuple[Color, Color, Color]:
    """Skin, shirt and trousers, each away from the background and one another's blends."""
    base = list(_bg_colors(bg)) + list(avoid)
    skin = _pick_color(rng, blends=base)
    trousers = _pick_color(rng, blends=base, points=[skin])
    shirt = _pick_color(rng, blends=base + [skin, trousers])
    return skin, shirt, trousers


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


def _rng(seed: int, salt: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([int(seed), salt])


def _check_shape(frames: int, size: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    frames = int(frames)
    h, w = (int(v) for v in size)
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    if min(h, w) < 32:
        raise ValueError(f"size must be at least 32x32, got {h}x{w}")
    return frames, (h, w)


def _visible_fraction(r: _Render, k: int, slot: int | None = None) -> np.ndarray:
    """float (F,): the share of layer k (or one of its slots) left visible by layers above."""
    vis, own = r.visible[k], r.weights[k]
    if slot is not None:
        vis, own = vis[..., slot : slot + 1], own[..., slot : slot + 1]
    total = own.sum((1, 2, 3))
    return np.where(total > 0, vis.sum((1, 2, 3)) / np.maximum(total, 1e-12), 0.0)


def _weighted_centroid(weight: np.ndarray) -> np.ndarray:
    """float (F, 2): (x, y) in pixel-index units; NaN where the weight is all zero."""
    f, h, w = weight.shape
    total = weight.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (weight.sum(1) * np.arange(w)).sum(1) / total
        cy = (weight.sum(2) * np.arange(h)).sum(1) / total
    out = np.stack([cx, cy], 1)
    out[total <= 0] = np.nan
    return out


def _sprites_scene(
    rng: np.random.Generator,
    frames: int,
    size: tuple[int, int],
    bg: Background,
    n: int,
    target: int | None,
    extra_bgs: Sequence[Background] = (),
) -> tuple[Scene, Color | None]:
    """Sprites on ``bg``; the target (if any) is flat and gets an edit colour returned."""
    bg_cols = [c for b in (bg, *extra_bgs) for c in _bg_colors(b)]
    sprites: dict[int, Sprite] = {}
    for i in range(n):
        if i != target:
            color = _pick_color(rng, blends=bg_cols, points=[s.color for s in sprites.values()])
            sprites[i] = _random_sprite(rng, frames, size, color)
    edit = None
    if target is not None:
        others = list(bg_cols) + [c for s in sprites.values() for c in _layer_colors(s)]
        color = _pick_color(rng, blends=others, backdrop=bg_cols)
        edit = _pick_color(rng, blends=others, unlike=color, backdrop=bg_cols)
        sprites[target] = _random_sprite(rng, frames, size, color, textured=False)
    layers: list[Sprite | Figure] = [sprites[i] for i in range(n)]
    return Scene(bg, layers), edit


def _case_scenes(
    kind: str, rng: np.random.Generator, frames: int, size: tuple[int, int]
) -> tuple[Scene, Scene, int, int | None, Color | None]:
    """(source, truth, watched layer, watched slot, edit colour) for one draw."""
    if kind in ("recolor", "reshape"):
        bg = _random_background(rng, size)
        n = int(rng.integers(1, 4))
        target = int(rng.integers(0, n))
        if kind == "recolor":
            source, edit = _sprites_scene(rng, frames, size, bg, n, target)
            old = source.layers[target]
            assert isinstance(old, Sprite) and edit is not None
            layers = list(source.layers)
            layers[target] = replace(old, color=edit)
            return source, Scene(bg, layers), target, None, edit
        source, _ = _sprites_scene(rng, frames, size, bg, n, None)
        old = source.layers[target]
        assert isinstance(old, Sprite)
        new_shape = str(rng.choice([s for s in SHAPES if s != old.shape]))
        new = replace(old, shape=new_shape)
        if new.texture == "outline" and new_shape == "ring":
            new = replace(new, texture="flat")
        layers = list(source.layers)
        layers[target] = new
        return source, Scene(bg, layers), target, None, None
    if kind == "restyle":
        bg = _random_background(rng, size)
        old_img = _background_image(bg, size)
        new_bg = bg
        for _ in range(100):
            new_bg = _random_background(
                rng, size, str(rng.choice([s for s in BACKGROUNDS if s != bg.style]))
            )
            if np.abs(_background_image(new_bg, size) - old_img).mean() >= 40:
                break
        n = int(rng.integers(1, 4))
        source, _ = _sprites_scene(rng, frames, size, bg, n, None, extra_bgs=[new_bg])
        return source, Scene(new_bg, list(source.layers)), 0, None, None
    if kind == "dance":
        bg = _random_background(rng, size)
        skin, shirt, trousers = _figure_colors(rng, bg)
        edit = _pick_color(rng, blends=[*_bg_colors(bg), skin, trousers], unlike=shirt)
        fig = _random_figure(rng, frames, size, skin, shirt, trousers)
        return Scene(bg, [fig]), Scene(bg, [replace(fig, shirt=edit)]), 0, 1, edit
    raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


@dataclass
class _Built:
    """A case before packing: both scenes, both renders and where the edited object is."""

    kind: str
    source_scene: Scene
    truth_scene: Scene
    source: _Render
    truth: _Render
    layer: int  # the edited layer (restyle: the first sprite, for centroids)
    slot: int | None  # the edited colour slot of that layer (dance: the shirt); None: all
    edit: Color | None

    def object_weight(self, r: _Render) -> np.ndarray:
        """float (F, H, W): visible weight of the edited object (restyle: the background)."""
        if self.kind == "restyle":
            return r.background
        vis = r.visible[self.layer]
        return vis.sum(-1) if self.slot is None else vis[..., self.slot]


def _build_case(kind: str, seed: int, frames: int, size: tuple[int, int]) -> _Built:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    frames, size = _check_shape(frames, size)
    rng = _rng(seed, _KIND_SALT[kind])
    for attempt in range(_ATTEMPTS):
        src_scene, truth_scene, k, slot, edit = _case_scenes(kind, rng, frames, size)
        cache: dict = {}
        src = _render(src_scene, frames, size, cache)
        truth = _render(truth_scene, frames, size, cache)
        shown = min(_visible_fraction(src, k, slot).min(), _visible_fraction(truth, k, slot).min())
        if shown >= _MIN_VISIBLE:
            break
        logger.debug(
            "%s-%d attempt %d: target %.0f%% visible, re-drawing", kind, seed, attempt, 100 * shown
        )
    else:
        logger.warning("%s-%d: target only %.0f%% visible in some frame", kind, seed, 100 * shown)
    return _Built(kind, src_scene, truth_scene, src, truth, k, slot, edit)


def make_case(kind: str, seed: int, frames: int = FRAMES, size: tuple[int, int] = SIZE) -> ToyCase:
    """Render one edit case of ``kind`` (one of :data:`KINDS`) from ``seed``, deterministically.

    The scene is re-drawn (from the same seeded stream) until the edited object stays at least
    half visible in every frame of both videos. ``target_mask`` / ``source_mask`` hold every
    pixel the edited object (restyle: the background) shows in, antialiased edges included, so
    source and truth are identical outside their union. ``centroids`` are coverage-weighted.
    """
    b = _build_case(kind, seed, frames, size)
    truth_weight = b.object_weight(b.truth)
    if kind == "restyle":
        centroid_weight = b.truth.visible[b.layer].sum(-1)
    else:
        centroid_weight = truth_weight
    return ToyCase(
        name=f"{kind}-{seed}",
        kind=kind,
        seed=int(seed),
        source=b.source.frames,
        edited_first=b.truth.frames[0].copy(),
        truth=b.truth.frames,
        target_mask=truth_weight > 0,
        centroids=_weighted_centroid(centroid_weight),
        edit_color=None if b.edit is None else (int(b.edit[0]), int(b.edit[1]), int(b.edit[2])),
        source_mask=b.object_weight(b.source) > 0,
    )


def training_clip(seed: int, frames: int = FRAMES, size: tuple[int, int] = SIZE) -> np.ndarray:
    """uint8 (F, H, W, 3): a random unedited scene (sprites and/or a stick figure).

    Seeds from :data:`HELD_OUT_FIRST_SEED` on are reserved for :func:`held_out_cases`.
    """
    if isinstance(seed, (int, np.integer)) and seed >= HELD_OUT_FIRST_SEED:
        raise ValueError(
            f"training seeds must be below {HELD_OUT_FIRST_SEED} (held out), got {seed}"
        )
    frames, size = _check_shape(frames, size)
    rng = _rng(seed, _TRAIN_SALT)
    bg = _random_background(rng, size)
    content = str(rng.choice(["sprites", "figure", "both"], p=[0.55, 0.15, 0.3]))
    n = 0 if content == "figure" else int(rng.integers(1, 4))
    scene, _ = _sprites_scene(rng, frames, size, bg, n, None)
    if content != "sprites":
        avoid = [c for s in scene.layers for c in _layer_colors(s)]
        fig = _random_figure(rng, frames, size, *_figure_colors(rng, bg, avoid))
        scene.layers.insert(int(rng.integers(0, n + 1)), fig)
    return _render(scene, frames, size).frames


def held_out_cases(n: int = 20, first_seed: int = HELD_OUT_FIRST_SEED) -> list[ToyCase]:
    """``n`` cases cycling through :data:`KINDS`, with seeds ``first_seed + i``."""
    return [make_case(KINDS[i % len(KINDS)], first_seed + i) for i in range(n)]


def sprite_centroid(frames: np.ndarray, color: Sequence[int], tol: int = 40) -> np.ndarray:
    """float (F, 2): per frame, the (x, y) centroid of pixels within ``tol`` of ``color``.

    A pixel matches when its largest absolute channel difference from ``color`` is at most
    ``tol``; frames with no match give NaN. A single (H, W, 3) frame counts as F = 1.
    """
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3), got {arr.shape}")
    diff = np.abs(arr.astype(np.int16) - np.asarray(color, np.int16)[:3]).max(-1)
    return _weighted_centroid((diff <= tol).astype(float))


def write_case(case: ToyCase, folder: Path, fps: float = 7.0) -> dict[str, Path]:
    """Write ``<name>.mp4`` (source), ``<name>_edit.png`` and ``<name>_truth.mp4`` to ``folder``.

    Each file appears atomically (written to a hidden temporary file, then renamed). Returns the
    paths under the keys ``source``, ``edited_first`` and ``truth``.
    """
    from i2vedit.data.video import write_video  # imports torch; only needed here

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "source": folder / f"{case.name}.mp4",
        "edited_first": folder / f"{case.name}_edit.png",
        "truth": folder / f"{case.name}_truth.mp4",
    }
    write_video(paths["source"], case.source, fps)
    with atomic_path(paths["edited_first"]) as tmp:
        Image.fromarray(case.edited_first).save(tmp, format="PNG")
    write_video(paths["truth"], case.truth, fps)
    return paths
