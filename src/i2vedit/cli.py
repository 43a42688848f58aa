"""Command-line entry points (thin: the work is in i2vedit.tasks)."""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import hydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from i2vedit.config import check_known_keys, dotted_keys, no_such_key, register_configs
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
    _hydra_reports_errors()  # the config composed: a task's failure is reported as usual
    setup_logging()
    job = _multirun_job()
    try:
        check_known_keys(cfg)
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


def hydra_overrides(args: list[str]) -> list[str]:
    """The overrides among a command line's arguments, as Hydra's own argument parser takes
    them (its flags and their values left out)."""
    from hydra._internal.utils import get_args_parser

    return list(get_args_parser().parse_args(args).overrides)


#: what to tell about a value Hydra's override grammar refuses
QUOTE_ADVICE = "quote a value with spaces or non-ASCII letters"


def check_overrides(overrides: list[str]) -> None:
    """Parse each override as Hydra will; one it cannot parse (a path the shell split at a
    space, a non-ASCII letter unquoted) becomes an InputError that shows it quoted."""
    parser = OverridesParser.create()
    for i, arg in enumerate(overrides):
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as err:
            raise InputError("override", arg, _parse_advice(overrides, i, err)) from None


def _parse_advice(overrides: list[str], i: int, err: OverrideParseException) -> str:
    # the shell splits an unquoted KEY=VALUE at its spaces: join it and the pieces without "="
    # that follow (a bare piece fails to parse, so the failing one may be the second)
    start = i - 1 if "=" not in overrides[i] and i > 0 and "=" in overrides[i - 1] else i
    end = start + 1
    while end < len(overrides) and "=" not in overrides[end] and overrides[end][:1] != "~":
        end += 1
    key, eq, value = overrides[start].partition("=")
    value = " ".join([value, *overrides[start + 1 : end]])
    if eq and key.isascii():
        suggestion = _quoted(key, value)
        if suggestion is not None:
            plain = value.isascii() and " " not in value
            return f"cannot parse it; {'quote the value' if plain else QUOTE_ADVICE}: {suggestion}"
    example = shlex.quote('data.video_path="/videos/my clip.mp4"')
    if not eq:
        return f"cannot parse it: expected KEY=VALUE; {QUOTE_ADVICE}, e.g. {example}"
    lines = [line.strip() for line in str(err).splitlines()]
    skip = ("^", "See", "Error parsing override")
    hydra_says = next((line for line in lines if line and not line.startswith(skip)), "")
    hydra_says = hydra_says.split(" expecting ")[0]  # not the grammar's list of tokens
    return (
        f"cannot parse it{f' ({hydra_says})' if hydra_says else ''}; {QUOTE_ADVICE}, "
        "see https://hydra.cc/docs/advanced/override_grammar/basic"
    )


def _quoted(key: str, value: str) -> str | None:
    """``KEY="VALUE"`` (a list's items quoted one by one), shell-quoted, if Hydra parses it."""

    def quote(text: str) -> str:
        text = text.strip()
        if text[:1] in ("'", '"'):
            return text
        mark = "'" if '"' in text else '"'
        return f"{mark}{text}{mark}"

    if value.startswith("[") and value.endswith("]"):
        quoted = "[" + ",".join(quote(v) for v in value[1:-1].split(",")) + "]"
    else:
        quoted = quote(value)
    line = f"{key}={quoted}"
    try:
        OverridesParser.create().parse_overrides([line])
    except OverrideParseException:
        return None
    return shlex.quote(line)


#: Hydra prints a config it cannot compose in many lines and exits 1, unless
#: HYDRA_FULL_ERROR=1, when it raises: set while composing, so the error becomes one line,
#: then back to the user's own setting for the task
_FULL_ERROR = "HYDRA_FULL_ERROR"
_USER_FULL_ERROR = os.environ.get(_FULL_ERROR)


def _hydra_raises_errors() -> None:
    os.environ[_FULL_ERROR] = "1"


def _hydra_reports_errors() -> None:
    if _USER_FULL_ERROR is None:
        os.environ.pop(_FULL_ERROR, None)
    else:
        os.environ[_FULL_ERROR] = _USER_FULL_ERROR


def composition_error(err: Exception, overrides: list[str]) -> InputError:
    """Hydra's report of a config it cannot compose, as one InputError: an unknown key with
    the closest known keys, an unknown group option with the closest options, a value of the
    wrong type with omegaconf's reason."""
    cause = err.__cause__
    said = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    first = said[0] if said else type(err).__name__
    if isinstance(err, MissingConfigException) and err.options is not None:
        group, _, name = (err.missing_cfg_file or "").rpartition("/")
        options = sorted(err.options)
        found = difflib.get_close_matches(name, options, 3)
        hint = f"; did you mean {' or '.join(found)}?" if found else ""
        return InputError(group, name, f"no such option{hint} (options: {', '.join(options)})")
    # the override Hydra names: "Could not override 'KEY'", "Error merging override KEY=..."
    named = re.search(r"(?:override |')[+~]*([\w./-]+)", first)
    key = named.group(1) if named else None
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        # the unknown key: as typed (atention_matching.beta, where omegaconf names the first
        # unknown part), or inside a dict given to a known one (data={vidoe_path: x})
        unknown = key if key and key.startswith(f"{cause.full_key}.") else cause.full_key
        root = cause.parent_node._get_root() if cause.parent_node is not None else None
        known = dotted_keys(root) if isinstance(root, DictConfig) else []
        return no_such_key(unknown, _override_value(key, unknown, overrides), known)
    if key is None:
        return InputError("overrides", " ".join(overrides), first)
    reason = first
    if "No match in the defaults list" in first:
        reason = "no such config group"
    elif "does not exist" in first:
        reason = "no such key to delete"
    elif isinstance(cause, OmegaConfBaseException):
        reason = str(cause).strip().splitlines()[0]
        key = cause.full_key or key
    return InputError(key, _override_value(key, key, overrides), reason)


def _override_value(key: str | None, full_key: str, overrides: list[str]) -> Any:
    """The value the overrides give ``full_key`` (``key=VALUE``, or inside a dict value
    given to a parent key), as Hydra parses it; a sweep as typed."""
    if key is None:
        return None
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.key_or_group != key:
            continue
        if override.is_sweep_override():
            return (override.input_line or "").partition("=")[2]
        value = override.value()
        for part in full_key[len(key) :].split(".")[1:]:
            value = value.get(part) if isinstance(value, dict) else None
        return value
    return None


def _checked(main: Callable[[], None]) -> None:
    """Run a Hydra main with the command line checked first: an override Hydra cannot parse,
    a launcher whose plugin is missing, a config that does not compose (an unknown key) each
    become one line on stderr and exit code 2, before anything loads or is written."""
    sys.argv[1:] = flags_first(sys.argv[1:])
    try:
        overrides = hydra_overrides(sys.argv[1:])
        check_overrides(overrides)
        check_launcher(overrides)
    except InputError as err:
        _say(f"error: {err}")
        raise SystemExit(EXIT_BAD_INPUT) from None
    _hydra_raises_errors()
    try:
        main()
    except (HydraException, OmegaConfBaseException) as err:
        if _USER_FULL_ERROR == "1":
            raise  # the user asked for Hydra's full report
        _say(f"error: {composition_error(err, overrides)}")
        raise SystemExit(EXIT_BAD_INPUT) from None
    finally:
        _hydra_reports_errors()


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
