"""Test set-up: notebooks run by nbmake in quick mode; the unit tests are CPU, seeded, small."""
import os

# Notebooks executed through nbmake read SDELIB_QUICK=1 (smaller sizes, every cell still runs).
os.environ.setdefault("SDELIB_QUICK", "1")


def pytest_collection_modifyitems(items):
    """Run the browser test of the built book last: it rebuilds the whole book."""
    items.sort(key=lambda item: "test_book_html" in str(item.fspath))
