"""Set the book's GitHub repository: _config.yml and every chapter's Colab install cell.

    python -m tools.set_repository https://github.com/OWNER/REPO [--branch main]

The repository URL lives in _config.yml (`repository.url`, `repository.branch`);
the Colab and repository buttons are built from it. The first cell of every chapter
of _toc.yml installs sdelib from that repository when the notebook runs in Colab,
with one literal line,

    %pip install -q "sdelib @ git+https://github.com/OWNER/REPO@BRANCH"

written as `get_ipython().run_line_magic(...)`, so that the cell is valid Python
outside IPython too. Outside Colab the cell does nothing and prints nothing. While the
URL is the placeholder https://github.com/OWNER/REPO, the cell instead prints (in
Colab) that the book is not published yet. This command rewrites all of them
together; tests/test_colab_cell.py checks that they agree. Notebooks are edited as
JSON with their key order and cell ids kept, so that only the first cell changes.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER_URL = "https://github.com/OWNER/REPO"
CELL_TAGS = ["remove-input"]
# Owner: a GitHub user or organisation (letters, digits, single inner hyphens, <= 39).
# Repository: letters, digits, '.', '-', '_'. Branch: a conservative git ref name.
_URL = re.compile(r"https://github\.com/"
                  r"([A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38})"
                  r"/([A-Za-z0-9._-]{1,100})")
_BRANCH = re.compile(r"[A-Za-z0-9._/-]{1,200}")
_HEADER = """\
# Colab only: install sdelib (with its shipped checkpoints) from the book's repository,
# keeping Colab's own torch / numpy / ipywidgets. Elsewhere this cell does nothing.
# Written by `python -m tools.set_repository URL` from _config.yml's repository.
"""
NOT_PUBLISHED = (
    "This book has not been published yet, so the Colab install of sdelib cannot "
    f"work (its repository URL is still the placeholder {PLACEHOLDER_URL}): to "
    "publish it, see the section \"Publishing and Colab\" of the README.")


class RepositoryError(ValueError):
    """A malformed repository URL or branch, or files that cannot be rewritten."""


def normalise_url(url: str) -> str:
    """https://github.com/<owner>/<repo>; final '/' or '.git' dropped; else an error."""
    candidate = url.strip().rstrip("/")
    candidate = candidate[:-4] if candidate.endswith(".git") else candidate
    match = _URL.fullmatch(candidate)
    if not match or match.group(2) in (".", "..") or match.group(2).endswith(".git"):
        raise RepositoryError(
            f"not a GitHub repository URL: {url!r}; expected "
            "https://github.com/<owner>/<repo>, e.g. https://github.com/me/myrepo "
            "(https, nothing after the repository name)")
    return candidate


def check_branch(branch: str) -> str:
    """The branch name, if it is a plain git branch name; else an error."""
    if (not _BRANCH.fullmatch(branch) or ".." in branch or "//" in branch
            or branch.startswith(("-", "/", "."))
            or branch.endswith(("/", ".", ".lock"))):
        raise RepositoryError(f"not a valid branch name: {branch!r} (e.g. main)")
    return branch


def is_placeholder(url: str) -> bool:
    return url.rstrip("/") == PLACEHOLDER_URL


def pip_arguments(url: str, branch: str) -> str:
    """The arguments of the cell's %pip line:
    install -q "sdelib @ git+<url>@<branch>"."""
    return f'install -q "sdelib @ git+{url}@{branch}"'


def install_cell_source(url: str, branch: str) -> str:
    """The source of the Colab install cell (for the placeholder: a note)."""
    if is_placeholder(url):
        chunks = textwrap.wrap(NOT_PUBLISHED, 76, drop_whitespace=False)
        body = "    print(" + "\n          ".join(json.dumps(c) for c in chunks) + ")"
    else:
        body = ("    get_ipython().run_line_magic(\n"
                f'        "pip", {pip_arguments(url, branch)!r})')
    return _HEADER + 'import sys\nif "google.colab" in sys.modules:\n' + body


