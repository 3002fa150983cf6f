"""The Colab install cell: the first cell of every chapter installs sdelib, in Colab
only, from the repository of _config.yml, with one literal %pip line
(tools/set_repository.py writes them); and the repository and Colab buttons of _config.yml
are on for a real repository, off for the placeholder (whose buttons would lead to a 404).
Both states are tested here on copies; the committed state is whichever _config.yml holds.
tests/test_book_html.py checks the buttons in built pages, in both states."""
import contextlib
import io
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
import yaml

from tools import set_repository as sr

ROOT = Path(__file__).resolve().parents[1]
REAL_URL, REAL_BRANCH = "https://github.com/me/my-repo.book", "dev/colab"


def _source(cell) -> str:
    return "".join(cell["source"])


def _first_cells():
    return [(path, json.loads(path.read_text())["cells"][0])
            for path in sr.chapters(ROOT)]


class _Shell:
    """A stub of IPython's shell that records the line magics it is asked to run."""

    def __init__(self):
        self.calls = []

    def run_line_magic(self, name, line):
        self.calls.append((name, line))


def _run_cell(source, colab: bool, monkeypatch):
    """Execute a cell's source as a plain Python module would, with (or without) a stub
    google.colab module: (the magics it ran, what it printed)."""
    shell = _Shell()
    if colab:
        google = types.ModuleType("google")
        google.colab = types.ModuleType("google.colab")
        monkeypatch.setitem(sys.modules, "google", google)
        monkeypatch.setitem(sys.modules, "google.colab", google.colab)
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        exec(compile(source, "<install cell>", "exec"), {"get_ipython": lambda: shell})
    return shell.calls, out.getvalue()


# --- (a) the committed notebooks agree with _config.yml -------------------------------
def test_every_chapter_starts_with_the_install_cell_of_the_configured_repository():
    url, branch = sr.read_repository(ROOT)
    expected = sr.install_cell_source(url, branch)
    for path, cell in _first_cells():
        name = path.relative_to(ROOT)
        assert cell["cell_type"] == "code", f"{name}: the first cell is not code"
        assert _source(cell) == expected, (
            f"{name}: the first cell is not the install cell of {url}@{branch}"
            " (_config.yml); run `python -m tools.set_repository URL --branch BRANCH`")
        assert cell["metadata"].get("tags") == ["remove-input"], name
        assert cell["outputs"] == [] and cell["execution_count"] is None, name
        assert cell.get("id"), f"{name}: the install cell has no id"


def test_install_cell_names_the_configured_url_and_branch_literally():
    url, branch = sr.read_repository(ROOT)
    assert url == sr.normalise_url(url) and branch == sr.check_branch(branch)
    for path, cell in _first_cells():
        source = _source(cell)
        assert "eval_js" not in source and "location" not in source, path.name
        if sr.is_placeholder(url):
            assert "git+" not in source and "pip" not in source, path.name
        else:
            assert source.count(f'"sdelib @ git+{url}@{branch}"') == 1, path.name
        assert all(len(line) <= 88 for line in source.splitlines()), path.name


