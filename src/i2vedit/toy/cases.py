"""The names of the toy world's edit cases (``data.toy_case=<kind>-<seed>``), with no imports:
the config checks parse them before anything is generated or loaded."""

from __future__ import annotations

from i2vedit.errors import InputError

#: the kinds of edit case ``i2vedit.toy.world.make_case`` renders
KINDS = ("recolor", "reshape", "restyle", "dance")


def parse_case(name: str, key: str = "data.toy_case") -> tuple[str, int]:
    """``"dance-3"`` -> ("dance", 3); refuses an unknown kind or a missing seed."""
    kind, _, seed = str(name).rpartition("-")
    if kind not in KINDS or not seed.isdigit():
        raise InputError(key, name, f"expected <kind>-<seed> with kind one of {', '.join(KINDS)}")
    return kind, int(seed)
