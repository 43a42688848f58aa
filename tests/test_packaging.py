"""The wheel installs whole: every command's module, the app, the configs and the toy weights.

The wheel is built from a copy of the project (so no build/ or *.egg-info lands in the checkout)
and installed with ``pip install --no-deps --target``; its dependencies come from the running
virtualenv. The checks run in a child Python that cannot see the source tree:

- ``python -S`` processes no ``.pth`` file, so the editable install's import hook (setuptools'
  ``__editable__.i2vedit-*.pth``, which would quietly serve ``src/i2vedit/<anything missing
  from the wheel>``) never loads, whatever kind of editable install the virtualenv holds (a
  meta-path finder or a plain path entry);
- ``PYTHONPATH`` is the installed wheel, then the running interpreter's site-packages (for the
  dependencies), and the working folder is an empty temp folder;
- and the child reports the file of every ``i2vedit`` module it loaded, which must all lie in
  the installed wheel.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: What the wheel is built from (pyproject.toml names README.md as the long description).
PROJECT_FILES = ("pyproject.toml", "setup.py", "README.md", "src", "conf")

#: Run in the child: import every console script's function, the app, the configs (composed
#: through Hydra as the commands find them) and the toy weights; report what it loaded.
CHILD = """
import importlib, importlib.resources, json, sys

scripts, report = json.loads(sys.argv[1]), sys.argv[2]
for name, target in scripts.items():
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    assert callable(obj), (name, target)

import i2vedit.app.jobs, i2vedit.app.ui
from hydra import compose, initialize_config_module
from i2vedit.config import register_configs
from i2vedit.models.toy import TOY_WEIGHTS, check_toy_weights

register_configs()
with initialize_config_module("i2vedit.conf", version_base=None):
    cfg = compose("edit", overrides=["+item=dance"])
check_toy_weights()
conf = importlib.resources.files("i2vedit.conf")
yaml = sorted(str(p.relative_to(conf)) for p in conf.rglob("*.yaml"))
modules = {
    name: getattr(module, "__file__", None)
    for name, module in sys.modules.items()
    if name == "i2vedit" or name.startswith("i2vedit.")
}
with open(report, "w") as f:
    json.dump({"modules": modules, "yaml": yaml, "weights": str(TOY_WEIGHTS)}, f)
"""


def _build_wheel(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
            shutil.copytree(source, tree / name, ignore=ignore)
        else:
            tree.mkdir(exist_ok=True)
            shutil.copy2(source, tree / name)
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    # --no-build-isolation: setuptools and wheel come from the dev extra, so no download
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(tree)]
    proc = subprocess.run(build, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = dist.glob("i2vedit-*.whl")
    return wheel


def test_the_wheel_installs_whole(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped_conf = {n.removeprefix("i2vedit/conf/") for n in names if n.startswith("i2vedit/conf/")}
    source_conf = {str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml")}
    assert source_conf <= shipped_conf, sorted(source_conf - shipped_conf)
    assert {"item/dance.yaml", "sweep/beta.yaml", "edit.yaml"} <= shipped_conf

    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "-q"]
    proc = subprocess.run(
        [*install, "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr

    # the console scripts as pip installs them: the wheel's entry points (from pyproject.toml)
    (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
    parser = configparser.ConfigParser()
    parser.read_string(zipfile.ZipFile(wheel).read(entry_points).decode())
    scripts = dict(parser["console_scripts"])
    assert "i2vedit-app" in scripts and "i2vedit-edit" in scripts
    deps = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        deps.append(site.getusersitepackages())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), *deps]), OMP_NUM_THREADS="1")
    work = tmp_path / "work"
    work.mkdir()
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-S", "-c", CHILD, json.dumps(scripts), str(report)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=work,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    loaded = json.loads(report.read_text())
    installed = target.resolve() / "i2vedit"
    for name in ("i2vedit.app.jobs", "i2vedit.app.ui", "i2vedit.conf", "i2vedit.cli"):
        assert name in loaded["modules"]
    for name, file in loaded["modules"].items():
        assert file is not None and Path(file).resolve().is_relative_to(installed), (name, file)
    assert set(loaded["yaml"]) == source_conf
    weights = Path(loaded["weights"])
    assert weights.resolve().is_relative_to(installed) and weights.stat().st_size > 0
