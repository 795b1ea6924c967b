"""Screenshot (or the scripted DOM) of a report page with headless Chromium, to look at a report without a desktop.

``python -m reports.screenshot REPORT/index.html OUT.png [--width 1400 --height 2000]``. Needs a Chromium or
Chrome binary (Debian: ``apt-get install -y chromium``; or set ``$CHROME``). Window heights below about 300 px
may come out clipped. No network is used: background
networking, component updates and sync are off, and a throw-away profile directory is used.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str:
    """The Chromium/Chrome executable: ``$CHROME`` or the first of :data:`BROWSERS` on ``PATH``."""
    env = os.environ.get("CHROME")
    if env:
        return env
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("no Chromium/Chrome found (apt-get install -y chromium, or set $CHROME)")


def screenshot(page: str | Path, png: str | Path, *, width: int = 1400, height: int = 2000,
               browser: str | None = None, timeout_s: float = 120, wait_ms: int = 2000) -> Path:
    """Render ``page`` (a file path, or a URL) headless and save a ``width`` x ``height`` PNG to ``png``."""
    url = str(page) if "://" in str(page) else Path(page).resolve().as_uri()
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="report-shot-") as profile:
        cmd = [browser or find_browser(), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--hide-scrollbars", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
               f"--virtual-time-budget={wait_ms}", f"--screenshot={png}", f"--window-size={width},{height}", url]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if not png.is_file():
        raise RuntimeError(f"screenshot failed (exit {result.returncode}): {result.stderr[-2000:]}")
    return png


def dump_dom(page: str | Path, *, browser: str | None = None, timeout_s: float = 120, wait_ms: int = 2000) -> str:
    """The DOM of ``page`` after its scripts ran (headless ``--dump-dom``); a URL may carry a ``#hash``."""
    url = str(page) if "://" in str(page) else Path(page).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="report-dom-") as profile:
        cmd = [browser or find_browser(), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
               f"--virtual-time-budget={wait_ms}", "--dump-dom", url]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if result.returncode != 0 or not result.stdout:
        raise RuntimeError(f"--dump-dom failed (exit {result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.screenshot", description=__doc__)
    parser.add_argument("page", help="an HTML file or a URL")
    parser.add_argument("png")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=2000)
    args = parser.parse_args(argv)
    print(screenshot(args.page, args.png, width=args.width, height=args.height))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
