"""Every chapter runs alone, as a reader runs it in Colab: the notebook by itself in an empty folder,
sdelib installed from a wheel built from this checkout (non-editable), SDELIB_QUICK=1.

The kernel gets an audit hook (its first cell, injected here) that records every file the chapter
opens; the test fails if one lies inside the repository checkout: what a chapter reads (benchmark
results, pictures, models) must come with the installed package."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [entry["file"] for entry in yaml.safe_load((ROOT / "_toc.yml").read_text())["chapters"]]
CHAPTERS = [yaml.safe_load((ROOT / "_toc.yml").read_text())["root"]] + CHAPTERS
CHAPTERS = [doc for doc in CHAPTERS if (ROOT / f"{doc}.ipynb").exists()]   # not the .md pages

GUARD = """\
import sys as _sys
_REPOSITORY = {root!r}
# the Python environment itself may live inside the checkout (a venv in .venv/): not the book's files
_ENVIRONMENT = tuple({{_sys.prefix + "/", _sys.base_prefix + "/"}})
_opened_in_repository = []
def _record(event, args):
    if event == "open" and isinstance(args[0], (str, bytes)):
        path = args[0].decode() if isinstance(args[0], bytes) else args[0]
        if (path.startswith(_REPOSITORY + "/") and "/.git/" not in path
                and not path.startswith(_ENVIRONMENT)):
            _opened_in_repository.append(path)
_sys.addaudithook(_record)
import sdelib as _sdelib
assert _sdelib.__file__.startswith({site!r}), _sdelib.__file__
"""
CHECK = "assert not _opened_in_repository, sorted(set(_opened_in_repository))"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """sdelib from a wheel of this checkout, installed into a folder of its own (no dependencies:
    they are those of this environment, as Colab has its own torch)."""
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "source"            # a copy: building leaves build/ beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "sdelib", source / "sdelib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(folder / "dist"), str(source)], check=True)
    wheel = next((folder / "dist").glob("sdelib-*.whl"))
    site = folder / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True)
    return site


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_runs_alone_from_an_installed_wheel(chapter, installed, tmp_path, monkeypatch):
    source = ROOT / f"{chapter}.ipynb"
    notebook = nbformat.read(source, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(GUARD.format(root=str(ROOT),
                                                                    site=str(installed))))
    notebook.cells.append(nbformat.v4.new_code_cell(CHECK))
    (tmp_path / source.name).write_text(nbformat.writes(notebook))   # the notebook alone
    monkeypatch.setenv("PYTHONPATH", str(installed))
    monkeypatch.setenv("SDELIB_QUICK", "1")
    start = time.monotonic()
    client = nbclient.NotebookClient(notebook, timeout=1800, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    seconds = time.monotonic() - start
    log = Path(os.environ.get("SDELIB_STANDALONE_LOG", tmp_path / "times.jsonl"))
    with open(log, "a") as f:
        f.write(json.dumps({"chapter": chapter, "seconds": round(seconds, 1)}) + "\n")


def test_the_guard_catches_a_chapter_that_reads_the_checkout(installed, tmp_path, monkeypatch):
    """Negative control: a notebook that reads a file of the repository fails the same check."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(GUARD.format(root=str(ROOT), site=str(installed))),
                      nbformat.v4.new_code_cell(f"open({str(ROOT / 'README.md')!r}).read()"),
                      nbformat.v4.new_code_cell(CHECK)]
    monkeypatch.setenv("PYTHONPATH", str(installed))
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="README.md"):
        client.execute()
