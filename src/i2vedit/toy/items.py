"""Toy-world items: ``data.toy_case=<kind>-<seed>`` makes a case of ``i2vedit.toy.world`` the
source (video, edited first frame, and the exact ground truth), generated once into the
cache (``<cache_dir>/toy/<case>-f<frames>/``), so items like ``+item=dance`` run on a fresh
machine with nothing to download."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from i2vedit.files import atomic_path
from i2vedit.toy.cases import parse_case

log = logging.getLogger(__name__)

TOY_FPS = 7.0  #: frame rate the world's videos are written at (one world step per frame)


def ensure_toy_case(cache_dir: str | os.PathLike[str], name: str, frames: int) -> dict[str, Path]:
    """Write (once, atomically) and return the case's files: ``video``, ``keyframe``,
    ``truth``."""
    from i2vedit.toy.world import make_case, write_case

    kind, seed = parse_case(name)
    root = Path(cache_dir).expanduser() / "toy"
    folder = root / f"{name}-f{frames}"
    paths = {
        "video": folder / f"{name}.mp4",
        "keyframe": folder / f"{name}_edit.png",
        "truth": folder / f"{name}_truth.mp4",
    }
    if all(p.is_file() for p in paths.values()):
        return paths
    log.info("generating toy case %s (%d frames) into %s", name, frames, folder)
    with atomic_path(folder, folder=True) as tmp:
        written = write_case(make_case(kind, seed, frames=frames), tmp, TOY_FPS)
        for key, path in zip(("source", "edited_first", "truth"), paths.values(), strict=True):
            if written[key].name != path.name:
                written[key].rename(tmp / path.name)
    return paths
