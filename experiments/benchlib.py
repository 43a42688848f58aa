"""What the benchmarks (``bench_edit.py``, ``bench_train.py``) share: their config and model,
stage timing with peak memory, and the tables they print and write into ``docs/BENCHMARKS.md``.

- :func:`bench_config`: the task's config as its command composes it, with the benchmark's
  overrides (every value a benchmark runs with comes from there);
- :func:`build_model`: the tiny model, or the full-size SVD architecture with random weights;
- :class:`Meter`: times stages (synchronised on accelerators) with their peak memory;
- :func:`markdown_table`, :func:`rich_table`, :func:`write_section`,
  :func:`environment_lines`: the report.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import importlib.util
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
import transformers
from rich.markup import escape
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("i2vedit") is None:  # a checkout without the package installed
    sys.path.insert(0, str(ROOT / "src"))

from omegaconf import DictConfig  # noqa: E402

from i2vedit.files import write_text  # noqa: E402
from i2vedit.models.compile import compile_repeated_blocks  # noqa: E402
from i2vedit.models.specs import build_full_size_pipeline  # noqa: E402
from i2vedit.models.svd import LoadedModel, load_model  # noqa: E402
from i2vedit.progress import LogConsole, StepListener, step_listener  # noqa: E402

log = logging.getLogger("benchlib")
console = LogConsole()  #: stdout; off a terminal the tables come out whole

#: torch.OutOfMemoryError is torch >= 2.5; without it no run is reported as out of memory.
OutOfMemory = getattr(torch, "OutOfMemoryError", MemoryError)

GB = 1e9
MB = 1e6

#: ``--model`` of the benchmarks -> the ``conf/model`` option whose values they run with
MODEL_OPTIONS = {"tiny": "tiny", "full": "svd"}

#: the default of the benchmarks' ``--out``
BENCHMARKS_MD = ROOT / "docs" / "BENCHMARKS.md"


# --------------------------------------------------------------------------- config and model


def compose_config(task: str, overrides: list[str]) -> DictConfig:
    """``conf/<task>.yaml`` with ``overrides``, as ``i2vedit-<task>`` composes it."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from i2vedit.config import register_configs

    register_configs()
    if GlobalHydra.instance().is_initialized():
        return compose(task, overrides=overrides)
    with initialize_config_module("i2vedit.conf", version_base=None):
        return compose(task, overrides=overrides)


