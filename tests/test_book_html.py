"""The built book, in a real browser: it builds cleanly, its static sliders move, its maths renders
offline.

The book is built once for the module (quick mode, SDELIB_QUICK=1) exactly as the README builds it,
`jupyter-book build -W --keep-going`, into a temporary folder. The pages are served from
localhost and opened in Debian's chromium driven by playwright (never `playwright install`).
Without chromium or playwright the browser tests skip, except under CI (env CI set), where they
fail: there the browser is part of the test set-up (.ci/run installs it).
"""
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from browser import launch_chromium, skip_or_fail

pytestmark = pytest.mark.browser   # every test here drives or needs the built book

ROOT = Path(__file__).resolve().parents[1]
# Where MathJax is served from when it is not bundled with the book.
MATHJAX_CDNS = re.compile(r"(cdn\.jsdelivr\.net|cdnjs\.cloudflare\.com|unpkg\.com|mathjax\.org)"
                          r"[^\"']*mathjax", re.IGNORECASE)
BUILD_TIMEOUT_S = 3600
# A JavaScript error of the Jupyter Book 1 stack itself, not of this book: every page declares
# sphinx-thebe's `const THEBE_JS_URL` twice (also a minimal book with the default config). It only
# stops thebe's own config script, and thebe is disabled here (_config.yml).
KNOWN_UPSTREAM_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)


def _chapters() -> list[str]:
    """The notebook chapters of _toc.yml (root first), e.g. 'book/intro'; the reading aids
    (notation, glossary, references) are Markdown pages, not chapters."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    entries = toc.get("chapters", []) + [
        entry for part in toc.get("parts", []) for entry in part.get("chapters", [])]
    docs = [toc["root"]] + [entry["file"] for entry in entries]
    return [doc for doc in docs if (ROOT / f"{doc}.ipynb").exists()]


def _jupyter_book() -> str:
    """The jupyter-book of this interpreter's environment (else the one on PATH)."""
    sibling = Path(sys.executable).with_name("jupyter-book")
    return str(sibling) if sibling.exists() else (shutil.which("jupyter-book") or "jupyter-book")


