"""Command-line entry points (thin: the work is in i2vedit.tasks)."""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import hydra
from omegaconf import DictConfig

from i2vedit.config import register_configs
from i2vedit.errors import EXIT_BAD_INPUT, InputError
from i2vedit.progress import CONSOLE, setup_logging

register_configs()
T = TypeVar("T")
log = logging.getLogger(__name__)

#: Hydra launchers that come from plugins: the plugin's module and the extra that installs it
LAUNCHER_PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
}


def _say(line: str) -> None:
    CONSOLE.print(line, soft_wrap=True, markup=False, highlight=False)


def check_launcher(args: list[str]) -> None:
    """Refuse a ``hydra/launcher=NAME`` whose plugin is not installed, naming the extra."""
    for arg in args:
        key, _, name = arg.lstrip("+~").partition("=")
        if key != "hydra/launcher" or name not in LAUNCHER_PLUGINS:
            continue
        module, extra = LAUNCHER_PLUGINS[name]
        if importlib.util.find_spec(module) is None:
            raise InputError(
                "hydra/launcher",
                name,
                f"needs the Hydra {name.split('_')[0]} launcher plugin: pip install 'i2vedit[{extra}]'",
            )


def _multirun_job() -> tuple[Path, list[str]] | None:
    """(the job's folder, its overrides) inside a Hydra multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    return Path(hc.runtime.output_dir), list(hc.overrides.task)


def _run(task: Callable[[DictConfig], T], cfg: DictConfig) -> T | None:
    """Run a task; bad input becomes one line on stderr and exit code 2. In a sweep, a failed
    job is recorded in its folder and the others go on (the sweep report lists it)."""
    setup_logging()
    job = _multirun_job()
    try:
        return task(cfg)
    except InputError as err:
        _say(f"error: {err}")
        if job is None:
            raise SystemExit(EXIT_BAD_INPUT) from None
        failure: Exception = err
    except Exception as err:
        if job is None:
            raise
        log.exception("job %s failed", job[0].name)
        failure = err
    from i2vedit.report import record_failed_job

    record_failed_job(*job, failure)
    return None


def flags_first(args: list[str]) -> list[str]:
    """Move ``-m``/``--multirun`` before the overrides, so ``i2vedit-edit +item=NAME -m
    'attention_matching.beta=...'`` works as written (Hydra's parser wants flags first)."""
    flags = [a for a in args if a in ("-m", "--multirun")]
    return flags + [a for a in args if a not in flags]


def _checked(main: Callable[[], None]) -> None:
    sys.argv[1:] = flags_first(sys.argv[1:])
    try:
        check_launcher(sys.argv[1:])
    except InputError as err:
        _say(f"error: {err}")
        raise SystemExit(EXIT_BAD_INPUT) from None
    main()


@hydra.main(version_base=None, config_path="pkg://i2vedit.conf", config_name="edit")
def _edit(cfg: DictConfig) -> None:
    from i2vedit.tasks.edit import run_edit

    result = _run(run_edit, cfg)
    for path in result.written if result is not None else []:
        _say(f"wrote {path}")


@hydra.main(version_base=None, config_path="pkg://i2vedit.conf", config_name="train")
def _train(cfg: DictConfig) -> None:
    from i2vedit.tasks.train import run_train

    result = _run(run_train, cfg)
    for clip_id, folder in result.clip_dirs.items() if result is not None else []:
        _say(
            f"clip {clip_id}: {folder} (checkpoints {', '.join(map(str, result.checkpoints[clip_id]))})"
        )


@hydra.main(version_base=None, config_path="pkg://i2vedit.conf", config_name="app")
def _app(cfg: DictConfig) -> None:
    _run(_serve, cfg)


def _serve(cfg: DictConfig) -> None:
    from i2vedit.app.jobs import AppState, check_settings

    check_settings(cfg)
    state = AppState.create(cfg)
    try:
        state.defaults()  # the edit overrides compose, before the server starts
        from i2vedit.app.ui import serve
    except BaseException:
        state.folders.close()
        raise
    serve(state)


#: i2vedit-app's flags, as the app config's keys
APP_FLAGS = {
    "--server-name": "server_name",
    "--server-port": "server_port",
    "--port": "server_port",
}


def app_flags(args: list[str]) -> list[str]:
    """``--server-name HOST`` / ``--port N`` (also ``--flag=value``) as Hydra overrides."""
    out, i = [], 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        if flag in APP_FLAGS:
            if not eq:
                if i + 1 >= len(args):
                    raise InputError(flag, None, "needs a value")
                value, i = args[i + 1], i + 1
            out.append(f"{APP_FLAGS[flag]}={value}")
        else:
            out.append(args[i])
        i += 1
    return out


def app() -> None:
    """``i2vedit-app``: the editing page (Gradio) on server_name:server_port."""
    try:
        sys.argv[1:] = app_flags(sys.argv[1:])
        if importlib.util.find_spec("gradio") is None:
            raise InputError(
                "i2vedit-app", "gradio", "is not installed: pip install 'i2vedit[app]'"
            )
    except InputError as err:
        _say(f"error: {err}")
        raise SystemExit(EXIT_BAD_INPUT) from None
    _checked(_app)


def edit() -> None:
    """``i2vedit-edit``: edit a video from one or more edited first frames (``-m``: a sweep)."""
    _checked(_edit)


def train() -> None:
    """``i2vedit-train``: train the motion LoRA of every selected clip."""
    _checked(_train)
