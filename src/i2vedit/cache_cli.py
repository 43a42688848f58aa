"""``i2vedit-cache list|size|clear [--item NAME] [--kind KIND]``: show and prune the artifact
cache (motion LoRAs, inversions with their attention records, clip edits, demo assets, toy-world cases)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from i2vedit.cache import MANIFEST
from i2vedit.errors import EXIT_BAD_INPUT
from i2vedit.progress import CONSOLE

KINDS = ("lora", "inversion", "edits", "demo", "toy")


@dataclass
class Entry:
    kind: str
    path: Path
    bytes: int
    created: str
    complete: bool  #: False: a leftover of an interrupted write (a temporary folder)

    @property
    def name(self) -> str:
        return self.path.name


def default_cache_dir() -> Path:
    return Path(os.environ.get("I2VEDIT_CACHE_DIR", "~/.cache/i2vedit")).expanduser()


def _size(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files)


def scan(cache_dir: Path, item: str | None = None, kind: str | None = None) -> list[Entry]:
    """Every entry of the cache (and every leftover temporary folder), optionally filtered."""
    entries = []
    for k in KINDS if kind is None else (kind,):
        folder = cache_dir / k
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_file() and ".lock" in path.name:
                continue  # a job's EntryLock: not an entry (a dead holder's is broken on use)
            complete = not path.name.startswith(".")
            if item is not None and not (complete and path.name.startswith(f"{item}-")):
                if not (k == "demo" and item == "demo"):
                    continue
            created = ""
            manifest = path / MANIFEST
            if manifest.is_file():
                try:
                    created = json.loads(manifest.read_text()).get("created", "")
                except (OSError, json.JSONDecodeError):
                    created = "corrupt manifest"
            entries.append(Entry(k, path, _size(path), created, complete))
    return entries


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="i2vedit-cache", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("list", "size", "clear"))
    parser.add_argument("--item", help="only entries of this item (its name, or the video's stem)")
    parser.add_argument("--kind", choices=KINDS, help="only entries of this kind")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="default: $I2VEDIT_CACHE_DIR or ~/.cache/i2vedit",
    )
    args = parser.parse_args(argv)
    cache_dir = (args.cache_dir or default_cache_dir()).expanduser()
    if args.cache_dir is not None and not cache_dir.is_dir():
        CONSOLE.print(
            f"error: --cache-dir={str(cache_dir)!r}: not a folder", soft_wrap=True, markup=False
        )
        return EXIT_BAD_INPUT
    entries = scan(cache_dir, args.item, args.kind)
    if args.action == "list":
        table = Table(title=f"i2vedit cache: {cache_dir}")
        for column in ("kind", "entry", "size", "created"):
            table.add_column(column, no_wrap=column != "entry")
        for e in entries:
            table.add_row(
                e.kind, e.name if e.complete else f"{e.name} (leftover)", _human(e.bytes), e.created
            )
        table.caption = f"{len(entries)} entries, {_human(sum(e.bytes for e in entries))}"
        CONSOLE.print(table)
    elif args.action == "size":
        table = Table(title=f"i2vedit cache: {cache_dir}")
        for column in ("kind", "entries", "size"):
            table.add_column(column)
        for kind in KINDS:
            of_kind = [e for e in entries if e.kind == kind]
            if of_kind:
                table.add_row(kind, str(len(of_kind)), _human(sum(e.bytes for e in of_kind)))
        table.add_row("total", str(len(entries)), _human(sum(e.bytes for e in entries)))
        CONSOLE.print(table)
    else:
        for e in entries:
            shutil.rmtree(e.path, ignore_errors=True)
        CONSOLE.print(
            f"removed {len(entries)} entries, {_human(sum(e.bytes for e in entries))}", markup=False
        )
    return 0


def run() -> None:
    sys.exit(main())
