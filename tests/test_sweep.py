"""Sweeps: a multirun over beta reuses one inversion and ends with a report; a failed job is
listed and does not stop the others; named sweeps and launchers compose; the metrics an edit
writes equal those of ``i2vedit-eval`` on the same files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.types import RunMode
from PIL import Image

from i2vedit.cli import LAUNCHER_PLUGINS, check_launcher, flags_first
from i2vedit.errors import InputError
from i2vedit.report import GAP, LABEL_WIDTH, SHEET_FRAMES, THUMB_HEIGHT, sheet_frame_indices

BIN = Path(sys.executable).parent


def _sweep(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "i2vedit-edit"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _base(source_video, keyframe, tmp_path) -> list[str]:
    return [
        f"data.video_path={source_video}",
        f"data.keyframe_paths=[{keyframe}]",
        "data.sample_fps=12",
        "data.end_clip_id=0",
        "num_steps=3",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]


@pytest.fixture(scope="module")
def beta_sweep(tmp_path_factory, source_video, keyframe):
    """``i2vedit-edit ... -m attention_matching.beta=[0.4,0.5],[0.5,0.8]`` (the flag after
    the overrides, as the README writes it)."""
    tmp = tmp_path_factory.mktemp("beta-sweep")
    args = [
        *_base(source_video, keyframe, tmp),
        "-m",
        "attention_matching.beta=[0.4,0.5],[0.5,0.8]",
    ]
    done = _sweep(args, tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, done


def test_beta_sweep_reuses_one_inversion_and_reports(beta_sweep, keyframe):
    tmp, done = beta_sweep
    sweep = tmp / "sweep"
    runs = [json.loads((sweep / str(job) / "run.json").read_text()) for job in (0, 1)]
    for job, run in enumerate(runs):
        assert (sweep / str(job) / "blue.mp4").is_file()
        assert run["status"] == "ok"
    assert runs[0]["edits"]["blue"]["beta"] == [0.4, 0.5]
    assert runs[1]["edits"]["blue"]["beta"] == [0.5, 0.8]
    # one inversion in all: the first job computes it, the second takes it from the cache
    inversions = [a for run in runs for a in run["computed"] if a.startswith("inversion ")]
    assert len(inversions) == 1 and inversions[0] in runs[1]["cache_hits"]
    assert len(list((tmp / "cache" / "inversion").iterdir())) == 1
    assert done.stderr.count("cache hit: inversion") == 1
    # the report: two rows, the varied override named, a contact sheet of the promised size
    with open(sweep / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["0", "1"]
    assert rows[0]["overrides"].endswith("attention_matching.beta=[0.4,0.5]")
    assert float(rows[1]["first_frame_psnr"]) > 0
    report = (sweep / "report.md").read_text()
    assert "| 1 | attention_matching.beta=[0.5,0.8] | blue | ok |" in report
    sheet = Image.open(sweep / "contact_sheet.png")
    h, w = 48, 64  # the source's size, which the edits are written at
    cell_w = round(w * THUMB_HEIGHT / h)
    rows_shown = 1 + 2  # the source, then one row per job
    assert sheet.size == (
        LABEL_WIDTH + SHEET_FRAMES * (cell_w + GAP) + GAP,
        rows_shown * (THUMB_HEIGHT + GAP) + GAP,
    )


# ~80 s (a joblib sweep of two subprocess jobs), kept in the fast tier: it is the one check
# that parallel jobs of a real sweep share their work
def test_parallel_jobs_compute_the_inversion_once(source_video, keyframe, tmp_path):
    """Under a parallel launcher both jobs want the same inversion at once: one computes it,
    the other waits for it and loads it (one inversion and two edits in all, not 2 + 2)."""
    args = [
        *_base(source_video, keyframe, tmp_path),
        "-m",
        "attention_matching.beta=[0.4,0.5],[0.5,0.8]",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ]
    done = _sweep(args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "sweep" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "ok"), ("1", "ok")]
    assert sum(int(r["computed"]) for r in rows) == 3, rows
    runs = [json.loads((tmp_path / "sweep" / str(j) / "run.json").read_text()) for j in (0, 1)]
    inversions = [a for run in runs for a in run["computed"] if a.startswith("inversion ")]
    assert len(inversions) == 1
    assert any(inversions[0] in run["cache_hits"] for run in runs)
    assert not list((tmp_path / "cache").rglob("*.lock"))  # every lock released


def test_report_command_rebuilds_the_report(beta_sweep):
    tmp, _ = beta_sweep
    sweep = tmp / "sweep"
    before = (sweep / "report.csv").read_text()
    for name in ("report.md", "report.csv", "contact_sheet.png"):
        (sweep / name).unlink()
    done = subprocess.run(
        [str(BIN / "i2vedit-report"), str(sweep)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert (sweep / "report.csv").read_text() == before
    assert (sweep / "contact_sheet.png").is_file() and (sweep / "report.md").is_file()
    missing = subprocess.run(
        [str(BIN / "i2vedit-report"), str(tmp / "nope")], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "error: sweep_dir=" in missing.stdout + missing.stderr


def test_edit_metrics_equal_the_eval_command(beta_sweep, keyframe):
    """Two code paths: the metrics.json an edit writes, and i2vedit-eval on its files."""
    tmp, _ = beta_sweep
    job = tmp / "sweep" / "0"
    written = json.loads((job / "metrics.json").read_text())["blue"]
    out = tmp / "eval.json"
    done = subprocess.run(
        [
            str(BIN / "i2vedit-eval"),
            str(job / "blue.mp4"),
            "--source",
            str(job / "source.mp4"),
            "--keyframe",
            str(keyframe),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    evaluated = json.loads(out.read_text())
    for key in ("first_frame_psnr", "first_frame_ssim", "motion_epe", "warping_error"):
        assert evaluated[key] == pytest.approx(written[key], rel=1e-9), key
    assert written["preservation_psnr"] == pytest.approx(evaluated["preservation_psnr"])


def test_a_failed_job_is_reported_and_the_others_finish(source_video, keyframe, tmp_path):
    args = [
        *_base(source_video, keyframe, tmp_path),
        "-m",
        "attention_matching.beta=[0.5,0.8],[0.9,0.5]",
    ]
    done = _sweep(args, tmp_path)
    assert done.returncode == 1  # the sweep says a job failed, after writing the report
    assert (tmp_path / "sweep" / "0" / "blue.mp4").is_file()
    assert not (tmp_path / "sweep" / "1" / "blue.mp4").exists()
    assert "error: attention_matching.beta=[0.9, 0.5]: expected first <= second" in done.stderr
    with open(tmp_path / "sweep" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "ok"), ("1", "failed")]
    assert "expected first <= second" in rows[1]["error"]


def _hydra_cfg(overrides: list[str]):
    with initialize_config_module("i2vedit.conf", version_base=None):
        return compose("edit", overrides=["output_dir=x", *overrides], return_hydra_config=True)


@pytest.mark.parametrize(
    "name, key, values",
    [
        ("beta", "attention_matching.beta", "[0.5,0.8],[0.8,0.9],[0.4,0.5]"),
        ("mask_thr", "attention_matching.mask_thr", "[0.25,0.25],[0.35,0.35],[0.5,0.5]"),
        ("lora", "lora.checkpoint", "null,250,500"),
        ("sarp", "sarp.noise_scale", "0.0025,0.005,0.01"),
    ],
)
def test_named_sweeps_compose(name, key, values):
    cfg = _hydra_cfg([f"sweep={name}"])
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert dict(cfg.hydra.sweeper.params) == {key: values}


@pytest.mark.parametrize(
    "launcher, target",
    [
        ("basic", "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        (
            "submitit_slurm",
            "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
        ),
        (
            "submitit_local",
            "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
        ),
    ],
)
def test_launchers_compose(launcher, target):
    cfg = _hydra_cfg([f"hydra/launcher={launcher}"])
    assert cfg.hydra.launcher._target_ == target
    check_launcher([f"hydra/launcher={launcher}"])  # installed (the dev extra): no complaint


def test_a_missing_launcher_plugin_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    missing = {module for module, _ in LAUNCHER_PLUGINS.values()}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a)
    )
    with pytest.raises(InputError, match=r"pip install 'i2vedit\[slurm\]'"):
        check_launcher(["+item=x", "hydra/launcher=submitit_slurm"])
    with pytest.raises(InputError, match=r"pip install 'i2vedit\[joblib\]'"):
        check_launcher(["hydra/launcher=joblib"])
    check_launcher(["hydra/launcher=basic", "attention_matching.beta=[0.4,0.5]"])


def test_the_multirun_flag_may_follow_the_overrides():
    assert flags_first(["+item=dance", "-m", "a=1,2"]) == ["-m", "+item=dance", "a=1,2"]
    assert flags_first(["a=1"]) == ["a=1"]


def test_sheet_frames_span_the_video():
    assert sheet_frame_indices(8) == [0, 2, 5, 7]
    assert sheet_frame_indices(22) == [0, 7, 14, 21]
    assert sheet_frame_indices(2) == [0, 0, 1, 1]
