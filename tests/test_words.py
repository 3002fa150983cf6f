"""No internal words: the book, the README, the library and the benchmark results speak to a reader.

They must not refer to documents or events a reader has never seen (a specification, a ticket, a
brief, "our runs", how a build was scheduled). One test per file; a failure lists file:line and the
word found, so that each hit can be replaced by a citation of the paper or the book's own section.
"""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# "SPEC" is matched as a word and case-sensitively (the word "spec" in prose is not the problem);
# the rest case-insensitively.
PATTERNS = [
    ("SPEC", re.compile(r"\bSPEC\b")),
    ("the issue", re.compile(r"\bthe issue\b", re.IGNORECASE)),
    ("Issue N", re.compile(r"\bissue \d", re.IGNORECASE)),
    ("the brief", re.compile(r"\bthe brief\b", re.IGNORECASE)),
    ("our runs", re.compile(r"\bour runs\b", re.IGNORECASE)),
    ("quick build", re.compile(r"\bquick build", re.IGNORECASE)),
    ("full build", re.compile(r"\bfull build", re.IGNORECASE)),
]


def scanned_files():
    """The reader-facing files: chapters and pages, README, library and benchmark code, results."""
    files = sorted((ROOT / "book").glob("*.ipynb")) + sorted((ROOT / "book").glob("*.md"))
    files += [ROOT / "README.md"]
    for folder in ("sdelib", "benchmarks"):
        files += sorted((ROOT / folder).rglob("*.py")) + sorted((ROOT / folder).rglob("*.sh"))
    files += sorted((ROOT / "sdelib").rglob("*.json"))     # shipped logs and results
    return [path for path in files if path.is_file() and ".ipynb_checkpoints" not in path.parts]


def lines_of(path):
    """(line label, text) pairs. A notebook is read cell by cell, sources only (they are committed
    without outputs), so the label is cell:line of the source a reader edits."""
    if path.suffix == ".ipynb":
        notebook = json.loads(path.read_text(encoding="utf-8"))
        for index, cell in enumerate(notebook["cells"]):
            source = cell["source"]
            source = "".join(source) if isinstance(source, list) else source
            for number, line in enumerate(source.splitlines(), start=1):
                yield f"cell {index} ({cell.get('id', '?')}), line {number}", line
    else:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            yield str(number), line


def hits(path):
    found = []
    for label, line in lines_of(path):
        for word, pattern in PATTERNS:
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{label}: {word!r}: {line.strip()[:120]}")
    return found


@pytest.mark.parametrize("path", scanned_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_no_internal_words(path):
    found = hits(path)
    assert not found, "internal words (cite the paper or the book's section instead):\n" + "\n".join(found)


def test_the_scan_finds_the_words(tmp_path):
    """Negative control: each pattern fires on a line written to contain it, and not on clean text."""
    for text in ("see SPEC §4", "as the issue asks", "Issue 6", "the brief's 20 %", "in our runs",
                 "the Quick Build", "the full build's steps"):
        assert any(pattern.search(text) for _, pattern in PATTERNS), text
    for text in ("a spec sheet", "Song et al. 2021, eq. (39)", "issues of numerical stability"):
        assert not any(pattern.search(text) for _, pattern in PATTERNS), text
