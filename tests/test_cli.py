"""``i2vedit-edit`` as a user runs it: a subprocess, exit codes, one-line errors, files written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from i2vedit.data.video import read_video_frames

EXE = shutil.which("i2vedit-edit", path=str(Path(sys.executable).parent))


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["I2VEDIT_CACHE_DIR"] = str(tmp_path / "cache")
    env["COLUMNS"] = "80"
    env["OMP_NUM_THREADS"] = "1"  # many runs at once on few cores
    return env


def test_demo_runs_and_writes_a_decodable_video(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [EXE, f"output_dir={out}", "num_steps=4"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    video = read_video_frames(out / "demo_edit.mp4")
    # the demo's 14 sampled frames: a clip of 8 (model=tiny), then a shorter one of 7 sharing
    # a frame; every frame once, at the demo's source size
    assert video.shape == (14, 96, 160, 3)
    assert read_video_frames(out / "source.mp4").shape == (14, 96, 160, 3)
    assert (out / "config.yaml").is_file()
    for name in ("demo_edit.mp4", "source.mp4", "config.yaml"):
        assert f"wrote {out / name}" in proc.stderr
    assert not list(Path.cwd().glob(".hydra"))


def _bad_cases(source_video: Path, keyframe: Path, model_dir: Path) -> list[tuple[list[str], str]]:
    return [
        (["data.video_path=/nonexistent/video.mp4"], "data.video_path"),
        ([f"data.video_path={keyframe.parent / 'notes.txt'}"], "data.video_path"),
        (["data.keyframe_paths=[/nonexistent/edit.png]"], "data.keyframe_paths"),
        ([f"data.keyframe_paths=[{keyframe.parent / 'broken.png'}]"], "data.keyframe_paths"),
        (["data.start_t=50"], "data.start_t"),
        (["data.end_t=0.05"], "data.end_t"),  # 1 frame: a clip needs 2
        (
            ["+attention_matching.per_edit=[{beta:[0.4,0.5]},{beta:[0.5,0.8]}]"],
            "attention_matching.per_edit",
        ),
        (["attention_matching.beta=[0.9,0.5]"], "attention_matching.beta"),
        (["attention_matching.beta=[0.5,1.2]"], "attention_matching.beta"),
        (["attention_matching.mask_thr=[1.1,0.3]"], "attention_matching.mask_thr"),
        (["data.chunk_size=1"], "data.chunk_size"),
        (["data.overlay_size=8"], "data.overlay_size"),
        (["model=svd", f"model.path={model_dir}"], "model.path"),
    ]


def test_bad_input_exits_2_with_one_line(source_video, keyframe, tmp_path):
    (keyframe.parent / "notes.txt").write_text("not a video")
    (keyframe.parent / "broken.png").write_bytes(b"\x89PNG not really")
    model_dir = tmp_path / "svd"
    for part in ("unet", "image_encoder", "feature_extractor", "scheduler"):
        (model_dir / part).mkdir(parents=True)
    (model_dir / "unet" / "config.json").write_text("{}")
    cases = _bad_cases(source_video, keyframe, model_dir)
    procs = []
    for i, (overrides, key) in enumerate(cases):
        out = tmp_path / f"out{i}"
        args = [
            EXE,
            f"data.video_path={source_video}",
            f"data.keyframe_paths=[{keyframe}]",
            "data.sample_fps=12",
            f"output_dir={out}",
            *overrides,
        ]
        procs.append(
            (
                key,
                out,
                subprocess.Popen(
                    args,
                    stderr=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env=_env(tmp_path),
                ),
            )
        )
    for key, out, proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, (key, stderr)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (key, stderr)
        assert lines[0].startswith(f"error: {key}="), (key, lines[0])
        assert "Traceback" not in stderr
        assert not out.exists(), key


@pytest.mark.parametrize("override", ["attention_matching.beta=[0.4]", "data.sample_fps=-1"])
def test_other_bad_values_exit_2(override, source_video, keyframe, tmp_path):
    proc = subprocess.run(
        [
            EXE,
            f"data.video_path={source_video}",
            f"data.keyframe_paths=[{keyframe}]",
            f"output_dir={tmp_path / 'o'}",
            override,
        ],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_train_then_edit_with_a_chosen_checkpoint(tmp_path):
    env = _env(tmp_path)
    lora = ["lora.max_steps=4", "lora.checkpoint_every=2", "lora.rank=4"]
    train = subprocess.run(
        [
            shutil.which("i2vedit-train", path=str(Path(sys.executable).parent)),
            f"output_dir={tmp_path / 'train'}",
            *lora,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert train.returncode == 0, train.stderr
    (clip_dir,) = (tmp_path / "cache" / "lora").glob("demo-*/clip_0")
    assert sorted(p.name for p in clip_dir.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert (tmp_path / "train" / "logs" / "clip_0" / "version_0" / "metrics.csv").is_file()

    edit = subprocess.run(
        [EXE, f"output_dir={tmp_path / 'edit'}", "num_steps=3", "lora.checkpoint=4", *lora],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert edit.returncode == 0, edit.stderr
    assert f"motion LoRA: loaded {clip_dir / 'checkpoint-4'}" in edit.stderr
    assert "training the motion LoRA" not in edit.stderr
    assert (tmp_path / "edit" / "demo_edit.mp4").is_file()

    missing = subprocess.run(
        [EXE, f"output_dir={tmp_path / 'edit3'}", "lora.checkpoint=3", *lora],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert missing.returncode == 2
    (line,) = missing.stderr.strip().splitlines()
    assert (
        line.startswith("error: lora.checkpoint=3:")
        and "existing: checkpoint-2, checkpoint-4" in line
    )
    assert not (tmp_path / "edit3").exists()


TRAIN = shutil.which("i2vedit-train", path=str(Path(sys.executable).parent))


def test_check_overrides_shows_the_quoting():
    from i2vedit.cli import check_overrides
    from i2vedit.errors import InputError

    for args, piece, quoted in [
        (["data.video_path=/videos/my", "clip.mp4"], "clip.mp4", "/videos/my clip.mp4"),
        (["data.video_path=/v/a", "b", "c.mp4", "num_steps=3"], "b", "/v/a b c.mp4"),
        (["data.video_path=/vidéos/a.mp4"], "data.video_path=/vidéos/a.mp4", "/vidéos/a.mp4"),
    ]:
        with pytest.raises(InputError) as caught:
            check_overrides(args)
        assert caught.value.value == piece
        assert str(caught.value).endswith(f"""'data.video_path="{quoted}"'"""), caught.value
    with pytest.raises(InputError, match=r"""'data.keyframe_paths=\["/a/é.png","/b.png"\]'"""):
        check_overrides(["data.keyframe_paths=[/a/é.png,/b.png]"])
    with pytest.raises(InputError, match=r"""'data.keyframe_paths=\["/a/my b.png"\]'"""):
        check_overrides(["data.keyframe_paths=[/a/my", "b.png]"])
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        check_overrides(["clip.mp4"])
    # what Hydra parses passes: quoted values, sweeps, groups, deletions
    check_overrides(
        [
            'data.video_path="/videos/my clip.mp4"',
            "data.keyframe_paths=['/vidéos/a.png']",
            "attention_matching.beta=[0.4,0.5],[0.5,0.8]",
            "+item=dance",
            "~sweep",
        ]
    )


@pytest.mark.parametrize(
    ("args", "piece", "suggestion"),
    [
        (
            ["data.video_path=/videos/my", "clip.mp4"],
            "clip.mp4",
            """'data.video_path="/videos/my clip.mp4"'""",
        ),
        (["data.video_path=/vidéos/a.mp4"], "data.video_path=/vidéos/a.mp4", '"/vidéos/a.mp4"'),
    ],
    ids=["space", "non-ascii"],
)
def test_unparsable_override_exits_2_with_the_quoted_form(args, piece, suggestion, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [EXE, f"output_dir={out}", *args],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: override={piece!r}: cannot parse it"), line
    assert suggestion in line, line
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_unknown_keys_exit_2_with_the_closest_in_both_commands(tmp_path):
    """Each command refuses an unknown key, also one added with +, in one line."""
    cases = [
        (EXE, "attention_matching.betta=[0.4,0.5]", "attention_matching.beta"),
        (TRAIN, "attention_matching.betta=[0.4,0.5]", "attention_matching.beta"),
        (TRAIN, "lora.max_step=3", "lora.max_steps"),
        (EXE, "+num_step=3", "num_steps"),
    ]
    procs = []
    for i, (exe, override, closest) in enumerate(cases):
        out = tmp_path / f"out{i}"
        args = [exe, f"output_dir={out}", override]
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path)
        )
        procs.append((override, closest, out, proc))
    for override, closest, out, proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, (override, stderr)
        (line,) = stderr.strip().splitlines()
        key = override.lstrip("+").partition("=")[0]
        assert line.startswith(f"error: {key}="), line
        assert line.endswith(f"no such key; did you mean {closest}?"), line
        assert not out.exists()


def test_train_accepts_the_edit_overrides(tmp_path):
    """An edit's overrides compose for i2vedit-train; this run then stops at the missing video
    (after composing, before any model loads)."""
    out = tmp_path / "train"
    proc = subprocess.run(
        [
            TRAIN,
            f"output_dir={out}",
            "num_steps=3",
            "attention_matching.beta=[0.4,0.5]",
            "sarp=off",
            "metrics=off",
            "dtype=auto",
            "lora.max_steps=2",
            "data.video_path=/nonexistent/video.mp4",
        ],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: data.video_path='/nonexistent/video.mp4': file not found")
    assert not out.exists()


def test_an_unknown_group_option_names_the_options():
    from hydra.errors import MissingConfigException

    from i2vedit.cli import composition_error
    from tests.conftest import compose_edit

    with pytest.raises(MissingConfigException) as caught:
        compose_edit(["lora=ckpt50", "output_dir=x"])
    assert str(composition_error(caught.value, ["lora=ckpt50", "output_dir=x"])) == (
        "lora='ckpt50': no such option; did you mean ckpt500 or ckpt250? "
        "(options: ckpt250, ckpt500, none)"
    )


def test_the_task_runs_with_the_users_hydra_error_setting(monkeypatch):
    """HYDRA_FULL_ERROR=1 only while composing (so _checked gets the error to say in one
    line); the task sees the user's setting, so its own failures are reported as usual."""
    from i2vedit import cli
    from tests.conftest import compose_edit

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(cli, "_USER_FULL_ERROR", None)
    cli._hydra_raises_errors()
    assert os.environ["HYDRA_FULL_ERROR"] == "1"
    seen = cli._run(lambda cfg: os.environ.get("HYDRA_FULL_ERROR"), compose_edit(["output_dir=x"]))
    assert seen is None
