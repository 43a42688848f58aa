"""The edit task in-process on the tiny model: outputs, per-edit parameters, processors, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import i2vedit.runner as runner
import i2vedit.tasks.edit as edit_task
from i2vedit.attention.control import AttentionMatcher
from i2vedit.data.video import read_video_frames
from i2vedit.errors import InputError
from i2vedit.tasks.edit import run_edit
from i2vedit.tasks.inputs import read_inputs
from i2vedit.tasks.plan import plan_table
from tests.conftest import compose_edit, moving_square_frames


def test_edit_writes_one_video_per_keyframe_and_restores_processors(
    tiny_model, edit_overrides, keyframe, tmp_path, monkeypatch
):
    second = tmp_path / "green.png"
    frame = moving_square_frames(1)[0]
    frame[14:30, 4:18] = (40, 200, 60)
    Image.fromarray(frame).save(second)
    overrides = [o for o in edit_overrides if not o.startswith("data.keyframe_paths")]
    cfg = compose_edit(
        [
            *overrides,
            f"data.keyframe_paths=[{keyframe},{second}]",
            "+attention_matching.per_edit=[{beta:[0.4,0.5]}]",
        ]
    )
    seen = []
    original_init = AttentionMatcher.__init__

    def spy(self, store, params):
        seen.append(params)
        original_init(self, store, params)

    monkeypatch.setattr(AttentionMatcher, "__init__", spy)
    before = dict(tiny_model.unet.attn_processors)
    result = run_edit(cfg, model=tiny_model)
    after = tiny_model.unet.attn_processors
    assert all(after[k] is before[k] for k in before) and after.keys() == before.keys()

    assert [p.name for p in result.edited] == ["blue.mp4", "green.mp4"]
    assert [p.beta for p in seen] == [(0.4, 0.5), (0.5, 0.8)]  # per-edit override, then the default
    assert [p.mask_thr for p in seen] == [(0.35, 0.35)] * 2
    for path in result.edited:
        video = read_video_frames(path)
        assert video.shape == (8, 48, 64, 3)  # chunk_size frames at the source resolution
    source = read_video_frames(result.source)
    expected = torch.from_numpy(moving_square_frames()[:8]).float()
    assert (source.float() - expected).abs().mean() < 4  # the sampled clip (H.264 is lossy)
    assert "num_steps: 3" in result.config.read_text()
    assert result.record_bytes_per_step > 0


def test_edit_is_seeded(tiny_model, edit_overrides, tmp_path):
    cfg = compose_edit([*edit_overrides, "attention_matching=off", "inversion=none", "sarp=off"])
    a = read_video_frames(run_edit(cfg, model=tiny_model).edited[0])
    cfg2 = compose_edit(
        [
            *edit_overrides[:-2],
            f"output_dir={tmp_path / 'b'}",
            f"paths.cache_dir={tmp_path / 'other_cache'}",  # computed afresh, not from the cache
            "attention_matching=off",
            "inversion=none",
            "sarp=off",
        ]
    )
    b = read_video_frames(run_edit(cfg2, model=tiny_model).edited[0])
    assert torch.equal(a, b)


BAD = [
    ("data.video_path=/nonexistent/video.mp4", "data.video_path"),
    ("data.keyframe_paths=[/nonexistent/edit.png]", "data.keyframe_paths"),
    ("data.start_t=50", "data.start_t"),
    ("data.end_t=0.05", "data.end_t"),  # 1 frame at 12 fps: a clip needs at least 2
    (
        "+attention_matching.per_edit=[{beta:[0.4,0.5]},{beta:[0.5,0.8]}]",
        "attention_matching.per_edit",
    ),
    ("attention_matching.beta=[0.8,0.5]", "attention_matching.beta"),
    ("attention_matching.beta=[-0.1,0.5]", "attention_matching.beta"),
    ("attention_matching.mask_thr=[0.2,1.5]", "attention_matching.mask_thr"),
    (
        "+attention_matching.per_edit=[{mask_thr:[0.2,-1]}]",
        "attention_matching.per_edit[0].mask_thr",
    ),
    ("data.chunk_size=1", "data.chunk_size"),
    ("data.overlay_size=8", "data.overlay_size"),
    ("inversion=none", "attention_matching.enabled"),
    ("num_steps=1", "num_steps"),
    ("attention_matching.store=ssd", "attention_matching.store"),
    ("attention_matching.query_block_size=0", "attention_matching.query_block_size"),
    ("metrics.flow=sift", "metrics.flow"),
    ("metrics.clip_path=/nonexistent/clip", "metrics.clip_path"),
    ("metrics.raft_weights=/nonexistent/raft.pth", "metrics.raft_weights"),
    ("metrics.flow=raft", "metrics.raft_weights"),
    ("metrics.mask_threshold=2", "metrics.mask_threshold"),
]


@pytest.mark.parametrize(("override", "key"), BAD)
def test_bad_input_refused_before_model_load(override, key, edit_overrides, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded for bad input")

    monkeypatch.setattr(edit_task, "load_model", no_model)
    cfg = compose_edit([*edit_overrides, override])
    with pytest.raises(InputError) as err:
        run_edit(cfg)
    assert err.value.key == key
    assert "\n" not in str(err.value)
    assert not Path(cfg.output_dir).exists()


def test_model_folder_missing_a_component(tiny_model, edit_overrides, tmp_path):
    folder = tmp_path / "svd"
    tiny_model.pipe.save_pretrained(folder)
    cfg = compose_edit(
        [
            *edit_overrides,
            "model=svd",
            f"model.path={folder}",
            "model.num_frames=8",
            "model.resolution=[32,48]",
        ]
    )
    result = run_edit(cfg)  # the complete folder loads through from_pretrained and runs
    assert result.edited[0].is_file()
    (folder / "vae" / "config.json").unlink()
    cfg = compose_edit([*edit_overrides[:-1], "model=svd", f"model.path={folder}"])
    with pytest.raises(InputError, match="missing the 'vae' component") as err:
        run_edit(cfg)
    assert err.value.key == "model.path"


def test_pad_to_fit_writes_the_source_resolution(tiny_model, edit_overrides, monkeypatch):
    plans = []
    original = edit_task.ResolutionPlan.build

    def spy(*args, **kwargs):
        plans.append(original(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(edit_task.ResolutionPlan, "build", spy)
    cfg = compose_edit([*edit_overrides, "data.pad_to_fit=true", "attention_matching=off"])
    result = run_edit(cfg, model=tiny_model)
    assert plans[0].pad == (4, 4, 0, 0)  # 48x64 padded to 48x72, the 2:3 of 32x48
    assert read_video_frames(result.edited[0]).shape == (8, 48, 64, 3)


def test_edit_trains_a_missing_lora_first_then_reuses_it(
    tiny_model, edit_overrides, tmp_path, caplog
):
    lora = ["lora.checkpoint=2", "lora.max_steps=2", "lora.checkpoint_every=1", "lora.rank=4"]
    cfg = compose_edit([*edit_overrides, *lora])
    with caplog.at_level("INFO", logger="i2vedit"):
        result = run_edit(cfg, model=tiny_model)
    assert "training the motion LoRA of clip 0" in caplog.text
    (checkpoint,) = (tmp_path / "cache" / "lora").glob("square-*/clip_0/checkpoint-2")
    assert f"motion LoRA: loaded {checkpoint}" in caplog.text
    assert result.edited[0].is_file()
    assert not any("lora_" in n for n, _ in tiny_model.unet.named_parameters())
    caplog.clear()
    cfg = compose_edit(
        [
            *edit_overrides[:-2],
            f"output_dir={tmp_path / 'again'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            *lora,
        ]
    )
    with caplog.at_level("INFO", logger="i2vedit"):
        run_edit(cfg, model=tiny_model)
    assert "training the motion LoRA" not in caplog.text and "cache hit: edits" in caplog.text
    no_train = compose_edit([*edit_overrides, "lora.checkpoint=50", "lora.train_if_missing=false"])
    with pytest.raises(InputError, match="missing .*checkpoint-50.*existing: none"):
        run_edit(no_train, model=tiny_model)


def test_three_clips_chain_without_repeating_the_overlap(tiny_model, edit_overrides, monkeypatch):
    seen = []
    original = runner.encode_condition

    def spy(pipe, image, params, frames, generator, guided, latent=None):
        seen.append(latent is not None)
        return original(pipe, image, params, frames, generator, guided, latent)

    monkeypatch.setattr(runner, "encode_condition", spy)
    overrides = [o for o in edit_overrides if not o.startswith("data.end_clip_id")]
    # 12 fps up to 1.83 s: 22 sampled frames = 3 clips of 8 sharing 1 frame (0-7, 7-14, 14-21)
    cfg = compose_edit(
        [*overrides, "data.end_t=1.83", "attention_matching=off", "inversion=none", "sarp=off"]
    )
    result = run_edit(cfg, model=tiny_model)
    assert [p.clip.indices for p in result.plan] == [
        list(range(0, 8)),
        list(range(7, 15)),
        list(range(14, 22)),
    ]
    assert [(p.first_output_frame, p.new_frames) for p in result.plan] == [(0, 8), (8, 7), (15, 7)]
    assert seen == [False, True, True]  # clips 1 and 2: the previous clip's last frame and latent
    clips = result.clip_frames["blue"]
    for previous, current in zip(clips, clips[1:], strict=False):
        assert torch.equal(current[0], previous[-1])
    video = read_video_frames(result.edited[0])
    assert len(video) == 22 == sum(p.new_frames for p in result.plan)
    assert len(read_video_frames(result.source)) == 22


def test_continue_an_edit_from_a_saved_last_frame(tiny_model, edit_overrides, tmp_path):
    overrides = [o for o in edit_overrides if not o.startswith(("data.end_clip_id", "output_dir"))]
    fast = ["data.end_t=1.83", "attention_matching=off", "inversion=none", "sarp=off"]
    whole = run_edit(
        compose_edit([*overrides, *fast, f"output_dir={tmp_path / 'whole'}"]), model=tiny_model
    )
    first = run_edit(
        compose_edit([*overrides, *fast, "data.end_clip_id=1", f"output_dir={tmp_path / 'first'}"]),
        model=tiny_model,
    )
    (saved,) = first.last_frames
    assert saved.name == "blue_last.safetensors"
    rest = run_edit(
        compose_edit(
            [
                *overrides,
                *fast,
                "data.begin_clip_id=2",
                f"long_video.load_from_last_frames_latents=[{saved}]",
                f"paths.cache_dir={tmp_path / 'fresh_cache'}",  # computed, not taken from the cache
                f"output_dir={tmp_path / 'rest'}",
            ]
        ),
        model=tiny_model,
    )
    assert torch.equal(rest.clip_frames["blue"][0], whole.clip_frames["blue"][2])
    assert len(read_video_frames(rest.edited[0])) == 7  # the clip's new frames only
    wrong = compose_edit(
        [
            *overrides,
            *fast,
            "data.begin_clip_id=1",
            f"long_video.load_from_last_frames_latents=[{saved}]",
        ]
    )
    with pytest.raises(InputError, match="continue with data.begin_clip_id=2"):
        run_edit(wrong, model=tiny_model)


def test_skip_interval_continued_at_a_later_clip(tiny_model, edit_overrides, tmp_path):
    """A skip-interval run that starts at clip 2 from a saved last frame attends to clip 0 as
    the uninterrupted run did: clip 0 is inverted and edited again for its keys and values
    only (a fresh cache here), and clip 2 comes out identical."""
    overrides = [o for o in edit_overrides if not o.startswith(("data.end_clip_id", "output_dir"))]
    fast = ["data.end_t=1.83", "num_steps=2", "long_video=skip_interval"]
    whole = run_edit(
        compose_edit([*overrides, *fast, f"output_dir={tmp_path / 'whole'}"]), model=tiny_model
    )
    first = run_edit(
        compose_edit([*overrides, *fast, "data.end_clip_id=1", f"output_dir={tmp_path / 'first'}"]),
        model=tiny_model,
    )
    rest = run_edit(
        compose_edit(
            [
                *overrides,
                *fast,
                "data.begin_clip_id=2",
                f"long_video.load_from_last_frames_latents=[{first.last_frames[0]}]",
                f"paths.cache_dir={tmp_path / 'fresh_cache'}",
                f"output_dir={tmp_path / 'rest'}",
            ]
        ),
        model=tiny_model,
    )
    assert [(p.clip.clip_id, p.anchor, p.new_frames) for p in rest.plan] == [
        (0, True, 0),
        (2, False, 7),
    ]
    assert len(rest.clip_frames["blue"]) == 1
    assert torch.equal(rest.clip_frames["blue"][0], whole.clip_frames["blue"][2])
    assert len(read_video_frames(rest.edited[0])) == 7
    assert len(read_video_frames(rest.source)) == 7
    # plain chaining would have given another clip 2: the attention to clip 0 is what agrees
    plain = run_edit(
        compose_edit(
            [
                *overrides,
                *fast[:-1],
                "data.begin_clip_id=2",
                f"long_video.load_from_last_frames_latents=[{first.last_frames[0]}]",
                f"output_dir={tmp_path / 'plain'}",
            ]
        ),
        model=tiny_model,
    )
    assert not torch.equal(plain.clip_frames["blue"][0], whole.clip_frames["blue"][2])


@pytest.mark.parametrize(
    ("end_t", "ranges"),
    [
        # 12 sampled frames, chunk 8, overlay 1: a full clip, then a shorter one of 5
        (0.95, [range(0, 8), range(7, 12)]),
        # 22 frames: three full clips; 24 (the whole video): three, then one of 3
        (1.83, [range(0, 8), range(7, 15), range(14, 22)]),
        ("null", [range(0, 8), range(7, 15), range(14, 22), range(21, 24)]),
    ],
)
def test_every_sampled_frame_is_edited_once(end_t, ranges, tiny_model, edit_overrides):
    overrides = [o for o in edit_overrides if not o.startswith("data.end_clip_id")]
    cfg = compose_edit(
        [*overrides, f"data.end_t={end_t}", "attention_matching=off", "inversion=none", "sarp=off"]
    )
    result = run_edit(cfg, model=tiny_model)
    frames = ranges[-1].stop
    assert [p.clip.indices for p in result.plan] == [list(r) for r in ranges]
    assert [len(c) for c in result.clip_frames["blue"]] == [len(r) for r in ranges]
    video = read_video_frames(result.edited[0])
    assert len(video) == frames == sum(p.new_frames for p in result.plan)
    source = read_video_frames(result.source)
    expected = torch.from_numpy(moving_square_frames()[:frames]).float()
    assert len(source) == frames
    assert (source.float() - expected).abs().mean() < 6  # the sampled frames, in order, once
    title, columns, rows, caption = plan_table(cfg, read_inputs(cfg), result.plan)
    lengths = [row[columns.index("frames")] for row in rows]
    assert lengths == [str(len(r)) if len(r) == 8 else f"{len(r)} (short)" for r in ranges]
    assert caption.startswith(f"output: {frames} frames")


def test_a_short_last_clip_with_skip_interval_attention(tiny_model, edit_overrides, monkeypatch):
    """12 sampled frames with skip-interval attention on: clip 1 (5 frames) attends to clip 0's
    8 frames beside its own in inversion and sampling; every frame is written once."""
    from i2vedit.attention.control import AttentionController

    seen = []
    original = AttentionController.temporal_kv

    def spy(self, layer, k, v):
        k2, v2 = original(self, layer, k, v)
        if layer.kind == "temporal":
            seen.append((self.kv_extra is not None, k.shape[-2], k2.shape[-2]))
        return k2, v2

    monkeypatch.setattr(AttentionController, "temporal_kv", spy)
    overrides = [o for o in edit_overrides if not o.startswith("data.end_clip_id")]
    cfg = compose_edit([*overrides, "data.end_t=0.95", "num_steps=2", "long_video=skip_interval"])
    result = run_edit(cfg, model=tiny_model)
    assert len(read_video_frames(result.edited[0])) == 12
    assert {(own, seen_) for extra, own, seen_ in seen if extra} == {(5, 13)}
    assert {(own, seen_) for extra, own, seen_ in seen if not extra} == {(8, 8)}


def test_overlay_0_leaves_a_one_frame_last_clip(tiny_model, edit_overrides):
    """chunk 8, overlay 0, 9 frames: the ninth frame is a clip of its own, conditioned on the
    eighth edited frame (SVD samples one frame as well as many)."""
    overrides = [o for o in edit_overrides if not o.startswith("data.end_clip_id")]
    cfg = compose_edit([*overrides, "data.end_t=0.7", "data.overlay_size=0", "num_steps=2"])
    result = run_edit(cfg, model=tiny_model)
    assert [len(p.clip.frames) for p in result.plan] == [8, 1]
    video = read_video_frames(result.edited[0])
    assert len(video) == 9 and torch.isfinite(video.float()).all()


@pytest.mark.parametrize(
    "mode",
    [
        "long_video=skip_interval",
        "use_consistency_attention_control=true",
        "long_video=autoregressive",
    ],
)
def test_skip_interval_attention_sees_clip_0(mode, tiny_model, edit_overrides, monkeypatch):
    from i2vedit.attention.control import AttentionController, AttentionMatcher, AttentionRecorder

    seen = []
    original = AttentionController.temporal_kv

    def spy(self, layer, k, v):
        k2, v2 = original(self, layer, k, v)
        if layer.kind == "temporal":
            kind = "inversion" if isinstance(self, AttentionRecorder) else "sampling"
            assert isinstance(self, AttentionRecorder | AttentionMatcher)
            seen.append((kind, self.kv_extra is not None, k.shape[-2], k2.shape[-2]))
        return k2, v2

    monkeypatch.setattr(AttentionController, "temporal_kv", spy)
    overrides = [o for o in edit_overrides if not o.startswith("data.end_clip_id")]
    cfg = compose_edit([*overrides, "data.end_t=1.83", "num_steps=2", mode])
    result = run_edit(cfg, model=tiny_model)
    assert len(read_video_frames(result.edited[0])) == 22
    with_extra = {(kind, n) for kind, extra, _, n in seen if extra}
    without = {(kind, n) for kind, extra, _, n in seen if not extra}
    if mode.endswith("autoregressive"):
        assert with_extra == set() and without == {("inversion", 8), ("sampling", 8)}
    else:  # clips 1 and 2 see clip 0's 8 frames beside their own 8, in inversion and sampling
        assert with_extra == {("inversion", 16), ("sampling", 16)}
        assert without == {("inversion", 8), ("sampling", 8)}  # clip 0 itself


def test_any_clip_length_on_any_model(tiny_model, edit_overrides, caplog):
    """data.chunk_size need not be the model's frame count: 5-frame clips on the 8-frame tiny
    model edit (and say so in one log line); 11-frame clips on SVD pass the checks."""
    from i2vedit.config import validate_edit_config

    svd = compose_edit(["model=svd", "data.chunk_size=11", "output_dir=x"])
    assert svd.model.num_frames == 14 and svd.data.chunk_size == 11
    try:
        validate_edit_config(svd)
    except InputError as err:  # no weights here: only the model folder may be refused
        assert err.key == "model.path", err
    overrides = [o for o in edit_overrides if not o.startswith("data.end_clip_id")]
    cfg = compose_edit([*overrides, "data.end_t=0.95", "data.chunk_size=5", "num_steps=2"])
    with caplog.at_level("INFO", logger="i2vedit"):
        result = run_edit(cfg, model=tiny_model)
    assert [len(p.clip.frames) for p in result.plan] == [5, 5, 4]
    assert len(read_video_frames(result.edited[0])) == 12
    lines = [r.getMessage() for r in caplog.records if "model.num_frames" in r.getMessage()]
    assert lines == [
        "clips of 5 and 4 frames on a model made for model.num_frames=8 (it samples any count)"
    ]
