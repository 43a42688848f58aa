"""docs/app.png: the i2vedit-app page after a real edit with the toy model.

Starts ``i2vedit-app`` (toy model, a fresh cache), picks an item in a headless Debian
Chromium, sets its edit's mask (``--mask``: auto by default; the plan then shows it over the
first frame and the result its mask video), runs it with the page's other defaults, stops
every video at the same time and saves a screenshot of the whole page.

    python experiments/app_screenshot.py [--item dance] [--mask auto] [--at 1.5] [--out docs/app.png]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from i2vedit.app.browser import chromium_page, running_app
from i2vedit.progress import setup_logging

log = logging.getLogger("i2vedit.experiments.app_screenshot")
ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--item", default="dance")
    parser.add_argument("--mask", choices=["none", "auto"], default="auto")
    parser.add_argument("--at", type=float, default=1.5, help="seconds into the videos")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "app.png")
    args = parser.parse_args(argv)
    setup_logging()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {"I2VEDIT_CACHE_DIR": str(work / "cache")}
        with running_app(["default_model=toy"], work / "app.log", env) as url:
            with chromium_page(1280, 1000) as page:
                page.goto(url)
                page.locator("#i2v-item input").click()
                page.get_by_role("option", name=args.item, exact=True).click()
                page.locator("#i2v-first-frame img").wait_for(timeout=120_000)
                page.get_by_text("masks: where each edit may change the video").click()
                page.locator("#i2v-mask-mode-0").get_by_label(args.mask).check()
                started = time.perf_counter()
                page.locator("#i2v-run").click()
                page.locator("#i2v-results video").nth(1).wait_for(timeout=900_000)
                log.info("edit done in %.0f s", time.perf_counter() - started)
                page.evaluate(
                    """async (t) => {
                      const videos = [...document.querySelectorAll('#i2v-results video')];
                      await Promise.all(videos.map((v) => new Promise((done) => {
                        const seek = () => {
                          v.pause();
                          v.addEventListener('seeked', done, {once: true});
                          v.currentTime = Math.min(t, v.duration - 0.01);
                        };
                        if (v.readyState >= 1) seek();
                        else v.addEventListener('loadedmetadata', seek, {once: true});
                      })));
                    }""",
                    args.at,
                )
                page.mouse.move(0, 0)  # no hovered controls
                time.sleep(2.0)  # the players' loading indicators fade
                page.screenshot(path=str(args.out), full_page=True)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