def test_the_buttons_are_on_exactly_when_the_repository_is_real():
    """The placeholder has no repository: its Colab and repository buttons would open a 404, so
    the committed config switches them off while it names OWNER/REPO (and on otherwise)."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    url, _ = sr.read_repository(ROOT)
    published = not sr.is_placeholder(url)
    assert sr.buttons_on(config) == {"repository": published, "colab": published}, (
        f"_config.yml names {url} but its buttons are {sr.buttons_on(config)}; run "
        "`python -m tools.set_repository URL`")
    assert config["launch_buttons"]["colab_url"] == (sr.COLAB_URL if published else "")
    # the other launchers stay off in both states (they need a server or the network)
    launch = config["launch_buttons"]
    assert not launch.get("binderhub_url") and not launch.get("jupyterhub_url")
    assert not launch.get("thebe")


def test_the_chapters_are_valid_notebooks():
    for path in sr.chapters(ROOT):
        nbformat.validate(nbformat.read(path, as_version=4))


# --- (b) what the cell does -----------------------------------------------------------
def test_in_colab_the_cell_pip_installs_exactly_the_repository(monkeypatch):
    source = sr.install_cell_source(REAL_URL, REAL_BRANCH)
    calls, printed = _run_cell(source, colab=True, monkeypatch=monkeypatch)
    assert calls == [("pip", f'install -q "sdelib @ git+{REAL_URL}@{REAL_BRANCH}"')]
    assert printed == ""


def test_in_colab_the_placeholder_cell_says_the_book_is_unpublished(monkeypatch):
    source = sr.install_cell_source(sr.PLACEHOLDER_URL, "main")
    calls, printed = _run_cell(source, colab=True, monkeypatch=monkeypatch)
    assert calls == []
    assert printed == sr.NOT_PUBLISHED + "\n"
    assert "not been published" in printed and "Publishing and Colab" in printed
    assert printed.count(".") >= 1 and "Traceback" not in printed


@pytest.mark.parametrize("url", [REAL_URL, sr.PLACEHOLDER_URL])
def test_outside_colab_the_cell_does_nothing_and_prints_nothing(monkeypatch, url):
    calls, printed = _run_cell(sr.install_cell_source(url, "main"), colab=False,
                               monkeypatch=monkeypatch)
    assert calls == [] and printed == ""


def test_committed_cells_run_silently_outside_colab(monkeypatch):
    for path, cell in _first_cells():
        ran = _run_cell(_source(cell), colab=False, monkeypatch=monkeypatch)
        assert ran == ([], ""), path


def test_the_readme_has_the_section_the_placeholder_points_to():
    assert "\n## Publishing and Colab\n" in (ROOT / "README.md").read_text()
    assert "ghp-import" in (ROOT / "README.md").read_text()


# --- (c) the rewrite command ----------------------------------------------------------
@pytest.fixture
def repo_copy(tmp_path):
    """The files the command reads and rewrites, copied: _config.yml, _toc.yml, the chapters and
    the Markdown pages of the table of contents (which have no install cell)."""
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "book").mkdir()
    for path in sr.chapters(ROOT) + sorted((ROOT / "book").glob("*.md")):
        shutil.copy(path, tmp_path / path.relative_to(ROOT))
    return tmp_path


def _command(root, *args):
    return subprocess.run(
        [sys.executable, "-m", "tools.set_repository", *args, "--root", str(root)],
        cwd=ROOT, capture_output=True, text=True)


def _without_install_cells(root):
    """The chapters without their first cells; _config.yml without its url/branch and its
    button switches."""
    config = [line for line in (root / "_config.yml").read_text().splitlines()
              if not line.startswith(("  url:", "  branch:", "  use_repository_button:",
                                      "  colab_url:"))]
    cells = [json.loads(p.read_text())["cells"][1:] for p in sr.chapters(root)]
    return config, cells


def test_command_rewrites_config_and_every_install_cell_consistently(repo_copy):
    before = _without_install_cells(repo_copy)
    proc = _command(repo_copy, REAL_URL + ".git/", "--branch", REAL_BRANCH)
    assert proc.returncode == 0, proc.stderr
    assert f"repository set to {REAL_URL} (branch {REAL_BRANCH})" in proc.stdout
    config = yaml.safe_load((repo_copy / "_config.yml").read_text())
    assert config["repository"]["url"] == REAL_URL
    assert config["repository"]["branch"] == REAL_BRANCH
    assert config["repository"]["path_to_book"] == ""
    # a real repository: both buttons on
    assert config["html"]["use_repository_button"] is True
    assert config["launch_buttons"]["colab_url"] == sr.COLAB_URL
    assert sr.buttons_on(config) == {"repository": True, "colab": True}
    assert "buttons on" in proc.stdout
    expected = sr.install_cell_source(REAL_URL, REAL_BRANCH)
    chapters = sr.chapters(repo_copy)
    assert len(chapters) == len(sr.chapters(ROOT)) >= 2
    for path in chapters:
        cell = json.loads(path.read_text())["cells"][0]
        assert _source(cell) == expected
        assert cell["metadata"]["tags"] == ["remove-input"]
        nbformat.validate(nbformat.read(path, as_version=4))
    # nothing else changed: _config.yml's comments, the other cells, their order, ids
    assert _without_install_cells(repo_copy) == before
    # and setting the committed repository again restores the files byte for byte
    url, branch = sr.read_repository(ROOT)
    assert _command(repo_copy, url, f"--branch={branch}").returncode == 0
    for path in [repo_copy / "_config.yml", *chapters]:
        original = ROOT / path.relative_to(repo_copy)
        assert path.read_text() == original.read_text(), path.name


def test_the_placeholder_switches_the_buttons_off_again(repo_copy):
    """Published, then back to the placeholder: the buttons go off, the cells say 'not
    published', and the config's comments and other keys are untouched throughout."""
    original = (repo_copy / "_config.yml").read_text()
    assert _command(repo_copy, REAL_URL).returncode == 0
    assert sr.buttons_on(yaml.safe_load((repo_copy / "_config.yml").read_text())) == {
        "repository": True, "colab": True}
    proc = _command(repo_copy, sr.PLACEHOLDER_URL)
    assert proc.returncode == 0, proc.stderr
    assert "buttons off" in proc.stdout
    config = yaml.safe_load((repo_copy / "_config.yml").read_text())
    assert config["html"]["use_repository_button"] is False
    assert config["launch_buttons"]["colab_url"] == ""
    assert sr.buttons_on(config) == {"repository": False, "colab": False}
    for path in sr.chapters(repo_copy):
        cell = json.loads(path.read_text())["cells"][0]
        assert _source(cell) == sr.install_cell_source(sr.PLACEHOLDER_URL, "main")
    # comments and every other line as they were
    keep = ("  url:", "  branch:", "  use_repository_button:", "  colab_url:")
    assert ([line for line in original.splitlines() if not line.startswith(keep)]
            == [line for line in (repo_copy / "_config.yml").read_text().splitlines()
                if not line.startswith(keep)])


def test_a_missing_button_switch_is_written(repo_copy):
    """A config without the switches gets them (in their blocks), for either state."""
    path = repo_copy / "_config.yml"
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if not line.startswith(("  use_repository_button:",
                                                    "  colab_url:"))))
    for url, on in ((REAL_URL, True), (sr.PLACEHOLDER_URL, False)):
        assert _command(repo_copy, url).returncode == 0
        config = yaml.safe_load(path.read_text())
        assert sr.buttons_on(config) == {"repository": on, "colab": on}
        assert "use_repository_button" in config["html"]
        assert "colab_url" in config["launch_buttons"]


def test_rewrite_keeps_the_notebook_json_layout(repo_copy):
    """Only the first cell's lines change: the key order and indentation are kept."""
    path = sr.chapters(repo_copy)[0]
    old = path.read_text().splitlines()
    sr.set_repository(REAL_URL, "main", repo_copy)
    new = path.read_text().splitlines()
    first_cell_end = next(i for i, line in enumerate(old) if line == "  },")
    assert old[first_cell_end:] == new[len(new) - len(old) + first_cell_end:]


