"""Tests for i2vedit.toy.world: determinism, exact edit ground truth, motion, I/O."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from i2vedit.toy.world import (
    FRAMES,
    KINDS,
    SIZE,
    ToyCase,
    held_out_cases,
    make_case,
    sprite_centroid,
    training_clip,
    write_case,
)

SEEDS = range(12)


@functools.cache
def case(kind: str, seed: int) -> ToyCase:
    return make_case(kind, seed)


def mode_color(pixels: np.ndarray) -> tuple[int, int, int]:
    """The most common colour among (..., 3) uint8 pixels (a flat object's interior colour)."""
    cols, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    return tuple(int(v) for v in cols[counts.argmax()])


def top_colors(pixels: np.ndarray, k: int = 2) -> set[tuple[int, int, int]]:
    """The ``k`` most common colours among (..., 3) uint8 pixels."""
    cols, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    return {tuple(int(v) for v in cols[i]) for i in np.argsort(-counts, kind="stable")[:k]}


def mask_centroid(mask: np.ndarray) -> np.ndarray:
    """float (F, 2): (x, y) centroid of a bool (F, H, W) mask."""
    f, h, w = mask.shape
    n = mask.sum((1, 2))
    return np.stack(
        [(mask.sum(1) * np.arange(w)).sum(1) / n, (mask.sum(2) * np.arange(h)).sum(1) / n], 1
    )


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Dilate a bool (F, H, W) mask by a (2r+1)^2 square."""
    out = mask
    for _ in range(r):
        p = np.pad(out, ((0, 0), (1, 1), (1, 1)))
        out = np.zeros_like(mask)
        for dy in range(3):
            for dx in range(3):
                out = out | p[:, dy : dy + mask.shape[1], dx : dx + mask.shape[2]]
    return out


# --------------------------------------------------------------------------------------------
# API, determinism
# --------------------------------------------------------------------------------------------


def test_unknown_kind_raises_naming_it() -> None:
    with pytest.raises(ValueError, match="'wobble'"):
        make_case("wobble", 1)


@pytest.mark.parametrize("kind", KINDS)
def test_case_layout(kind: str) -> None:
    c = case(kind, 3)
    f, (h, w) = FRAMES, SIZE
    assert c.name == f"{kind}-3" and c.kind == kind and c.seed == 3
    for arr in (c.source, c.truth):
        assert arr.dtype == np.uint8 and arr.shape == (f, h, w, 3)
    assert c.edited_first.dtype == np.uint8 and c.edited_first.shape == (h, w, 3)
    for m in (c.target_mask, c.source_mask):
        assert m is not None and m.dtype == bool and m.shape == (f, h, w)
    assert c.centroids.shape == (f, 2) and np.isfinite(c.centroids).all()
    if kind in ("recolor", "dance"):
        assert c.edit_color is not None and len(c.edit_color) == 3
        assert all(isinstance(v, int) and 0 <= v <= 255 for v in c.edit_color)
    else:
        assert c.edit_color is None


def test_other_frame_counts_and_sizes() -> None:
    for kind in KINDS:
        c = make_case(kind, 5, frames=3, size=(48, 80))
        assert c.source.shape == c.truth.shape == (3, 48, 80, 3)
        assert (c.truth[0] == c.edited_first).all()
    assert training_clip(5, frames=3, size=(48, 80)).shape == (3, 48, 80, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic(kind: str) -> None:
    a, b = make_case(kind, 7), make_case(kind, 7)
    for name in ("source", "edited_first", "truth", "target_mask", "source_mask", "centroids"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name
    assert a.edit_color == b.edit_color
    other = make_case(kind, 8)
    assert not np.array_equal(a.source, other.source)
    assert not np.array_equal(a.truth, other.truth)


def test_training_clip_deterministic_and_held_out() -> None:
    a, b, c = training_clip(11), training_clip(11), training_clip(12)
    assert a.dtype == np.uint8 and a.shape == (FRAMES, *SIZE, 3)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)
    assert (np.abs(a[0].astype(int) - a[-1]).max(-1) > 0).sum() > 20  # something moves
    with pytest.raises(ValueError, match="held out"):
        training_clip(1_000_000)


# --------------------------------------------------------------------------------------------
# The edit is exact: truth == source except where the edited object is
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_truth_differs_from_source_only_at_the_edit(kind: str, seed: int) -> None:
    c = case(kind, seed)
    assert np.array_equal(c.truth[0], c.edited_first)
    changed = (c.source != c.truth).any(-1)
    region = c.target_mask | c.source_mask
    # exact: every pixel outside the masks (which include antialiased edges) is untouched
    assert not (changed & ~region).any()
    # and, as a looser oracle, outside a 1 px dilation too
    assert not (changed & ~dilate(region, 1)).any()
    # the edit is visible in every frame
    assert changed.sum((1, 2)).min() >= 10
    if kind == "restyle":
        sprites = ~c.target_mask  # pixels no background shows through
        assert sprites.sum((1, 2)).min() > 0
        assert np.array_equal(c.source[sprites], c.truth[sprites])
        assert np.array_equal(c.target_mask, c.source_mask)
        bg_change = np.abs(c.source.astype(int) - c.truth)[c.target_mask].mean()
        assert bg_change > 25
    if kind in ("recolor", "dance"):  # same geometry, new colour
        assert np.array_equal(c.target_mask, c.source_mask)
        for f in range(FRAMES):
            assert mode_color(c.truth[f][c.target_mask[f]]) == c.edit_color
            src_color = mode_color(c.source[f][c.source_mask[f]])
            assert np.abs(np.subtract(src_color, c.edit_color)).max() >= 100
    if kind == "reshape":  # another shape, same colour, same centre
        assert not np.array_equal(c.target_mask, c.source_mask)
        # a flat or textured (two-colour) sprite: the same colours before and after
        before, after = c.source[c.source_mask], c.truth[c.target_mask]
        assert mode_color(after) in top_colors(before)
        assert mode_color(before) in top_colors(after)
        shift = np.abs(mask_centroid(c.source_mask) - mask_centroid(c.target_mask)).max(1)
        assert np.median(shift) < 1.0


# --------------------------------------------------------------------------------------------
# Same motion
# --------------------------------------------------------------------------------------------


def test_recolor_keeps_motion() -> None:
    """Colour-thresholded centroids follow the exact (coverage-weighted) ones.

    Thresholding partially covered edge pixels quantises a centroid by up to about half a pixel
    per axis, so most frames agree within 0.5 px and every frame within 0.75 px.
    """
    truth_err, src_err = [], []
    for seed in SEEDS:
        c = case("recolor", seed)
        by_edit = sprite_centroid(c.truth, c.edit_color)
        assert np.isfinite(by_edit).all()
        truth_err.append(np.abs(by_edit - c.centroids).max(1))
        source_color = mode_color(c.source[c.source_mask])
        by_source = sprite_centroid(c.source, source_color)
        assert np.isfinite(by_source).all()
        src_err.append(np.abs(by_source - by_edit).max(1))
    for err in (np.concatenate(truth_err), np.concatenate(src_err)):
        assert (err <= 0.5).mean() >= 0.95
        assert err.max() <= 0.75
        assert err.mean() <= 0.2


def test_sprites_move() -> None:
    moved = []
    for seed in range(24):
        c = case("recolor", seed) if seed < len(SEEDS) else make_case("recolor", seed)
        track = sprite_centroid(c.truth, c.edit_color)
        moved.append(np.linalg.norm(track - track[0], axis=1).max() > 2)
        r = case("reshape", seed % len(SEEDS))
        moved.append(np.linalg.norm(r.centroids - r.centroids[0], axis=1).max() > 2)
    assert np.mean(moved) >= 0.8


@pytest.mark.parametrize("seed", SEEDS)
def test_stick_figure_dances(seed: int) -> None:
    c = case("dance", seed)
    # only the figure is in the scene and the background is static: every change is the figure
    moving = (c.source[0] != c.source[4]).any(-1)
    assert moving.sum() >= 30
    shirt = c.source_mask[0] | c.source_mask[4]
    assert (moving & ~shirt).sum() >= 10  # head, forearms or legs moved, not just the shirt
    assert not np.array_equal(c.target_mask[0], c.target_mask[4])
    for f in range(FRAMES):
        assert mode_color(c.truth[f][c.target_mask[f]]) == c.edit_color
    # the shirt is a third of the figure or less: trousers and head keep their colours
    figure = (c.source != c.source[:1]).any(-1).any(0)
    assert figure.sum() > c.target_mask.any(0).sum()


def test_held_out_cases() -> None:
    cases = held_out_cases(20)
    assert len(cases) == 20
    assert len({c.name for c in cases}) == 20
    assert {c.kind for c in cases} == set(KINDS)
    assert [c.seed for c in cases] == list(range(1_000_000, 1_000_020))
    assert cases[5].name == f"{KINDS[1]}-1000005"


# --------------------------------------------------------------------------------------------
# sprite_centroid, write_case
# --------------------------------------------------------------------------------------------


def test_sprite_centroid() -> None:
    frames = np.zeros((3, 20, 30, 3), np.uint8)
    frames[0, 10:13, 20:23] = (200, 40, 40)  # centre (21, 11)
    frames[1, 2:4, 5:9] = (240, 40, 40)  # within tol 40: centre (6.5, 2.5)
    frames[1, 15, 25] = (241, 40, 40)  # 41 away: ignored
    got = sprite_centroid(frames, (200, 40, 40))
    np.testing.assert_allclose(got[0], (21, 11))
    np.testing.assert_allclose(got[1], (6.5, 2.5))
    assert np.isnan(got[2]).all()
    np.testing.assert_allclose(sprite_centroid(frames[0], (200, 40, 40)), [(21, 11)])


def test_write_case_round_trip(tmp_path) -> None:
    from PIL import Image

    from i2vedit.data.video import read_video_frames

    c = case("dance", 2)
    paths = write_case(c, tmp_path / "out")
    assert set(paths) == {"source", "edited_first", "truth"}
    assert paths["source"].name == f"{c.name}.mp4"
    assert paths["edited_first"].name == f"{c.name}_edit.png"
    assert paths["truth"].name == f"{c.name}_truth.mp4"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in paths.values()
    )
    for key, ref in (("source", c.source), ("truth", c.truth)):
        frames = read_video_frames(paths[key]).numpy()
        assert frames.shape == ref.shape
        assert np.abs(frames.astype(float) - ref).mean() < 6
    with Image.open(paths["edited_first"]) as img:
        assert np.array_equal(np.asarray(img.convert("RGB")), c.edited_first)