@pytest.fixture(scope="module")
def book_build(tmp_path_factory):
    """Build the book once: (return code, log, html folder)."""
    out = tmp_path_factory.mktemp("book")
    env = dict(os.environ, SDELIB_QUICK="1")
    for name in ("SDELIB_SLIDERS", "JPY_SESSION_NAME", "VSCODE_PID"):  # build as from a plain shell
        env.pop(name, None)
    proc = subprocess.run(
        [_jupyter_book(), "build", "-W", "--keep-going", "--path-output", str(out), "."],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    return proc.returncode, proc.stdout + proc.stderr, out / "_build" / "html"


@pytest.fixture(scope="module")
def html_dir(book_build):
    returncode, log, html = book_build
    if returncode != 0:
        pytest.fail(f"the book build failed (return code {returncode}):\n{log[-5000:]}")
    return html


@pytest.fixture(scope="module")
def chapter_pages(html_dir):
    pages = [html_dir / f"{doc}.html" for doc in _chapters()]
    missing = [str(p.relative_to(html_dir)) for p in pages if not p.exists()]
    assert not missing, f"chapters of _toc.yml with no page: {missing}"
    return pages


@pytest.fixture(scope="module")
def server(html_dir):
    """Serve the built book on localhost (as a web host would); yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    with launch_chromium() as chromium:
        yield chromium


def _open(browser, url):
    """A new page at url, and the lists of its JavaScript errors and of the requests it sent
    anywhere but the local server (filled as the page runs)."""
    page, errors, outside = browser.new_page(), [], []
    origin = url.split("/", 3)[:3]

    def record(request):
        local = request.url.split("/", 3)[:3] == origin
        if not local and not request.url.startswith(("data:", "blob:", "about:")):
            outside.append(request.url)

    page.on("pageerror", lambda exc: None if str(exc) in KNOWN_UPSTREAM_ERRORS else
            errors.append(str(exc)))
    page.on("request", record)
    page.goto(url, wait_until="load")
    return page, errors, outside


# --- the build -----------------------------------------------------------------------------------
def test_book_builds_with_no_cell_error_and_no_warning(book_build):
    returncode, log, _ = book_build
    assert returncode == 0, f"`jupyter-book build -W --keep-going .` failed:\n{log[-5000:]}"


def test_every_chapter_of_the_toc_has_a_page(chapter_pages):
    assert [p.stem for p in chapter_pages] == [doc.split("/")[-1] for doc in _chapters()]


def test_pages_load_mathjax_from_the_book_not_a_cdn(html_dir, chapter_pages):
    assert (html_dir / "_static" / "mathjax" / "tex-chtml.js").exists()
    for page in chapter_pages:
        text = page.read_text()
        assert not MATHJAX_CDNS.search(text), f"{page.name} refers to a MathJax CDN"
        assert 'src="../_static/mathjax/tex-chtml.js"' in text, f"{page.name} lacks local MathJax"


def test_colab_buttons_open_each_chapter_from_the_configured_repository(html_dir, chapter_pages):
    """The Colab link of every chapter points at its notebook in the repository of _config.yml,
    and the chapter's first cell (which installs sdelib in Colab) names that repository
    (tests/test_colab_cell.py checks the cell itself); its input is not in the page."""
    from tools.set_repository import install_cell_source, pip_arguments

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    url, branch = config["repository"]["url"].rstrip("/"), config["repository"]["branch"]
    owner, repo = url.split("/")[-2:]
    for page, doc in zip(chapter_pages, _chapters()):
        expected = f"https://colab.research.google.com/github/{owner}/{repo}/blob/{branch}/{doc}.ipynb"
        text = page.read_text()
        assert f'href="{expected}"' in text, f"{page.name} has no link to {expected}"
        first_cell = json.loads((ROOT / f"{doc}.ipynb").read_text())["cells"][0]
        assert "".join(first_cell["source"]) == install_cell_source(url, branch), doc
        assert "google.colab" not in text and pip_arguments(url, branch) not in text, doc


# --- in the browser ------------------------------------------------------------------------------
def test_maths_renders_offline(browser, server, html_dir, chapter_pages):
    math_pages = [p for p in chapter_pages if 'class="math' in p.read_text()]
    assert math_pages, "no chapter has display or inline maths"
    for path in math_pages:
        page, errors, outside = _open(browser, f"{server}/{path.relative_to(html_dir).as_posix()}")
        page.wait_for_selector("mjx-container", state="attached", timeout=30_000)
        assert page.locator("mjx-container").count() > 0
        page.wait_for_load_state("networkidle")
        assert outside == [], f"{path.name} requested {outside[:5]}"
        assert errors == [], f"{path.name} raised {errors}"
        page.close()


def _slider_state(slider):
    return (slider.locator(".sdelib-slider-img").get_attribute("src"),
            slider.locator(".sdelib-slider-label").inner_text())


def test_every_static_slider_moves_its_image_and_label(browser, server, html_dir, chapter_pages):
    n_sliders = 0
    for path in chapter_pages:
        if "sdelib-slider" not in path.read_text():
            continue
        page, errors, _ = _open(browser, f"{server}/{path.relative_to(html_dir).as_posix()}")
        sliders = page.locator(".sdelib-slider")
        assert sliders.count() > 0, f"{path.name}: slider markup present but no .sdelib-slider"
        for k in range(sliders.count()):
            slider = sliders.nth(k)
            slider.scroll_into_view_if_needed()
            frames = json.loads(slider.locator(".sdelib-slider-frames").text_content())
            range_input = slider.locator("input.sdelib-slider-input")
            last = int(range_input.get_attribute("max"))
            assert last == len(frames["srcs"]) - 1 >= 1
            where = f"{path.name}, slider {k}"

            # a user's key press moves it by one frame
            start = int(range_input.input_value())
            before = _slider_state(slider)
            range_input.focus()
            range_input.press("ArrowLeft" if start == last else "ArrowRight")
            index = start - 1 if start == last else start + 1
            after = _slider_state(slider)
            assert after != before and after[0] != before[0] and after[1] != before[1], where
            assert after == (frames["srcs"][index], frames["labels"][index]), where

            # then several positions set directly, each followed by an 'input' event
            for target in dict.fromkeys([last, 0, last // 2, 1, last - 1]):
                if target == index:
                    continue
                before = _slider_state(slider)
                range_input.evaluate("(el, v) => { el.value = v;"
                                     " el.dispatchEvent(new Event('input', {bubbles: true})); }",
                                     str(target))
                after = _slider_state(slider)
                assert after[0] != before[0] and after[1] != before[1], f"{where} -> {target}"
                assert after == (frames["srcs"][target], frames["labels"][target]), where
                index = target
            n_sliders += 1
        assert errors == [], f"{path.name} raised {errors}"
        page.close()
    assert n_sliders > 0, "no chapter of the built book has a static slider"


# --- the book reads as a book: folded checks, layout ---------------------------------------------
MAX_VISIBLE_CODE_LINES = 150    # per chapter: the teaching code; checks and boilerplate are folded
SCREENSHOTS = ROOT / "_build" / "screenshots"   # full-page screenshots at 1200 px, one per chapter
LAYOUT_WIDTH = 1200


def _code_lines(html: str) -> tuple[int, int]:
    """(visible, folded) non-blank lines of the code-cell inputs of a built chapter page. An input
    is folded when its cell carries a hide-input/hide-cell tag or sits inside a <details>."""
    from bs4 import BeautifulSoup
    visible = folded = 0
    for cell in BeautifulSoup(html, "html.parser").select("div.cell"):
        cell_input = cell.select_one("div.cell_input")
        if cell_input is None:
            continue
        n = sum(1 for line in cell_input.get_text().splitlines() if line.strip())
        hidden = any(tag in cell.get("class", []) for tag in ("tag_hide-input", "tag_hide-cell"))
        if hidden or cell_input.find_parent("details") is not None:
            folded += n
        else:
            visible += n
    return visible, folded


def test_every_chapter_shows_at_most_150_lines_of_code(chapter_pages):
    counts = {page.stem: _code_lines(page.read_text()) for page in chapter_pages}
    print("\nchapter          visible  folded")
    for name, (visible, folded) in counts.items():
        print(f"{name:16s} {visible:7d} {folded:7d}")
    too_many = {name: v for name, (v, _) in counts.items() if v > MAX_VISIBLE_CODE_LINES}
    assert not too_many, f"chapters with more than {MAX_VISIBLE_CODE_LINES} visible code lines"
    assert all(v > 0 for v, _ in counts.values()), "a chapter shows no code at all"
    assert all(f > 0 for _, f in counts.values()), "a chapter folds no code"


def test_layout_at_1200px_no_maths_in_headings_no_sideways_code(browser, server, html_dir,
                                                                  chapter_pages):
    """At 1200 px: no heading (h1-h4) of the article holds maths, no visible code block scrolls
    sideways; a full-page screenshot of every chapter goes to _build/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    problems = []
    for path in chapter_pages:
        page, errors, _ = _open(browser, f"{server}/{path.relative_to(html_dir).as_posix()}")
        page.set_viewport_size({"width": LAYOUT_WIDTH, "height": 900})
        if 'class="math' in path.read_text():
            page.wait_for_selector("mjx-container", state="attached", timeout=30_000)
        page.wait_for_load_state("networkidle")
        maths = page.eval_on_selector_all(
            "article h1, article h2, article h3, article h4",
            "els => els.filter(h => h.querySelector('mjx-container, .math'))"
            ".map(h => h.textContent.trim())")
        problems += [f"{path.name}: maths in heading {text!r}" for text in maths]
        wide = page.eval_on_selector_all(
            "div.highlight pre",
            "els => els.filter(p => p.clientWidth > 0 && p.scrollWidth > p.clientWidth + 1)"
            ".map(p => [p.scrollWidth, p.clientWidth, p.textContent.split('\\n')"
            ".reduce((a, b) => a.length >= b.length ? a : b).slice(0, 80)])")
        problems += [f"{path.name}: code block {s} > {c} px wide: {line!r}"
                     for s, c, line in wide]
        page.screenshot(path=str(SCREENSHOTS / f"{path.stem}.png"), full_page=True)
        assert errors == [], f"{path.name} raised {errors}"
        page.close()
    print("\n".join(problems))
    assert not problems, f"{len(problems)} layout problems:\n" + "\n".join(problems[:40])