@pytest.mark.parametrize("url", [
    "http://github.com/me/repo",                 # not https
    "https://gitlab.com/me/repo",                # not GitHub
    "https://github.com/me",                     # no repository
    "https://github.com/me/repo/tree/main",      # a path after the repository
    "git@github.com:me/repo.git",                # ssh
    "https://github.com/-me/repo",               # bad owner
    "https://github.com/me/re po",               # space
    'https://github.com/me/repo"; rm -rf ~',     # quoting
    "github.com/me/repo",                        # no scheme
])
def test_command_rejects_malformed_urls_and_writes_nothing(repo_copy, url):
    before = {p: p.read_bytes() for p in repo_copy.rglob("*") if p.is_file()}
    proc = _command(repo_copy, url)
    assert proc.returncode == 2
    assert "not a GitHub repository URL" in proc.stderr
    assert "https://github.com/<owner>/<repo>" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert {p: p.read_bytes() for p in repo_copy.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("branch", ["", "a b", "../x", "main\"", "-x", "x.lock"])
def test_command_rejects_bad_branches(repo_copy, branch):
    proc = _command(repo_copy, REAL_URL, f"--branch={branch}")
    assert proc.returncode == 2 and "not a valid branch name" in proc.stderr


def test_a_chapter_without_an_install_cell_gets_one(repo_copy):
    path = sr.chapters(repo_copy)[1]
    notebook = json.loads(path.read_text())
    notebook["cells"] = notebook["cells"][1:]
    n_cells = len(notebook["cells"])
    path.write_text(json.dumps(notebook, indent=1) + "\n")
    sr.set_repository(REAL_URL, "main", repo_copy)
    cells = json.loads(path.read_text())["cells"]
    assert len(cells) == n_cells + 1
    assert _source(cells[0]) == sr.install_cell_source(REAL_URL, "main")
    nbformat.validate(nbformat.read(path, as_version=4))
