"""Toy-world items: ``data.toy_case=<kind>-<seed>`` makes a case of ``i2vedit.toy.world`` the
source (video, edited first frame, and the exact ground truth), generated once into the
cache (``<cache_dir>/toy/<case>-f<frames>/``), so items like ``+item=dance`` run on a fresh
machine with nothing to download."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from i2vedit.errors import InputError

log = logging.getLogger(__name__)

TOY_FPS = 7.0  #: frame rate the world's videos are written at (one world step per frame)


def parse_case(name: str, key: str = "data.toy_case") -> tuple[str, int]:
    """``"dance-3"`` -> ("dance", 3); refuses an unknown kind or a missing seed."""
    from i2vedit.toy.world import KINDS

    kind, _, seed = str(name).rpartition("-")
    if kind not in KINDS or not seed.isdigit():
        raise InputError(key, name, f"expected <kind>-<seed> with kind one of {', '.join(KINDS)}")
    return kind, int(seed)


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
    root.mkdir(parents=True, exist_ok=True)
    log.info("generating toy case %s (%d frames) into %s", name, frames, folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=root))
    try:
        written = write_case(make_case(kind, seed, frames=frames), tmp, TOY_FPS)
        for key, path in zip(("source", "edited_first", "truth"), paths.values(), strict=True):
            if written[key].name != path.name:
                written[key].rename(tmp / path.name)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths
