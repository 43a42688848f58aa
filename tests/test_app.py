"""i2vedit-app: the job layer on the tiny model (no browser), and the page in headless
Chromium (Debian's ``chromium``, driven by Playwright; skipped where it is not installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from PIL import Image

from i2vedit.app.browser import CHROMIUM, chromium_page, running_app
from i2vedit.app.jobs import (
    RERUN_NAME,
    AppState,
    EditRequest,
    JobFolders,
    beta_presets,
    check_settings,
    check_upload,
    compose_edit,
    make_plan,
    overlay_mask,
    run_job,
)
from i2vedit.cli import app_flags
from i2vedit.config import AppConfig
from i2vedit.data.video import read_video_frames, write_video
from i2vedit.errors import InputError
from i2vedit.progress import Cancelled
from i2vedit.tasks.edit import run_edit

from .conftest import moving_square_frames


def app_state(tmp_path: Path, **settings) -> AppState:
    cfg = OmegaConf.structured(
        AppConfig(
            default_model="tiny",
            work_dir=str(tmp_path / "jobs"),
            edit_overrides=["num_steps=2", f"paths.cache_dir={tmp_path / 'cache'}"],
            **settings,
        )
    )
    return AppState.create(cfg)


@pytest.fixture
def clip15(tmp_path) -> tuple[Path, Path]:
    """15 frames at 7 fps (two 8-frame clips sharing one) and an edited first frame."""
    frames = moving_square_frames(15)
    video = write_video(tmp_path / "upload" / "square.mp4", frames, 7)
    edit = frames[0].copy()
    edit[14:30, 4:18] = (40, 60, 220)
    keyframe = tmp_path / "upload" / "blue.png"
    Image.fromarray(edit).save(keyframe)
    return video, keyframe


def uploaded(state: AppState, job, clip15, video_name: str, **settings) -> EditRequest:
    """A request over the two files as the page hands them over: copied into the job."""
    video, keyframe = clip15
    return EditRequest(
        video=state.folders.add_upload(job, video, video_name),
        keyframes=[state.folders.add_upload(job, keyframe, "blue.png")],
        **settings,
    )


def test_run_job_returns_the_videos_the_plan_and_every_step(tmp_path, clip15):
    state = app_state(tmp_path)
    job = state.folders.new()
    request = uploaded(state, job, clip15, "my clip.mp4")
    plans, steps = [], []
    result = run_job(state, request, job, plans.append, lambda *s: steps.append(s))

    assert [p.name for p in result.edited] == ["blue.mp4"]
    assert result.frames == 15
    assert len(read_video_frames(result.edited[0])) == 15
    assert len(read_video_frames(result.source)) == 15
    assert plans == [result.plan]
    assert result.plan.title == "edit plan: my_clip.mp4, 1 edit(s)"  # the upload, named safely
    assert [row[0] for row in result.plan.rows] == ["0", "1"]  # two clips, planned first
    assert "15 frames" in result.plan.caption
    # two steps each of the inversion and of the two clips' sampling, counted 0..2
    assert steps == [
        (stage, i, 2)
        for stage in ("inversion", "edit blue, clip 0", "inversion", "edit blue, clip 1")
        for i in range(3)
    ]
    assert set(result.metrics) == {"blue"}
    state.folders.close()
    assert not (tmp_path / "jobs" / job.id).exists()


def test_the_downloaded_config_reruns_the_same_edit(tmp_path, clip15, monkeypatch):
    video, keyframe = clip15
    state = app_state(tmp_path)
    job = state.folders.new()
    request = uploaded(state, job, clip15, "square.mp4", beta=(0.4, 0.5), seed=7)
    result = run_job(state, request, job)
    # the user's folder: the files under the names they uploaded, and rerun.yaml
    user = tmp_path / "user"
    user.mkdir()
    shutil.copy(video, user / "square.mp4")
    shutil.copy(keyframe, user / "blue.png")
    shutil.copy(result.rerun, user / RERUN_NAME)
    monkeypatch.chdir(user)
    # a fresh cache: the edit is computed again, not read back
    with initialize_config_dir(str(user), version_base=None):
        cfg = compose("rerun", overrides=[f"paths.cache_dir={tmp_path / 'cache2'}"])
    assert list(cfg.attention_matching.beta) == [0.4, 0.5] and cfg.seed == 7
    again = run_edit(cfg)
    assert again.cache.hits == []
    assert torch.equal(read_video_frames(again.edited[0]), read_video_frames(result.edited[0]))


def test_an_items_video_with_the_users_own_edited_frame(tmp_path, clip15):
    _, keyframe = clip15
    state = app_state(tmp_path)
    request = EditRequest(item="demo", keyframes=[keyframe], model="tiny")
    result = run_job(state, request, state.folders.new())
    assert [p.name for p in result.edited] == ["blue.mp4"]  # the upload, not the item's edit
    assert result.plan.title.startswith("edit plan: demo.mp4")  # the item's video
    rerun = OmegaConf.load(result.rerun)
    assert Path(rerun.data.video_path).is_relative_to(tmp_path / "cache")  # kept as it is
    assert rerun.data.keyframe_paths == [str(keyframe)]


def test_a_cancelled_job_stops_at_the_next_step_and_leaves_no_cache_entry(tmp_path, clip15):
    video, keyframe = clip15
    state = app_state(tmp_path)
    job = state.folders.new()
    request = EditRequest(video=video, keyframes=[keyframe])
    seen = []

    def cancel_at_first_sampling_step(stage, done, total):
        seen.append((stage, done))
        if stage.startswith("edit") and done == 1:
            raise Cancelled(f"{stage} at step {done}")

    with pytest.raises(Cancelled):
        run_job(state, request, job, listener=cancel_at_first_sampling_step)
    assert seen[-1] == ("edit blue, clip 0", 1)  # no step after the cancel
    cache = tmp_path / "cache"
    manifests = sorted(p.parent.parent.name for p in cache.rglob("manifest.json"))
    assert manifests == ["inversion"]  # the finished inversion only; no edit entry
    leftovers = [p for p in cache.rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    assert state.slots.free == state.slots.devices  # the device was given back
    state.folders.remove(job)
    # the same job again runs to the end from what was kept
    job = state.folders.new()
    result = run_job(state, EditRequest(video=video, keyframes=[keyframe]), job)
    assert len(read_video_frames(result.edited[0])) == 15


def test_training_steps_are_reported_and_a_cancel_keeps_only_whole_checkpoints(tmp_path, clip15):
    video, keyframe = clip15
    state = app_state(tmp_path)
    request = EditRequest(video=video, keyframes=[keyframe], end_t=1.1, lora_steps=2)
    seen = []

    def cancel_in_training(stage, done, total):
        seen.append((stage, done, total))
        if stage.startswith("train") and done == 1:
            raise Cancelled(f"{stage} at step {done}")

    with pytest.raises(Cancelled):
        run_job(state, request, state.folders.new(), listener=cancel_in_training)
    assert seen == [("train clip 0", 1, 2)]  # training is the first stage; nothing after
    lora = tmp_path / "cache" / "lora"
    assert not list(lora.rglob("checkpoint-*"))  # no checkpoint-2, nothing half-written
    assert not [p for p in lora.rglob("*") if p.name.startswith(".") and p.is_file()]
    steps = []
    result = run_job(state, request, state.folders.new(), listener=lambda *s: steps.append(s))
    assert [s for s in steps if s[0].startswith("train")] == [
        ("train clip 0", 1, 2),
        ("train clip 0", 2, 2),
    ]
    assert result.plan.rows[0][-1] == "train, then checkpoint-2"
    assert len(read_video_frames(result.edited[0])) == 8


def test_one_job_per_device_and_the_next_waits(tmp_path):
    state = app_state(tmp_path)
    slots = state.slots
    taken = [slots.take() for _ in slots.devices]
    got = []
    waiter = threading.Thread(target=lambda: got.append(slots.take()))
    waiter.start()
    waiter.join(timeout=0.5)
    assert waiter.is_alive() and got == []  # every device busy: the job waits
    slots.give(taken[0])
    waiter.join(timeout=10)
    assert got == [taken[0]]


def test_uploads_are_checked_with_the_clis_messages(tmp_path, clip15):
    video, keyframe = clip15
    types = [".mp4", ".mov"]
    with pytest.raises(InputError, match=r"^data.video_path='clip.txt': unsupported file type"):
        check_upload(video, "data.video_path", types, 10, "clip.txt")
    with pytest.raises(InputError, match=r"limit is max_upload_mb=0.001"):
        check_upload(video, "data.video_path", types, 0.001, "square.mp4")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    with pytest.raises(InputError, match=r"^data.video_path='corrupt.mp4': ") as err:
        check_upload(corrupt, "data.video_path", types, 10, "corrupt.mp4")
    assert str(tmp_path) not in str(err.value)  # the user's name, not the temp path
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"^data.keyframe_paths='broken.png': "):
        check_upload(broken, "data.keyframe_paths", [".png"], 10, "broken.png")
    check_upload(keyframe, "data.keyframe_paths", [".png"], 10, "blue.png")  # passes


def test_too_many_frames_are_refused_before_a_model_loads(tmp_path, clip15):
    video, keyframe = clip15
    state = app_state(tmp_path, max_frames=10)
    job = state.folders.new()
    with pytest.raises(InputError, match=r"15 frames would be sampled.*max_frames=10"):
        run_job(state, EditRequest(video=video, keyframes=[keyframe]), job)
    assert state.slots.loaded == {}


def test_request_overrides_by_hand():
    request = EditRequest(
        video=Path("/j/in put.mp4"),
        keyframes=[Path("/j/a.png"), Path("/j/b.png")],
        end_t=0.0,
        beta=(0.4, 0.5),
        lora_steps=60,
        sarp=False,
        model="svd",
        model_path="/models/it's",
    )
    assert request.overrides(["num_steps=2"], Path("/o")) == [
        "num_steps=2",
        "model=svd",
        "model.path='/models/it\\'s'",
        "data.video_path='/j/in put.mp4'",
        "data.toy_case=null",
        "data.keyframe_paths=['/j/a.png','/j/b.png']",
        "sarp.enabled=false",
        "data.end_t=null",
        "attention_matching.beta=[0.4,0.5]",
        "lora=none",
        "lora.checkpoint=60",
        "lora.max_steps=60",
        "lora.checkpoint_every=60",
        "output_dir='/o'",
    ]
    assert EditRequest(lora_steps=500).overrides([], None)[-1] == "lora.checkpoint_every=50"
    assert EditRequest(lora_steps=0).overrides([], None) == ["lora=none"]
    with pytest.raises(InputError, match="^item='nope'"):
        EditRequest(item="nope").overrides([], None)


def test_masks_become_mask_paths_overrides():
    masks = EditRequest(masks=["auto", None, Path("/j/my mask.png"), None])
    assert masks.overrides([], None) == ["data.mask_paths=['auto',null,'/j/my mask.png']"]
    # no mask on any edit: explicitly none (an item's own masks are overridden too)
    assert EditRequest(masks=[None, None]).overrides([], None) == ["data.mask_paths=null"]
    assert EditRequest().overrides([], None) == []  # None: the config's own


def test_a_jobs_overrides_carry_its_masks_into_the_edit_config(tmp_path, clip15):
    video, keyframe = clip15
    state = app_state(tmp_path)
    request = EditRequest(video=video, keyframes=[keyframe, keyframe], masks=["auto", keyframe])
    overrides = state.job_overrides(request, tmp_path / "out")
    assert f"data.mask_paths=['auto','{keyframe}']" in overrides
    assert list(compose_edit(overrides).data.mask_paths) == ["auto", str(keyframe)]


def test_overlay_mask_by_hand():
    frame = np.full((4, 6, 3), 100, np.uint8)
    frame[0, 0] = (0, 10, 255)
    mask = np.zeros((4, 6), bool)
    mask[:2, :3] = True
    out = overlay_mask(frame, mask, colour=(255, 0, 64), alpha=0.5)
    assert out[1, 1].tolist() == [178, 50, 82]  # (100 + 255) / 2 = 177.5 rounds up
    assert out[0, 0].tolist() == [128, 5, 160]  # (0 + 255) / 2, 10 / 2, (255 + 64) / 2
    assert (out[~mask] == frame[~mask]).all()  # the rest untouched
    # a mask at another size is laid over the frame by nearest neighbour
    small = np.zeros((2, 3), bool)
    small[0, 0] = True
    assert (overlay_mask(frame, small, (255, 0, 64)) != frame).any(-1).tolist() == [
        [True, True, False, False, False, False],
        [True, True, False, False, False, False],
        [False] * 6,
        [False] * 6,
    ]


def test_the_plan_shows_the_first_frames_mask_over_the_frame(tmp_path, clip15):
    from i2vedit.tasks.inputs import first_frame_mask

    video, keyframe = clip15
    state = app_state(tmp_path)
    request = EditRequest(video=video, keyframes=[keyframe], masks=["auto"])
    cfg = compose_edit(state.job_overrides(request, tmp_path / "out"))
    plan, _ = make_plan(cfg, 100)
    assert state.slots.loaded == {}  # no model loaded
    [(overlay, caption)] = plan.masks
    assert caption.startswith("blue: auto mask")
    mask = first_frame_mask(cfg, 0)
    assert mask is not None and mask[14:30, 4:18].all() and not mask[40:, 40:].any()
    first = read_video_frames(video)[0].numpy()
    assert np.array_equal(overlay, overlay_mask(first, mask))
    from i2vedit.app.ui import masks_html

    shown = masks_html(plan.masks)
    assert shown.count("<img") == 1 and "blue: auto mask" in shown
    # no mask: nothing to show
    plain = compose_edit(state.job_overrides(replace(request, masks=None), tmp_path / "o"))
    assert make_plan(plain, 100)[0].masks == []


def test_a_masked_job_shows_its_mask_video_beside_the_edit(tmp_path, clip15):
    from i2vedit.app.ui import Page, results_html

    video, keyframe = clip15
    state = app_state(tmp_path)
    page = Page(state)
    job = state.folders.new()
    with pytest.raises(InputError, match=r"^data.mask_paths\[0\]=None: upload a mask image"):
        page.masks(job, ["image", "none"], [None, None], [keyframe])
    mask_png = tmp_path / "upload" / "region.png"
    region = np.zeros((48, 64), np.uint8)
    region[10:34, 0:24] = 255
    Image.fromarray(region).save(mask_png)
    # two slots shown for two edited frames; the third slot is hidden and not read
    masks = page.masks(job, ["image", "auto", "auto"], [str(mask_png), None, None], [keyframe] * 2)
    assert masks == [job.inputs / "region.png", "auto"]
    request = uploaded(state, job, clip15, "square.mp4", masks=masks[:1])
    result = run_job(state, request, job)
    assert list(result.masks) == ["blue"] and result.masks["blue"].name == "blue_mask.mp4"
    shown = read_video_frames(result.masks["blue"]).numpy().mean(-1) > 127.5
    assert len(shown) == result.frames == 15
    assert shown[0, 12:32, 2:22].all() and not shown[0, 40:, 40:].any()
    rerun = OmegaConf.load(result.rerun)
    assert list(rerun.data.mask_paths) == ["region.png"]  # beside the other uploads
    html = results_html(result)
    assert html.index("blue.mp4") < html.index("blue_mask.mp4")  # beside the edit
    assert html.count("<video") == 3  # source, edit, mask: played in step
    state.folders.close()


def test_the_three_beta_presets_come_from_the_sweep_config():
    assert sorted(beta_presets().values()) == [(0.4, 0.5), (0.5, 0.8), (0.8, 0.9)]


def test_job_folders_keep_the_newest_and_serve_only_their_outputs(tmp_path):
    folders = JobFolders(tmp_path / "jobs", keep=2)
    jobs = [folders.new() for _ in range(3)]
    for job in jobs:
        (job.outputs / "a.mp4").write_bytes(b"x")
        folders.finish(job)
    assert not jobs[0].folder.exists() and jobs[1].folder.exists() and jobs[2].folder.exists()
    assert folders.file(jobs[0].id, "a.mp4") is None
    assert folders.file(jobs[2].id, "a.mp4") == jobs[2].outputs / "a.mp4"
    assert folders.file(jobs[2].id, "../inputs") is None
    assert folders.file(jobs[2].id, "missing.mp4") is None
    own = JobFolders(None, keep=1)
    own.new()
    own.close()
    assert not own.root.exists()


def test_app_flags_and_settings():
    assert app_flags(["--server-name", "0.0.0.0", "--port=8080", "keep_jobs=2"]) == [
        "server_name=0.0.0.0",
        "server_port=8080",
        "keep_jobs=2",
    ]
    with pytest.raises(InputError, match="^--port=None"):
        app_flags(["--port"])
    check_settings(OmegaConf.structured(AppConfig()))
    with pytest.raises(InputError, match="^server_port=70000"):
        check_settings(OmegaConf.structured(AppConfig(server_port=70000)))
    with pytest.raises(InputError, match="^default_model='sdxl'"):
        check_settings(OmegaConf.structured(AppConfig(default_model="sdxl")))


def test_the_app_config_composes_with_its_schema():
    with initialize_config_module("i2vedit.conf", version_base=None):
        cfg = compose("app", overrides=["server_port=8080", 'edit_overrides=["metrics=off"]'])
        with pytest.raises(ConfigCompositionException):
            compose("app", overrides=["no_such_key=1"])
    check_settings(cfg)
    assert (cfg.server_name, cfg.server_port, cfg.default_model) == ("127.0.0.1", 8080, "toy")
    assert list(cfg.edit_overrides) == ["metrics=off"]


def test_bad_settings_exit_2_with_one_line_before_serving(tmp_path):
    exe = Path(sys.executable).with_name("i2vedit-app")
    proc = subprocess.run(
        [str(exe), "--port", "70000"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: server_port=70000: must be a port number, 0..65535"
    ]
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- browser


@pytest.fixture
def served_app(tmp_path):
    """``i2vedit-app`` on 127.0.0.1 with the tiny model, as a user starts it."""
    overrides = ["default_model=tiny", f"work_dir={tmp_path / 'jobs'}"]
    overrides.append('edit_overrides=["num_steps=2"]')
    env = {"I2VEDIT_CACHE_DIR": str(tmp_path / "cache")}
    with running_app(overrides, tmp_path / "app.log", env) as url:
        yield url
    assert not any((tmp_path / "jobs").iterdir()), "job folders left after the app stopped"


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_the_page_edits_an_upload_and_reports_a_corrupt_one(served_app, clip15, tmp_path):
    pytest.importorskip("playwright.sync_api")
    video, keyframe = clip15
    corrupt = tmp_path / "upload" / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    with chromium_page() as page:
        page.goto(served_app)
        page.locator("#i2v-video input[type=file]").set_input_files(str(video))
        page.locator("#i2v-keyframes input[type=file]").set_input_files([str(keyframe)])
        # the source's first frame is offered for download once the video is in
        page.locator("#i2v-first-frame img").wait_for(timeout=60_000)
        # one mask slot per edited frame, named by it: an automatic mask
        page.get_by_text("masks: where each edit may change the video").click()
        slot = page.locator("#i2v-mask-mode-0")
        slot.get_by_text("mask of blue.png").wait_for(timeout=30_000)
        slot.get_by_label("auto").check()
        assert not page.locator("#i2v-mask-mode-1").is_visible()
        page.locator("#i2v-run").click()
        edited = page.locator("#i2v-results video").nth(1)
        edited.wait_for(timeout=180_000)
        # the plan showed the mask over the first frame; the mask video sits beside the edit
        assert page.locator("#i2v-plan-masks img").count() == 1
        assert page.locator("#i2v-results video").count() == 3
        assert page.locator("#i2v-results a.i2v-download", has_text="blue_mask.mp4").count() == 1
        state = edited.evaluate(
            """async (v) => {
              if (v.readyState < 1)
                await new Promise((r) => v.addEventListener('loadedmetadata', r, {once: true}));
              await v.play();
              await new Promise((r) => setTimeout(r, 700));
              const source = v.closest('.i2v-sync').querySelector('video');
              return {duration: v.duration, time: v.currentTime, paused: v.paused,
                      error: v.error && v.error.code, sourcePaused: source.paused};
            }"""
        )
        assert state["error"] is None
        assert state["duration"] > 0 and state["time"] > 0 and not state["paused"]
        assert not state["sourcePaused"]  # the source plays in step with the edit
        assert "done in" in page.locator("#i2v-status").inner_text()
        assert "edit plan: square.mp4" in page.locator("#i2v-plan-table").inner_text()
        page.screenshot(path=str(tmp_path / "result.png"), full_page=True)

        link = page.locator("#i2v-results a.i2v-download", has_text="blue.mp4")
        response = page.request.get(served_app + link.get_attribute("href"))
        assert response.ok and response.headers["content-type"] == "video/mp4"
        downloaded = tmp_path / "downloaded.mp4"
        downloaded.write_bytes(response.body())
        assert len(read_video_frames(downloaded)) == 15

        page.reload()
        page.locator("#i2v-video input[type=file]").set_input_files(str(corrupt))
        page.locator("#i2v-keyframes input[type=file]").set_input_files([str(keyframe)])
        page.locator("#i2v-keyframes").get_by_text("blue.png").wait_for(timeout=30_000)
        page.locator("#i2v-run").click()
        status = page.locator("#i2v-status")
        status.get_by_text("error: data.video_path='corrupt.mp4'").wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "corrupt.png"), full_page=True)

        # a long job, cancelled once it is stepping: it stops and says where
        page.reload()
        page.locator("#i2v-video input[type=file]").set_input_files(str(video))
        page.locator("#i2v-keyframes input[type=file]").set_input_files([str(keyframe)])
        page.locator("#i2v-keyframes").get_by_text("blue.png").wait_for(timeout=30_000)
        steps = page.locator("#i2v-steps input[type=number]")
        steps.fill("40")
        steps.press("Enter")
        page.locator("#i2v-run").click()
        page.locator("#i2v-stages").get_by_text("inversion").first.wait_for(timeout=120_000)
        page.locator("#i2v-cancel").click()
        status.get_by_text("cancelled (inversion at step").wait_for(timeout=60_000)
        assert "40/40" not in page.locator("#i2v-stages").inner_text()  # it stopped early
        page.screenshot(path=str(tmp_path / "cancelled.png"), full_page=True)
    assert (tmp_path / "result.png").stat().st_size > 0


def test_first_frames_of_items_and_uploads(tmp_path, clip15):
    from i2vedit.app.ui import Page

    video, _ = clip15
    page = Page(app_state(tmp_path))
    png, _, error = page.first_frame("(upload a video)", str(video), 0.0)
    assert error == ""
    first = np.asarray(Image.open(png))
    assert np.abs(first.astype(int) - moving_square_frames(1)[0]).mean() < 4
    png, _, error = page.first_frame("demo", None, 0.0)
    assert error == "" and Path(png).is_file()
    _, _, error = page.first_frame("(upload a video)", str(video), 99.0)
    assert error.startswith("error: data.start_t=99.0: ")


def test_picking_an_item_shows_its_own_settings(tmp_path):
    from i2vedit.app.ui import ITEM_MODEL, Page

    page = Page(app_state(tmp_path))
    upload = page.settings_of("(upload a video)")
    assert upload[2] == 7.0 and upload[11] == 2 and upload[-1] == "tiny"  # the app's defaults
    dance = page.settings_of("dance")
    assert dance[4] == "local edits (0.5, 0.8)" and dance[5:7] == [0.5, 0.8]
    assert dance[-1] == ITEM_MODEL  # the item's own model (toy)
