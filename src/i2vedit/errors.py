"""User-facing errors: bad input that the run refuses before any heavy work."""

from __future__ import annotations

from typing import Any

EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """Bad user input, reported as one line naming the config key and its value.

    The command-line entry points turn it into ``error: <key>=<value>: <reason>``
    on stderr and exit code 2, without a traceback.
    """

    def __init__(self, key: str, value: Any, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"{key}={value!r}: {reason}")
