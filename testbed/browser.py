"""A real headless browser for tests of the status page: Debian's ``chromium`` package, which
``testbed/setup`` installs.

Each call starts a fresh browser with its own profile directory, loads one URL and returns what
Chromium made of it: the DOM after parsing (``--dump-dom``) or a PNG (``--screenshot``). The
flags keep it from reaching anything but the page (no sync, no component updates, no QUIC, no
background networking) and let it run as root in a container (``--no-sandbox``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

# Chromium's cold start on two busy cores takes a few seconds; a page that needs longer is a bug.
BROWSER_TIMEOUT_S = 60.0
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        raise RuntimeError("chromium is not installed: run bash testbed/setup")
    return path


def _run(*args: str) -> str:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        result = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=BROWSER_TIMEOUT_S,
            check=True,
        )
    return result.stdout


def dump_dom(url: str) -> str:
    """The document as Chromium parsed it (scripts, had there been any, would have run)."""
    return _run("--dump-dom", url)


def screenshot(url: str, path: Path, width: int = 1200, height: int = 1400) -> Path:
    """A PNG of the page as Chromium renders it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(f"--screenshot={path}", f"--window-size={width},{height}", url)
    return path


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script", "title"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "title"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def visible_text(dom: str) -> str:
    """The text a reader sees, whitespace collapsed (no markup, styles or scripts)."""
    parser = _Text()
    parser.feed(dom)
    return re.sub(r"\s+", " ", " ".join(parser.parts)).strip()
