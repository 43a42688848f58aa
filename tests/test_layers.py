"""The layers hold: no module under src/ imports one of a higher layer, or a peer group of its
own layer (the order is written once, in docs/ARCHITECTURE.md's ``layers`` block)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def read_layers(text: str) -> dict[str, tuple[int, int]]:
    """module prefix -> (layer, group) from the ```layers block: one line per layer,
    ``<n> <name>: <prefixes of group 1> | <prefixes of group 2> ...``."""
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    if block is None:
        raise ValueError("docs/ARCHITECTURE.md has no ```layers block")
    owners = {}
    for line in block.group(1).strip().splitlines():
        number, _, rest = line.partition(" ")
        groups = rest.split(":", 1)[1].split("|")
        for g, group in enumerate(groups):
            for prefix in group.split():
                owners[prefix] = (int(number), g)
    return owners


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, name: str) -> list[tuple[int, str]]:
    """(line, module) of every i2vedit import in the file, at module level or in functions
    (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            # "from i2vedit.x import y" may name a submodule y
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return [(line, m) for line, m in out if m == "i2vedit" or m.startswith("i2vedit.")]


def owner(module: str, owners: dict[str, tuple[int, int]]) -> tuple[str, tuple[int, int]] | None:
    """The longest prefix of ``module`` in the table, with its (layer, group)."""
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        prefix = ".".join(parts[:n])
        if prefix in owners:
            return prefix, owners[prefix]
    if module == "i2vedit":  # the package itself, not everything under it
        return module, owners[module]
    return None


def crosses(mine: tuple[str, tuple[int, int]], theirs: tuple[str, tuple[int, int]]) -> bool:
    """Whether an import from ``mine`` to ``theirs`` (each (prefix, (layer, group))) goes up
    a layer, or sideways to a peer group of the same layer."""
    (my_prefix, (layer, group)), (their_prefix, (their_layer, their_group)) = mine, theirs
    if their_layer != layer:
        return their_layer > layer
    return their_group != group and their_prefix != my_prefix


def violations(owners: dict[str, tuple[int, int]]) -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        name = module_name(path)
        mine = owner(name, owners)
        if mine is None:
            found.append(f"{name}: in no layer of docs/ARCHITECTURE.md")
            continue
        layer = mine[1][0]
        for line, target in imported(path, name):
            theirs = owner(target, owners)
            if theirs is None or not crosses(mine, theirs):
                continue
            their_layer = theirs[1][0]
            peer = ", a peer" if their_layer == layer else ""
            found.append(
                f"{path.relative_to(ROOT)}:{line}: {name} (layer {layer}) imports "
                f"{target} (layer {their_layer}{peer})"
            )
    return found


def test_no_module_imports_a_higher_layer():
    owners = read_layers((ROOT / "docs" / "ARCHITECTURE.md").read_text())
    assert violations(owners) == []


def test_the_check_catches_a_planted_upward_import():
    """A module of a low layer that imports a task (inside a function, where it hides best)
    is caught, with its file and line."""
    owners = read_layers((ROOT / "docs" / "ARCHITECTURE.md").read_text())
    planted = SRC / "i2vedit" / "data" / "_planted_for_test.py"
    planted.write_text("def f():\n    from i2vedit.tasks.edit import run_edit\n")
    try:
        found = violations(owners)
    finally:
        planted.unlink()
    assert found == [
        "src/i2vedit/data/_planted_for_test.py:2: i2vedit.data._planted_for_test (layer 3) "
        "imports i2vedit.tasks.edit.run_edit (layer 11)"
    ]


@pytest.mark.parametrize(
    ("importer", "target", "caught"),
    [
        ("i2vedit.inversion.edm", "i2vedit.sampling.sampler", True),  # peers
        ("i2vedit.config", "i2vedit.runner", True),  # peers
        ("i2vedit.sampling.sampler", "i2vedit.core.edm", False),  # down
        ("i2vedit.tasks.edit", "i2vedit.tasks.plan", False),  # own group
    ],
)
def test_peer_and_downward_rules(importer, target, caught):
    owners = read_layers((ROOT / "docs" / "ARCHITECTURE.md").read_text())
    assert crosses(owner(importer, owners), owner(target, owners)) is caught
