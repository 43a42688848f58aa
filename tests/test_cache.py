"""The artifact cache: hits recompute nothing, changes invalidate, corruption is caught, and a
killed run resumes to the same output."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import i2vedit.runner as runner
import i2vedit.tasks.edit as edit_task
from i2vedit.data.video import read_video_frames, write_video
from i2vedit.tasks.edit import run_edit
from i2vedit.training.module import MotionLoRAModule
from tests.conftest import compose_edit, moving_square_frames


@pytest.fixture
def counts(monkeypatch):
    calls = {"invert": 0, "train_steps": 0}
    original_invert = runner.edm_invert
    original_step = MotionLoRAModule.training_step

    def invert(*args, **kwargs):
        calls["invert"] += 1
        return original_invert(*args, **kwargs)

    def step(self, *args, **kwargs):
        calls["train_steps"] += 1
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(runner, "edm_invert", invert)
    monkeypatch.setattr(MotionLoRAModule, "training_step", step)
    return calls


def _run(overrides, out, tiny_model):
    cfg = compose_edit([*overrides, f"output_dir={out}"])
    return run_edit(cfg, model=tiny_model)


def test_second_run_recomputes_nothing_and_beta_reuses_inversion(
    tiny_model, edit_overrides, tmp_path, counts, caplog, monkeypatch
):
    base = [
        *edit_overrides[:-2],
        f"paths.cache_dir={tmp_path / 'cache'}",
        "lora.checkpoint=2",
        "lora.max_steps=2",
        "lora.checkpoint_every=1",
        "lora.rank=4",
    ]
    first = _run(base, tmp_path / "a", tiny_model)
    assert counts == {"invert": 1, "train_steps": 2}
    with caplog.at_level("INFO", logger="i2vedit"):
        second = _run(base, tmp_path / "b", tiny_model)
    assert counts == {"invert": 1, "train_steps": 2}  # nothing new
    assert "cache hit: edits" in caplog.text
    assert torch.equal(first.clip_frames["blue"][0], second.clip_frames["blue"][0])
    with monkeypatch.context() as m:  # every edit cached: no model is even loaded
        m.setattr(edit_task, "load_model", lambda *a, **k: pytest.fail("model loaded"))
        run_edit(compose_edit([*base, f"output_dir={tmp_path / 'f'}"]))
    caplog.clear()
    with caplog.at_level("INFO", logger="i2vedit"):
        _run([*base, "attention_matching.beta=[0.0,0.5]"], tmp_path / "c", tiny_model)
    assert counts == {"invert": 1, "train_steps": 2}  # inversion and LoRA reused, edit resampled
    assert "cache hit: inversion" in caplog.text
    _run([*base, "data.output_res=[48,64]"], tmp_path / "d", tiny_model)
    assert counts["invert"] == 2  # a new resolution: a new inversion
    other = tmp_path / "other.mp4"
    write_video(other, moving_square_frames()[:, ::-1].copy(), 12)
    _run([*base, f"data.video_path={other}"], tmp_path / "e", tiny_model)
    assert counts["invert"] == 3 and counts["train_steps"] == 4  # a new source: everything anew


@pytest.mark.parametrize(
    "store, pattern",
    [("memory", "*/records.safetensors"), ("disk", "*/records/step-0001.safetensors")],
)
def test_corrupt_entry_is_detected_and_recomputed(
    store, pattern, tiny_model, edit_overrides, tmp_path, counts, caplog
):
    args = [*edit_overrides[:-1], f"paths.cache_dir={tmp_path / 'cache'}"]
    args.append(f"attention_matching.store={store}")
    first = _run(args, tmp_path / "a", tiny_model)
    (records,) = (tmp_path / "cache" / "inversion").glob(pattern)
    records.write_bytes(records.read_bytes()[: records.stat().st_size // 2])  # truncated
    for edit in (tmp_path / "cache" / "edits").iterdir():
        shutil.rmtree(edit)  # so the edit needs the inversion again
    with caplog.at_level("WARNING", logger="i2vedit"):
        second = _run(args, tmp_path / "b", tiny_model)
    assert "is corrupt" in caplog.text and "recomputing" in caplog.text
    assert counts["invert"] == 2
    assert torch.equal(first.clip_frames["blue"][0], second.clip_frames["blue"][0])


# slow (1.5-2.5 min: three subprocess edits of three clips); the fast tier keeps its parts:
# cache hits of a second run (test_second_run_recomputes_nothing_and_beta_reuses_inversion)
# and byte-identical video writes (test_video)
@pytest.mark.slow
def test_killed_run_resumes_to_the_same_output(source_video, keyframe, tmp_path):
    exe = shutil.which("i2vedit-edit", path=str(Path(sys.executable).parent))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [
        exe,
        f"data.video_path={source_video}",
        f"data.keyframe_paths=[{keyframe}]",
        "data.sample_fps=12",
        "data.end_t=1.83",  # three clips
        "num_steps=6",
    ]
    whole = subprocess.run(
        [*common, f"output_dir={tmp_path / 'whole'}", f"paths.cache_dir={tmp_path / 'c1'}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert whole.returncode == 0, whole.stderr
    cache = tmp_path / "c2"
    args = [*common, f"output_dir={tmp_path / 'resumed'}", f"paths.cache_dir={cache}"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((cache / "edits").glob("[!.]*/manifest.json")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((cache / "edits").glob("[!.]*/manifest.json")))
    assert 1 <= done < 3, done  # killed after the first clip, before the last
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "cache hit: edits" in again.stderr
    # the frames each run computed, clip by clip: identical to the bit
    from safetensors.torch import load_file

    for entry in sorted((tmp_path / "c1" / "edits").iterdir()):
        ours = load_file(entry / "frames.safetensors")["frames"]
        resumed = load_file(cache / "edits" / entry.name / "frames.safetensors")["frames"]
        assert torch.equal(ours, resumed), entry.name
    # and the written videos, byte for byte
    for name in ("blue.mp4", "source.mp4"):
        a = (tmp_path / "whole" / name).read_bytes()
        assert a == (tmp_path / "resumed" / name).read_bytes(), name
    assert len(read_video_frames(tmp_path / "resumed" / "blue.mp4")) == 22


def test_cache_command_lists_sizes_and_clears(tiny_model, edit_overrides, tmp_path, capsys):
    from i2vedit.cache_cli import main, scan

    cache = tmp_path / "cache"
    _run(
        [*edit_overrides[:-1], f"paths.cache_dir={cache}", "name=square"],
        tmp_path / "a",
        tiny_model,
    )
    (cache / "inversion" / ".square-clip0-x.tmp-123").mkdir()  # a leftover of a killed write
    (cache / "inversion" / ".square-clip0-y.lock").write_text("{}")  # a running job's lock
    kinds = sorted(e.kind for e in scan(cache))
    assert kinds == ["demo", "edits", "inversion", "inversion"] or kinds == [
        "edits",
        "inversion",
        "inversion",
    ]
    assert main(["list", "--cache-dir", str(cache)]) == 0
    listed = capsys.readouterr().err
    assert "square-clip0-" in listed and "(leftover)" in listed and ".lock" not in listed
    assert main(["size", "--cache-dir", str(cache), "--item", "square"]) == 0
    assert "total" in capsys.readouterr().err
    assert main(["clear", "--cache-dir", str(cache), "--item", "square", "--kind", "edits"]) == 0
    assert not scan(cache, kind="edits") and scan(cache, item="square", kind="inversion")
    assert main(["clear", "--cache-dir", str(cache)]) == 0
    assert scan(cache) == []
    assert main(["list", "--cache-dir", str(tmp_path / "missing")]) == 2


def test_skip_interval_reuses_clip_0_records_from_the_cache(
    tiny_model, edit_overrides, tmp_path, counts
):
    overrides = [o for o in edit_overrides[:-1] if not o.startswith("data.end_clip_id")]
    base = [
        *overrides,
        f"paths.cache_dir={tmp_path / 'cache'}",
        "data.end_t=1.83",
        "num_steps=2",
        "long_video=skip_interval",
    ]
    first = _run(base, tmp_path / "a", tiny_model)
    assert counts["invert"] == 3
    # only beta changes: the three inversions, clip 0's keys and values included, come from the
    # cache; every edit is sampled again and matches a run without any cache to the bit
    again = _run([*base, "attention_matching.beta=[0.0,0.5]"], tmp_path / "b", tiny_model)
    assert counts["invert"] == 3
    fresh = _run(
        [
            *base[:-4],
            f"paths.cache_dir={tmp_path / 'fresh'}",
            *base[-3:],
            "attention_matching.beta=[0.0,0.5]",
        ],
        tmp_path / "c",
        tiny_model,
    )
    assert counts["invert"] == 6
    for i, (a, b) in enumerate(
        zip(again.clip_frames["blue"], fresh.clip_frames["blue"], strict=True)
    ):
        assert torch.equal(a, b), i
    assert not torch.equal(first.clip_frames["blue"][2], again.clip_frames["blue"][2])


# --- parallel jobs: an entry is computed once, under a lock the others wait on -------------

_HOLDER = """
import sys, time
from pathlib import Path
from i2vedit.cache import EntryLock
target = Path(sys.argv[1])
with EntryLock(target, heartbeat=0.1):
    print("held", flush=True)
    time.sleep(1.5)  # computing the entry
    target.mkdir()
    (target / "done").write_text("the holder's")
