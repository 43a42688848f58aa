"""The one atomic-write helper and the one JSON writer: a reader sees the old file or the new
one, never half of one, and an error leaves nothing behind."""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from i2vedit.files import atomic_path, jsonable, write_json, write_text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_file_replaces_the_target_in_one_rename(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "clip.mp4"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".clip.mp4.tmp-")
        assert tmp.suffix == ".mp4" and tmp.is_file() and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and _mode(target) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["clip.mp4"]


def test_atomic_file_error_keeps_the_old_one(tmp_path: Path) -> None:
    target = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_folder_replaces_an_older_folder(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint-5"
    for content in ("one", "two"):
        with atomic_path(target, folder=True) as tmp:
            assert tmp.is_dir() and not any(tmp.iterdir())
            (tmp / "w.txt").write_text(content)
    assert [p.name for p in target.iterdir()] == ["w.txt"]
    assert (target / "w.txt").read_text() == "two"
    with pytest.raises(KeyboardInterrupt), atomic_path(target, folder=True) as tmp:
        (tmp / "w.txt").write_text("three")
        raise KeyboardInterrupt
    assert (target / "w.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-5"]


def test_write_json_nan_as_null_and_scalars_as_numbers(tmp_path: Path) -> None:
    record = {
        "nan": float("nan"),
        "inf": -math.inf,
        "np": np.float32(0.5),
        "t": torch.tensor(3),
        "path": tmp_path / "x",
        1: (1, 2),
    }
    loaded = json.loads(write_json(tmp_path / "r.json", record).read_text())
    assert loaded == {
        "nan": None,
        "inf": None,
        "np": 0.5,
        "t": 3,
        "path": str(tmp_path / "x"),
        "1": [1, 2],
    }
    assert jsonable([np.int64(2), {"a": np.bool_(True)}]) == [2, {"a": True}]
    with pytest.raises(TypeError):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()
    assert json.loads(write_json(tmp_path / "s.json", {"x": {3}}, default=str).read_text()) == {
        "x": "{3}"
    }
