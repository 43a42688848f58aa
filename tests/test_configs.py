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


TRAIN_GROUPS = ("conditioning", "data", "item", "lora", "model", "trainer")


@pytest.mark.parametrize(("group", "option"), [o for o in OPTIONS if o[0] in TRAIN_GROUPS])
def test_every_train_option_composes(group, option, tmp_path):
    from i2vedit.config import validate_train_config

    prefix = "+" if group == "item" else ""
    cfg = compose_train([f"{prefix}{group}={option}", f"output_dir={tmp_path}"])
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if group == "model" and option != "tiny":
        return
    validate_train_config(cfg)


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
