"""Every config group option composes; the configs ship inside the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from i2vedit.config import validate_edit_config
from tests.conftest import compose_edit, compose_train

CONF = resources.files("i2vedit.conf")
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_"))
OPTIONS = [
    (g, f.name.removesuffix(".yaml"))
    for g in GROUPS
    for f in (CONF / g).iterdir()
    if f.name.endswith(".yaml")
]


def test_groups_are_the_documented_ones():
    assert GROUPS == [
        "attention_matching",
        "conditioning",
        "data",
        "inversion",
        "item",
        "long_video",
        "lora",
        "metrics",
        "model",
        "sarp",
        "sweep",
        "trainer",
    ]


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_composes(group, option, tmp_path):
    prefix = "+" if group == "item" else ""
    overrides = [f"{prefix}{group}={option}", f"output_dir={tmp_path}"]
    if (group, option) == ("inversion", "none"):
        overrides.append("attention_matching=off")  # matching needs inversion
    cfg = compose_edit(overrides)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if group == "model" and option != "tiny":
        return  # a hub id: checked and fetched only when loading
    validate_edit_config(cfg)


#: every group but the named sweeps (edits only) composes in i2vedit-train too
TRAIN_GROUPS = tuple(g for g in GROUPS if g != "sweep")


@pytest.mark.parametrize(("group", "option"), [o for o in OPTIONS if o[0] in TRAIN_GROUPS])
def test_every_train_option_composes(group, option, tmp_path):
    from i2vedit.config import validate_train_config

    prefix = "+" if group == "item" else ""
    cfg = compose_train([f"{prefix}{group}={option}", f"output_dir={tmp_path}"])
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if group == "model" and option != "tiny":
        return
    validate_train_config(cfg)


#: an edit's overrides and a training's, given to both commands
SHARED_OVERRIDES = [
    "+item=dance",
    "num_steps=3",
    "attention_matching.beta=[0.4,0.5]",
    "attention_matching.mask_thr=[0.3,0.4]",
    "sarp=off",
    "inversion.method=edm",
    "metrics=off",
    "dtype=auto",
    "lora=ckpt250",
    "lora.max_steps=250",
    "lora.rank=4",
    "trainer=cpu",
    "long_video=skip_interval",
    "output_dir=x",
]


def test_train_and_edit_take_the_same_keys():
    """One item or one override list serves both commands (as the reference's one config)."""
    from i2vedit.config import dotted_keys, validate_train_config

    assert dotted_keys(compose_train(["output_dir=x"])) == dotted_keys(
        compose_edit(["output_dir=x"])
    )
    train, edit = compose_train(SHARED_OVERRIDES), compose_edit(SHARED_OVERRIDES)
    assert OmegaConf.to_container(train) == OmegaConf.to_container(edit)
    assert train.num_steps == 3 and list(train.attention_matching.beta) == [0.4, 0.5]
    assert not train.sarp.enabled and train.lora.rank == 4 and train.trainer.accelerator == "cpu"
    validate_train_config(train)  # training ignores the edit's settings
    validate_edit_config(edit)


@pytest.mark.parametrize("command", ["edit", "train"])
def test_unknown_keys_are_refused_with_the_closest(command):
    from hydra.errors import ConfigCompositionException

    from i2vedit.cli import composition_error
    from i2vedit.config import check_known_keys
    from i2vedit.errors import InputError

    compose = compose_edit if command == "edit" else compose_train
    for override, closest in [
        ("attention_matching.betta=0.4", "attention_matching.beta"),
        ("atention_matching.beta=[0.4,0.5]", "attention_matching.beta"),
        ("num_step=3", "num_steps"),
        ("beta=[0.4,0.5]", "attention_matching.beta"),
    ]:
        with pytest.raises(ConfigCompositionException) as caught:
            compose([override, "output_dir=x"])
        line = str(composition_error(caught.value, [override, "output_dir=x"]))
        key = override.partition("=")[0]
        assert line.startswith(f"{key}=") and line.endswith(f"no such key; did you mean {closest}?")
    # +KEY=VALUE gets past the schema while composing; the run refuses it
    cfg = compose(["+attention_matching.betta=0.4", "output_dir=x"])
    with pytest.raises(InputError, match="did you mean attention_matching.beta"):
        check_known_keys(cfg)
    check_known_keys(compose(["+item=demo", "output_dir=x"]))  # known keys pass


def test_lora_options():
    assert compose_edit(["output_dir=x"]).lora.checkpoint is None
    ckpt = compose_edit(["lora=ckpt250", "output_dir=x"]).lora
    assert (
        ckpt.checkpoint == 250
        and ckpt.rank == 32
        and ckpt.max_steps == 500
        and ckpt.checkpoint_every == 50
    )
    assert compose_edit(["lora=ckpt500", "output_dir=x"]).lora.checkpoint == 500
    train = compose_train(["output_dir=x"])
    assert list(train.lora.resolution) == [32, 48]
    assert list(compose_train(["model=svd", "output_dir=x"]).lora.resolution) == [512, 896]
    assert compose_train(["trainer=ddp", "output_dir=x"]).trainer.strategy == "ddp"


def test_defaults_follow_the_method():
    cfg = compose_edit(["output_dir=x"])
    assert cfg.model.kind == "tiny" and cfg.num_steps == 25
    assert list(cfg.attention_matching.beta) == [0.5, 0.8]
    assert cfg.sarp.noise_scale == 0.005 and cfg.sarp.threshold == 0.001
    assert cfg.conditioning.motion_bucket_id == 127 and cfg.conditioning.noise_aug_strength == 0.02
    assert cfg.data.chunk_size == cfg.model.num_frames
    svd = compose_edit(["model=svd_xt", "output_dir=x"])
    assert svd.data.chunk_size == 25 and list(svd.data.output_res) == [576, 1024]


def test_typed_schema_rejects_unknown_keys():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_edit(["data.vidoe_path=x.mp4"])


def test_configs_found_from_an_installed_wheel(tmp_path):
    """Build the wheel, unpack it, and compose from it alone (not the editable checkout)."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("i2vedit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    yamls = sorted(n for n in names if n.startswith("i2vedit/conf/") and n.endswith(".yaml"))
    assert {
        "i2vedit/conf/edit.yaml",
        "i2vedit/conf/train.yaml",
        "i2vedit/conf/app.yaml",
        "i2vedit/conf/model/svd_xt.yaml",
    } <= set(yamls)
    assert len(yamls) == 3 + len(OPTIONS)  # edit, train, app and every group option
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import i2vedit, i2vedit.config as c; c.register_configs();"
        "from hydra import compose, initialize_config_module as init;"
        "init('i2vedit.conf', version_base=None).__enter__();"
        "cfg = compose('edit', overrides=['model=svd_xt', 'output_dir=o']);"
        f"assert i2vedit.__file__.startswith({str(site)!r}), i2vedit.__file__;"
        "assert cfg.model.num_frames == 25"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path)


@pytest.mark.parametrize("root", ["edit", "train", "app"])
def test_yaml_defaults_are_the_schema_defaults(root):
    """One source of defaults: the dataclasses. The YAML files the root configs pick
    (conf/<root>.yaml and its default group options) restate them for readers, and composing
    with no overrides gives exactly the schema's defaults (output_dir aside: each root's own)."""
    from i2vedit.config import AppConfig, RunConfig

    if root == "app":
        from hydra import compose, initialize_config_module

        with initialize_config_module("i2vedit.conf", version_base=None):
            composed = compose("app")
        schema = OmegaConf.structured(AppConfig)
    else:
        composed = (compose_edit if root == "edit" else compose_train)(["output_dir=x"])
        schema = OmegaConf.structured(RunConfig)
        schema.output_dir = "x"
    assert OmegaConf.to_container(composed, resolve=True) == OmegaConf.to_container(
        schema, resolve=True
    )


def test_model_options_are_the_registry_ones():
    """Every conf/model option names the kind the registry files it under, and the registry
    lists every option (the app's model choices)."""
    from i2vedit.models.registry import KINDS, MODEL_OPTIONS

    on_disk = {o for g, o in OPTIONS if g == "model"}
    assert set(MODEL_OPTIONS) == on_disk and len(MODEL_OPTIONS) == len(on_disk)
    for kind in KINDS.values():
        for option in kind.options:
            assert compose_edit([f"model={option}", "output_dir=x"]).model.kind == kind.name


def test_validation_only_reads_the_config():
    """The reference's use_consistency_attention_control=true means long_video=skip_interval,
    read through long_video_mode: validating leaves the config as composed."""
    from i2vedit.config import long_video_mode, validate_train_config

    for validate in (validate_edit_config, validate_train_config):
        cfg = compose_edit(["use_consistency_attention_control=true", "output_dir=x"])
        before = OmegaConf.to_yaml(cfg)
        validate(cfg)
        assert OmegaConf.to_yaml(cfg) == before
        assert cfg.long_video.mode == "autoregressive" and long_video_mode(cfg) == "skip_interval"
    assert long_video_mode(compose_edit(["long_video=skip_interval", "output_dir=x"])) == (
        "skip_interval"
    )
    assert long_video_mode(compose_edit(["output_dir=x"])) == "autoregressive"


def test_config_checks_load_no_model_code():
    """The config layer and the model registry import neither torch nor diffusers nor any model
    or sampling module (kinds load lazily); the toy and tiny builders do not import each other."""
    code = (
        "import sys, i2vedit.config, i2vedit.models.registry, i2vedit.models.toy;"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', "
        "'transformers') or m.startswith(('i2vedit.models.svd', 'i2vedit.models.tiny', "
        "'i2vedit.core.edm', 'i2vedit.sampling', 'i2vedit.toy.items', 'i2vedit.toy.world'))];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
