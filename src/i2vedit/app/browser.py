"""Running ``i2vedit-app`` as a user does and opening it in Debian's headless Chromium, for
the app's browser test and for ``experiments/app_screenshot.py`` (Playwright's Python
package drives the system browser: nothing is downloaded)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
#: headless as root on a machine with no network beyond loopback
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(
    overrides: list[str], log_path: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> Iterator[str]:
    """``i2vedit-app <overrides>`` on a free port of 127.0.0.1, its output in ``log_path``;
    yields the page's URL once it answers, and stops the app (SIGTERM) afterwards."""
    port = free_port()
    exe = Path(sys.executable).with_name("i2vedit-app")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(exe), *overrides, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        try:
            url = f"http://127.0.0.1:{port}/"
            deadline = time.monotonic() + timeout
            while True:
                try:
                    urllib.request.urlopen(url, timeout=2).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"i2vedit-app did not start: {log_path.read_text()}"
                        ) from None
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=60)


@contextlib.contextmanager
def chromium_page(width: int = 1280, height: int = 1000):
    """A Playwright page in Debian's headless Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()