def chapters(root: Path = ROOT) -> list[Path]:
    """The notebooks of _toc.yml, root first (Markdown pages such as the notation page have no
    install cell and are left out)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries = toc.get("chapters", []) + [
        entry for part in toc.get("parts", []) for entry in part.get("chapters", [])]
    docs = [toc["root"]] + [entry["file"] for entry in entries]
    return [root / f"{doc}.ipynb" for doc in docs if not (root / f"{doc}.md").exists()]


def read_repository(root: Path = ROOT) -> tuple[str, str]:
    """(url, branch) of _config.yml."""
    repository = yaml.safe_load((root / "_config.yml").read_text())["repository"]
    return str(repository["url"]), str(repository.get("branch", "main"))


def _rewrite_config(text: str, url: str, branch: str) -> str:
    """Replace the url and branch values of the top-level `repository:` block, keeping
    the rest of the file (its comments included) byte for byte."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines)
              if re.match(r"repository:\s*(#.*)?$", line)]
    if not starts:
        raise RepositoryError("_config.yml has no top-level 'repository:' block")
    done = set()
    for i in range(starts[0] + 1, len(lines)):
        line = lines[i]
        if line.strip() and not line[0].isspace():
            break  # the next top-level key
        match = re.match(r"(\s+)(url|branch):(\s*)[^#\n]*?(\s*#.*)?(\n?)$", line)
        if match:
            indent, key, space, comment, newline = match.groups()
            value = url if key == "url" else branch
            lines[i] = f"{indent}{key}:{space or ' '}{value}{comment or ''}{newline}"
            done.add(key)
    if "url" not in done:
        raise RepositoryError("_config.yml's 'repository:' block has no 'url:' line")
    if "branch" not in done:
        lines.insert(starts[0] + 1, f"  branch: {branch}\n")
    return "".join(lines)


def _is_install_cell(cell: dict) -> bool:
    source = "".join(cell.get("source", []))
    return cell.get("cell_type") == "code" and "google.colab" in source


def _set_install_cell(notebook: dict, source: str) -> None:
    """Make the notebook's first cell the install cell (inserted if there is none)."""
    cells, lines = notebook["cells"], source.splitlines(keepends=True)
    if cells and _is_install_cell(cells[0]):
        cell = cells[0]
    else:  # a new chapter without one: insert a fresh cell (nbformat gives it an id)
        import nbformat

        cell = dict(nbformat.v4.new_code_cell())
        cells.insert(0, cell)
    cell["source"], cell["outputs"], cell["execution_count"] = lines, [], None
    metadata = cell.setdefault("metadata", {})
    old = [t for t in metadata.get("tags", [])
           if t not in ("remove-cell", "remove-input")]
    metadata["tags"] = CELL_TAGS + old


def set_repository(url: str, branch: str = "main", root: Path = ROOT) -> list[Path]:
    """Validate url and branch, then rewrite _config.yml and every chapter's install
    cell. Everything is checked before anything is written. Returns the files written.
    """
    url, branch = normalise_url(url), check_branch(branch)
    config = root / "_config.yml"
    new_config = _rewrite_config(config.read_text(), url, branch)
    parsed = yaml.safe_load(new_config)["repository"]
    if (parsed.get("url"), str(parsed.get("branch"))) != (url, branch):
        raise RepositoryError(f"could not rewrite _config.yml's repository: {parsed}")
    source = install_cell_source(url, branch)
    notebooks = {}
    for path in chapters(root):
        if not path.exists():
            raise RepositoryError(f"{path.relative_to(root)} (in _toc.yml) is missing")
        notebook = json.loads(path.read_text())
        _set_install_cell(notebook, source)
        notebooks[path] = notebook
    config.write_text(new_config)
    for path, notebook in notebooks.items():
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return [config, *notebooks]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.set_repository",
        description="Set the book's GitHub repository in _config.yml and in every "
                    "chapter's Colab install cell.")
    parser.add_argument("url", help="https://github.com/<owner>/<repo>")
    parser.add_argument("--branch", default="main",
                        help="the branch Colab installs sdelib from (default: main)")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        files = set_repository(args.url, args.branch, args.root)
    except RepositoryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    url, branch = read_repository(args.root)
    print(f"repository set to {url} (branch {branch}); rewrote:")
    for path in files:
        print(f"  {path.relative_to(args.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
