"""Set the book's GitHub repository: _config.yml and every chapter's Colab install cell.

    python -m tools.set_repository https://github.com/OWNER/REPO [--branch main]

The repository URL lives in _config.yml (`repository.url`, `repository.branch`);
the Colab and repository buttons are built from it. They are switched on only for a real
repository (`html.use_repository_button: true`, `launch_buttons.colab_url:
https://colab.research.google.com`); for the placeholder https://github.com/OWNER/REPO they
are off (`false`, `""`), so that the built book has no button that leads to a 404. The
first cell of every chapter
of _toc.yml installs sdelib from that repository when the notebook runs in Colab,
with one literal line,

    %pip install -q "sdelib @ git+https://github.com/OWNER/REPO@BRANCH"

written as `get_ipython().run_line_magic(...)`, so that the cell is valid Python
outside IPython too. Outside Colab the cell does nothing and prints nothing. While the
URL is the placeholder https://github.com/OWNER/REPO, the cell instead prints (in
Colab) that the book is not published yet. This command rewrites all of them (the
URL, the branch, the two button switches and the cells) together;
tests/test_colab_cell.py checks that they agree. Notebooks are edited as JSON with their
key order and cell ids kept, so that only the first cell changes.
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
COLAB_URL = "https://colab.research.google.com"
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


def button_settings(url: str) -> dict[tuple[str, str], str]:
    """The button switches of _config.yml for `url`, as YAML values: {(block, key): value}.
    On for a real repository; off for the placeholder (its buttons would lead to a 404)."""
    published = not is_placeholder(url)
    return {("html", "use_repository_button"): "true" if published else "false",
            ("launch_buttons", "colab_url"): COLAB_URL if published else '""'}


def buttons_on(config: dict) -> dict[str, bool]:
    """Which buttons a parsed _config.yml switches on: {'repository': ..., 'colab': ...}."""
    html, launch = config.get("html") or {}, config.get("launch_buttons") or {}
    return {"repository": bool(html.get("use_repository_button")),
            "colab": bool(launch.get("colab_url"))}


def _set_values(lines: list[str], block: str, values: dict[str, str],
                required: tuple[str, ...] = ()) -> None:
    """Replace the values of `values`' keys in the top-level `block:` of the config lines (in
    place), keeping indentation and end-of-line comments; a key that is missing is inserted at
    the top of the block, unless it is in `required` (then it is an error)."""
    starts = [i for i, line in enumerate(lines) if re.match(rf"{block}:\s*(#.*)?$", line)]
    if not starts:
        raise RepositoryError(f"_config.yml has no top-level '{block}:' block")
    done, block_indent = set(), None
    for i in range(starts[0] + 1, len(lines)):
        line = lines[i]
        if line.strip() and not line[0].isspace():
            break  # the next top-level key
        match = re.match(r"(\s+)([A-Za-z_]+):(\s*)(?:\"[^\"\n]*\"|[^#\n])*?(\s*#.*)?(\n?)$",
                         line)
        if match and block_indent is None:
            block_indent = match.group(1)   # the block's own keys; deeper ones are left alone
        if match and match.group(2) in values and match.group(1) == block_indent:
            indent, key, space, comment, newline = match.groups()
            lines[i] = f"{indent}{key}:{space or ' '}{values[key]}{comment or ''}{newline}"
            done.add(key)
    for key in required:
        if key not in done:
            raise RepositoryError(f"_config.yml's '{block}:' block has no '{key}:' line")
    for key in reversed([k for k in values if k not in done]):
        lines.insert(starts[0] + 1, f"{block_indent or '  '}{key}: {values[key]}\n")


def _rewrite_config(text: str, url: str, branch: str) -> str:
    """Replace the url and branch values of the top-level `repository:` block and the button
    switches of `html:` and `launch_buttons:` (button_settings), keeping the rest of the file
    (its comments included) byte for byte."""
    lines = text.splitlines(keepends=True)
    _set_values(lines, "repository", {"url": url, "branch": branch}, required=("url",))
    switches = button_settings(url)
    for block in ("html", "launch_buttons"):
        _set_values(lines, block, {key: value for (b, key), value in switches.items()
                                   if b == block})
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
    parsed_config = yaml.safe_load(new_config)
    parsed = parsed_config["repository"]
    if (parsed.get("url"), str(parsed.get("branch"))) != (url, branch):
        raise RepositoryError(f"could not rewrite _config.yml's repository: {parsed}")
    published = not is_placeholder(url)
    if buttons_on(parsed_config) != {"repository": published, "colab": published}:
        raise RepositoryError("could not switch _config.yml's repository and Colab buttons "
                              f"{'on' if published else 'off'}")
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
    state = ("off: the placeholder has no repository" if is_placeholder(url) else "on")
    print(f"repository set to {url} (branch {branch}); repository and Colab buttons {state};"
          " rewrote:")
    for path in files:
        print(f"  {path.relative_to(args.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