"""


def _lock_record(path: Path, **fields) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"created": "2000-01-01T00:00:00+00:00", **fields}))


def test_a_second_process_waits_for_the_holder_then_finds_the_entry(tmp_path, caplog):
    from i2vedit.cache import EntryLock

    target = tmp_path / "inversion" / "x-123"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(target)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = EntryLock(target, poll=0.05)
        assert lock.path == tmp_path / "inversion" / ".x-123.lock" and lock.path.is_file()
        assert not target.exists()
        with caplog.at_level("INFO", logger="i2vedit"), lock:
            # what a job does once it holds the lock: look again before computing
            assert (target / "done").read_text() == "the holder's"
            assert lock.waited > 0.5
        assert f"being computed by pid {holder.pid} on " in caplog.text
        assert "breaking" not in caplog.text
        assert not lock.path.exists()  # released
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_released_on_errors_and_interrupts(tmp_path):
    from i2vedit.cache import EntryLock

    target = tmp_path / "x-1"
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error), EntryLock(target):
            assert EntryLock(target).path.is_file()
            raise error
        assert not EntryLock(target).path.exists()


def test_a_lock_left_by_a_dead_process_on_this_host_is_broken_at_once(tmp_path, caplog):
    import socket

    from i2vedit.cache import EntryLock

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # exited and reaped: its pid is free
    lock = EntryLock(tmp_path / "x-2", stale=600, poll=0.05)
    _lock_record(lock.path, host=socket.gethostname(), pid=gone.pid, token="dead")
    start = time.monotonic()
    with caplog.at_level("WARNING", logger="i2vedit"), lock:
        assert time.monotonic() - start < 5  # not the 600 s of a missing heartbeat
        assert f"process {gone.pid} is gone" in caplog.text


def test_a_lock_from_another_host_is_broken_once_its_heartbeat_stops(tmp_path, caplog):
    import json
    import threading

    from i2vedit.cache import EntryLock

    target = tmp_path / "x-3"
    # a live holder on "another node": its pid cannot be checked, but its heartbeat goes on
    holder = EntryLock(target, heartbeat=0.1).acquire()
    record = json.loads(holder.path.read_text())
    holder.path.write_text(json.dumps({**record, "host": "other-node"}))
    threading.Timer(2.0, holder.release).start()
    start = time.monotonic()
    with caplog.at_level("INFO", logger="i2vedit"), EntryLock(target, stale=1.0, poll=0.05):
        assert time.monotonic() - start > 1.5  # waited for the release, past the stale timeout
    assert "on other-node" in caplog.text and "breaking" not in caplog.text
    # a holder on another node that stopped (killed): no heartbeat, broken after the timeout
    waiter = EntryLock(target, stale=1.0, poll=0.05)
    _lock_record(waiter.path, host="other-node", pid=os.getpid(), token="killed")
    start = time.monotonic()
    with caplog.at_level("WARNING", logger="i2vedit"), waiter:
        assert 1.0 <= time.monotonic() - start < 10
    assert "no heartbeat for 1 s" in caplog.text
