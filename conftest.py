"""Test set-up: the unit tests (tests/) are CPU, seeded, small; the chapters (book/*.ipynb) run
through nbmake in quick mode when nbmake is installed.

Plain `pytest` therefore works for a user of the library without nbmake (it runs tests/ and
skips the notebooks, saying so once); the README's test command and CI have nbmake (the `test`
extra, requirements.txt) and run everything, and CI fails if nbmake is missing (.ci/run).
"""
import importlib.util
import os

# Notebooks executed through nbmake read SDELIB_QUICK=1 (smaller sizes, every cell still runs).
os.environ.setdefault("SDELIB_QUICK", "1")

NOTEBOOK_TIMEOUT = 1800   # seconds per cell, as the book build allows

def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives the Debian Chromium (skips without it)")
    if importlib.util.find_spec("nbmake") is not None and hasattr(config.option, "nbmake"):
        config.option.nbmake = True
        if config.option.nbmake_timeout == 300:          # nbmake's default: ours is longer
            config.option.nbmake_timeout = NOTEBOOK_TIMEOUT


def pytest_report_header(config):
    if not getattr(config.option, "nbmake", False):
        return "nbmake is not installed: the chapters in book/ are not run (pip install sdelib[test])"
    return None


def pytest_collection_modifyitems(items):
    """Run the browser tests of the built book last: they rebuild the whole book."""
    items.sort(key=lambda item: "test_book_html" in str(item.fspath))
