"""What the browser tests share (imported as `browser`: pytest puts tests/ on sys.path): the Debian
Chromium driven by playwright (never `playwright install`, which downloads its own browser)."""
import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def skip_or_fail(reason: str):
    """Skip on a developer's machine without the browser; fail in CI, which installs it."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so the browser test must run")
    pytest.skip(reason)


def launch_chromium():
    """A context manager yielding a headless Chromium (skips or fails without one)."""
    import contextlib

    if not Path(CHROMIUM).exists():
        skip_or_fail(f"{CHROMIUM} not found (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install playwright)")

    @contextlib.contextmanager
    def running():
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                  args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()
    return running()