def bench_config(task: str, model: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The config a benchmark runs with: ``task``'s, with the ``conf/model`` option of
    ``--model`` and ``overrides``."""
    return compose_config(task, [f"model={MODEL_OPTIONS[model]}", *overrides])


def build_model(
    model: str,
    cfg: DictConfig,
    device: torch.device,
    dtype: torch.dtype,
    option: str | None = None,
):
    """``--model tiny``: the tiny model of ``cfg.model`` as a run loads it; ``--model full``:
    the full-size architecture of its ``conf/model`` option (or ``option``: svd_xt) with
    random weights (seeded by ``model.seed``), built on ``device``; its UNet's blocks compiled
    with ``cfg.compile``. Returns a ``LoadedModel``."""
    m, compile = cfg.model, bool(cfg.get("compile", False))
    if model == "full":
        pipe = build_full_size_pipeline(device, dtype, m.seed, option or MODEL_OPTIONS[model])
        if compile:
            compile_repeated_blocks(pipe.unet)
        return LoadedModel(pipe, device, dtype, f"full-size {MODEL_OPTIONS[model]}, random")
    return load_model(m.kind, m.path, m.seed, m.variant, device, dtype, compile)


def latents_hw(pipe, height: int, width: int) -> tuple[int, int]:
    return height // pipe.vae_scale_factor, width // pipe.vae_scale_factor


def millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def model_summary(pipe) -> str:
    return (
        f"UNet {millions(pipe.unet):.1f}M, VAE {millions(pipe.vae):.1f}M, "
        f"CLIP image encoder {millions(pipe.image_encoder):.1f}M parameters"
    )


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------- measurement


def synchronize(device: torch.device) -> None:
    if device.type in ("cpu", "meta"):
        return
    if hasattr(torch, "accelerator"):
        torch.accelerator.synchronize(device)
    else:
        getattr(torch, device.type).synchronize()


def empty_cache(device: torch.device) -> None:
    gc.collect()
    if device.type in ("cpu", "meta"):
        return
    owner = getattr(torch, "accelerator", None) or getattr(torch, device.type)
    fn = getattr(owner, "empty_cache", None)
    if fn is not None:
        fn()


def _accelerator_call(device: torch.device, name: str) -> int | None:
    """``torch.accelerator.<name>()`` or the backend module's (``torch.<device type>``)."""
    for owner in (getattr(torch, "accelerator", None), getattr(torch, device.type, None)):
        fn = getattr(owner, name, None)
        if fn is None:
            continue
        try:
            result = fn(device)
        except (RuntimeError, TypeError, AttributeError):
            continue
        return None if result is None else int(result)
    return None


def _proc_status_bytes(key: str) -> int | None:
    """``VmHWM``/``VmRSS`` of /proc/self/status in bytes (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux: ``5`` into clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status_bytes("VmHWM") is not None


def _ru_maxrss_bytes() -> int:
    import resource  # Unix only; imported where it is needed

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@dataclass
class StageRow:
    name: str
    seconds: float
    steps: int | None
    peak: int | None
    held: int | None
    note: str = ""


@dataclass
class _OpenStage:
    name: str
    steps: int | None
    note: str
    start: float


@dataclass
class Meter:
    """Times stages and records their peak memory; ``enabled=False`` only synchronises.

    A stage is a ``with meter.stage(...)`` block, or runs from :meth:`begin` to :meth:`end`
    (for stages bounded by callbacks); a stage that runs out of memory is kept, marked."""

    device: torch.device
    enabled: bool = True
    rows: list[StageRow] = field(default_factory=list)
    rss_resettable: bool = False
    _open: _OpenStage | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.on_host = self.device.type == "cpu"
        if self.on_host:
            self.rss_resettable = _reset_rss_peak()

    @property
    def memory_label(self) -> tuple[str, str]:
        if not self.on_host:
            return "peak allocated (GB)", "allocated after (GB)"
        if self.rss_resettable:
            return "peak RSS of process (GB)", "RSS after (GB)"
        return "peak RSS of process so far (GB)", "RSS after (GB)"

    def row(self, name: str) -> StageRow | None:
        return next((row for row in self.rows if row.name == name), None)

    def _reset(self) -> None:
        if self.on_host:
            if self.rss_resettable:
                _reset_rss_peak()
        else:
            for owner in (getattr(torch, "accelerator", None), getattr(torch, self.device.type)):
                fn = getattr(owner, "reset_peak_memory_stats", None)
                if fn is not None:
                    with contextlib.suppress(RuntimeError, TypeError, AttributeError):
                        fn(self.device)
                        return

    def _peak(self) -> int | None:
        if not self.on_host:
            return _accelerator_call(self.device, "max_memory_allocated")
        if self.rss_resettable:
            return _proc_status_bytes("VmHWM")
        return _ru_maxrss_bytes()

    def _held(self) -> int | None:
        if not self.on_host:
            return _accelerator_call(self.device, "memory_allocated")
        return _proc_status_bytes("VmRSS")

    def begin(self, name: str, steps: int | None = None, note: str = "") -> None:
        """Start stage ``name`` (of ``steps`` UNet steps): synchronise, reset the peak."""
        synchronize(self.device)
        if self.enabled:
            self._reset()
            log.info("stage: %s", name)
        self._open = _OpenStage(name, steps, note, time.perf_counter())

    def end(self, error: BaseException | None = None) -> None:
        """End the open stage (if any): synchronise and record it; with ``error``, record it
        only when it is an out-of-memory error (the table still shows how far it got)."""
        stage, self._open = self._open, None
        if stage is None:
            return
        if error is None:
            synchronize(self.device)
        seconds = time.perf_counter() - stage.start
        if not self.enabled:
            return
        if error is None:
            row = StageRow(stage.name, seconds, stage.steps, self._peak(), self._held(), stage.note)
        elif isinstance(error, OutOfMemory):
            row = StageRow(stage.name, seconds, stage.steps, self._peak(), None, "OUT OF MEMORY")
        else:
            return
        self.rows.append(row)

    @contextlib.contextmanager
    def stage(
        self,
        name: str,
        steps: int | None = None,
        note: str = "",
        then: dict[str, tuple[str, int | None, str]] | None = None,
    ) -> Iterator[None]:
        """Measure the block as stage ``name``. ``then`` maps the name of a stepped stage of
        the package (its ``step_progress``) to a row (name, steps, note): when that stage
        reports its start within the block, the open row ends and that one begins, so one call
        of the runner gives a row per part."""
        self.begin(name, steps, note)
        try:
            if then is None:
                yield
            else:
                with step_listener(self._switch(then)):
                    yield
        except BaseException as err:
            self.end(err)
            raise
        self.end()

    def _switch(self, then: dict[str, tuple[str, int | None, str]]) -> StepListener:
        def listener(stage: str, done: int, total: int) -> None:
            if done == 0 and stage in then:
                self.end()
                self.begin(*then[stage])

        return listener


# --------------------------------------------------------------------------- reports


def fmt_gb(value: int | float | None) -> str:
    return "n/a" if value is None else f"{value / GB:.3f}"


def fmt_size(value: float) -> str:
    return f"{value / GB:.3f} GB" if value >= 0.1 * GB else f"{value / MB:.3f} MB"


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type in ("cpu", "meta"):
        host = f"{cpu_name()}, {os.cpu_count()} cores, torch threads: {torch.get_num_threads()}"
        return host if device.type == "cpu" else f"meta device on {host}"
    fn = getattr(getattr(torch, device.type, None), "get_device_name", None)
    return fn(device) if fn is not None else str(device)


def environment_lines(device: torch.device, extra: list[str]) -> list[str]:
    command = "python " + shlex.join([_display_path(sys.argv[0]), *sys.argv[1:]])
    return [
        f"- Command: `{command}`",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Device: {device_name(device)}",
        f"- Versions: torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}",
        *extra,
    ]


def _display_path(path: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(Path.cwd()))
    return path


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def rich_table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    """The table for the console; its text is shown as written (``[memory]`` is not markup)."""
    table = Table(title=escape(title))
    for i, name in enumerate(header):
        table.add_column(escape(name), justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


def show(title: str, header: list[str], rows: list[list[str]], lines: list[str] = ()) -> None:
    """Print a table, then ``lines``, on the console."""
    console.print(rich_table(title, header, rows))
    for line in lines:
        console.print(line, markup=False)


def write_section(path: Path, section: str, body: list[str]) -> None:
    """Replace the ``## section`` of ``path`` (up to the next heading of level 1 or 2) with
    ``body``, or append it; the rest of the file is kept."""
    heading = f"## {section}"
    lines = path.read_text().splitlines() if path.exists() else ["# Benchmarks"]
    block = [heading, "", *body]
    while block[-1] == "":
        block.pop()
    if heading in lines:
        start = lines.index(heading)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith(("# ", "## "))),
            len(lines),
        )
        tail = lines[end:]
        lines = lines[:start] + block + ([""] if tail else []) + tail
    else:
        while lines and lines[-1] == "":
            lines.pop()
        lines += ["", *block]
    write_text(path, "\n".join(lines) + "\n")
    log.info("wrote section %r of %s", section, path)
