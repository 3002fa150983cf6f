"""The built book, in a real browser: it builds cleanly, its static sliders move, its maths renders
offline, and every chapter page keeps the reading rules at 1200 px.

The book is built once for the module (quick mode, SDELIB_QUICK=1) exactly as the README builds it,
`jupyter-book build -W --keep-going`, into a temporary folder. The pages are served from
localhost and opened in Debian's chromium driven by playwright (never `playwright install`).
Without chromium or playwright the browser tests skip, except under CI (env CI set), where they
fail: there the browser is part of the test set-up (.ci/run installs it).

To check a book built elsewhere instead (e.g. after editing only this file), point
SDELIB_BOOK_HTML at its HTML folder: `SDELIB_BOOK_HTML=/path/to/_build/html pytest
tests/test_book_html.py`. Nothing is built then, and the build test itself is skipped; the folder
must hold a build of this checkout's _toc.yml and _config.yml.

The reading rules (READING_CHECKS, run in the page at 1200 px on every chapter): no display
equation wider than the text column (about 620 px) unless the element that scrolls it sideways
always shows its scrollbar (overflow-x: scroll; the theme's overflow-x: auto hides it until one
scrolls, so the display looks cut off); no Markdown table printed as raw pipes; no raw `$` or TeX
command in prose and no MathJax error; no traceback output; no bare repr output
(`SamplerResult(samples=...)`); no link to the placeholder repository. Each check has a negative
control: a small synthetic page that breaks the rule, on which the check must fail (and a clean
page, on which it must pass); those pages are written to a temporary folder and use the MathJax
that sphinx-mathjax-offline ships, so the controls need no book build.

A page is ready for the checks when MathJax has typeset it (`MathJax.startup.promise`) and its
fonts are loaded, not when the network is idle: playwright's "networkidle" (no request for 500 ms)
is about requests, not layout, and it timed out at 30 s on a fresh machine. If typesetting times
out, the failure lists the requests still in flight (`_wait_until_typeset`).
"""
import contextlib
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


PREBUILT = "SDELIB_BOOK_HTML"   # environment variable: an HTML folder built already (docstring)


@pytest.fixture(scope="module")
def book_build(tmp_path_factory):
    """Build the book once: (return code, log, html folder); or the folder of SDELIB_BOOK_HTML."""
    if os.environ.get(PREBUILT):
        html = Path(os.environ[PREBUILT]).resolve()
        if not (html / "index.html").exists():
            pytest.fail(f"{PREBUILT}={html} holds no built HTML book")
        return 0, f"(prebuilt: {html})", html
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


@contextlib.contextmanager
def _serve(directory):
    """Serve a folder on localhost (as a web host would); yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def server(html_dir):
    """Serve the built book on localhost; yields its base URL."""
    with _serve(html_dir) as url:
        yield url


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    with launch_chromium() as chromium:
        yield chromium


def _open(browser, url, viewport=None):
    """A new page at url (optionally with a viewport size), and the lists of its JavaScript errors
    and of the requests it sent anywhere but the local server (filled as the page runs). The
    requests still in flight are kept too (`_wait_until_typeset` names them if it times out)."""
    page = browser.new_page(viewport=viewport) if viewport else browser.new_page()
    errors, outside, in_flight = [], [], {}
    origin = url.split("/", 3)[:3]

    def record(request):
        in_flight[id(request)] = request.url
        local = request.url.split("/", 3)[:3] == origin
        if not local and not request.url.startswith(("data:", "blob:", "about:")):
            outside.append(request.url)

    def done(request):
        in_flight.pop(id(request), None)

    page.on("pageerror", lambda exc: None if str(exc) in KNOWN_UPSTREAM_ERRORS else
            errors.append(str(exc)))
    page.on("request", record)
    page.on("requestfinished", done)
    page.on("requestfailed", done)
    _IN_FLIGHT[id(page)] = in_flight
    page.goto(url, wait_until="load")
    return page, errors, outside


_IN_FLIGHT: dict[int, dict] = {}   # id(page) -> {id(request): url} of its unfinished requests
TYPESET_TIMEOUT_MS = 60_000


def _wait_until_typeset(page, timeout_ms: int = TYPESET_TIMEOUT_MS):
    """Wait until the page is laid out as a reader sees it: the document loaded, MathJax's first
    typesetting finished (`MathJax.startup.promise`, on pages that have maths) and the web fonts
    loaded. This, not an idle network, is what the checks need (waiting for playwright's
    "networkidle", 500 ms without a request, timed out at 30 s on a fresh machine). On a timeout
    the error names the requests still in flight."""
    script = """() => {
        if (document.readyState !== 'complete') return false;
        if (window.__sdelibTypeset === true) return true;
        if (window.__sdelibTypeset === undefined) {
            window.__sdelibTypeset = 'waiting';
            const maths = document.querySelector('.math, mjx-container');
            const typeset = (maths && window.MathJax && MathJax.startup && MathJax.startup.promise)
                ? MathJax.startup.promise : Promise.resolve();
            if (maths && !(window.MathJax && MathJax.startup && MathJax.startup.promise)) {
                window.__sdelibTypeset = undefined;   // MathJax not started yet: ask again
                return false;
            }
            typeset.then(() => document.fonts.ready)
                   .then(() => { window.__sdelibTypeset = true; },
                         (err) => { window.__sdelibTypeset = 'failed: ' + err; });
        }
        return window.__sdelibTypeset === true;
    }"""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    try:
        page.wait_for_function(script, timeout=timeout_ms, polling=100)
    except PlaywrightTimeout:
        state = page.evaluate("() => String(window.__sdelibTypeset)")
        pending = sorted(_IN_FLIGHT.get(id(page), {}).values())
        raise AssertionError(
            f"{page.url}: not typeset after {timeout_ms / 1000:.0f} s (MathJax state {state}); "
            f"{len(pending)} requests still in flight: {pending[:10]}") from None


# --- the build -----------------------------------------------------------------------------------
def test_book_builds_with_no_cell_error_and_no_warning(book_build):
    if os.environ.get(PREBUILT):
        pytest.skip(f"{PREBUILT} is set: the book was built elsewhere, not by this test")
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


def _button_links(html: str) -> dict[str, list[str]]:
    """The Colab and repository buttons of a built page: {'colab': [...], 'repository': [...]}.
    Only the theme's buttons (anchors whose class names a button) count: a chapter may link to
    another project's repository in its text (e.g. the score-SDE paper's code)."""
    buttons = [anchor for anchor in re.findall(r"<a\s[^>]*>", html)
               if re.search(r'class="[^"]*\bbtn\b', anchor)]
    hrefs = [match.group(1) for anchor in buttons
             for match in [re.search(r'href="([^"]+)"', anchor)] if match]
    return {"colab": [h for h in hrefs if h.startswith("https://colab.research.google.com/")],
            "repository": [h for h in hrefs
                           if re.fullmatch(r"https://github\.com/[^/]+/[^/]+/?", h)]}


def _check_buttons(page_html: str, doc: str, url: str, branch: str, where: str):
    """A chapter page has the buttons of the repository `url`: Colab (to its notebook on
    `branch`) and the repository, for a real one; none and no link to it for the placeholder."""
    from tools.set_repository import PLACEHOLDER_URL, is_placeholder

    links = _button_links(page_html)
    if is_placeholder(url):
        assert links == {"colab": [], "repository": []}, (
            f"{where}: buttons that lead to the placeholder repository's 404: {links}")
        assert PLACEHOLDER_URL.split("github.com/")[1] not in page_html, where
    else:
        owner, repo = url.rstrip("/").split("/")[-2:]
        colab = f"https://colab.research.google.com/github/{owner}/{repo}/blob/{branch}/{doc}.ipynb"
        assert colab in links["colab"], f"{where} has no link to {colab}: {links}"
        assert url in [h.rstrip("/") for h in links["repository"]], f"{where}: {links}"


def test_colab_buttons_follow_the_configured_repository(html_dir, chapter_pages):
    """With the committed _config.yml: for a real repository, the Colab link of every chapter
    points at its notebook there, and the repository button at it; for the placeholder there is
    neither (each would be a 404). The chapter's first cell (which installs sdelib in Colab)
    names that repository (tests/test_colab_cell.py checks the cell itself); its input is not in
    the page. The other state is built by test_buttons_in_a_built_book_follow_the_repository."""
    from tools.set_repository import install_cell_source, pip_arguments, read_repository

    url, branch = read_repository(ROOT)
    for page, doc in zip(chapter_pages, _chapters()):
        text = page.read_text()
        _check_buttons(text, doc, url, branch, page.name)
        first_cell = json.loads((ROOT / f"{doc}.ipynb").read_text())["cells"][0]
        assert "".join(first_cell["source"]) == install_cell_source(url, branch), doc
        assert "google.colab" not in text and pip_arguments(url, branch) not in text, doc


@pytest.mark.parametrize("url", ["https://github.com/me/my-repo", "https://github.com/OWNER/REPO"])
def test_buttons_in_a_built_book_follow_the_repository(tmp_path, url):
    """Both states, built: a one-chapter book with this repository's _config.yml (extensions,
    button switches), its repository set with `python -m tools.set_repository`, built by
    jupyter-book (-W, notebooks not executed). A real repository gets the Colab and repository
    buttons; the placeholder gets neither."""
    from tools import set_repository as sr

    for name in ("_config.yml", "_static", "_ext", "book/references.bib"):
        source, target = ROOT / name, tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy(source, target)
    config = (tmp_path / "_config.yml").read_text()
    assert "execute_notebooks: force" in config
    (tmp_path / "_config.yml").write_text(
        config.replace("execute_notebooks: force", "execute_notebooks: \"off\""))
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A chapter")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, tmp_path / "book" / "intro.ipynb")
    sr.set_repository(url, "main", tmp_path)          # writes the switches and the install cell
    assert sr.buttons_on(yaml.safe_load((tmp_path / "_config.yml").read_text())) == {
        "repository": not sr.is_placeholder(url), "colab": not sr.is_placeholder(url)}
    proc = subprocess.run([_jupyter_book(), "build", "-W", "--keep-going", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    page = tmp_path / "_build" / "html" / "book" / "intro.html"
    _check_buttons(page.read_text(), "book/intro", url, "main", f"{url}: intro.html")


# --- in the browser ------------------------------------------------------------------------------
def test_maths_renders_offline(browser, server, html_dir, chapter_pages):
    math_pages = [p for p in chapter_pages if 'class="math' in p.read_text()]
    assert math_pages, "no chapter has display or inline maths"
    for path in math_pages:
        page, errors, outside = _open(browser, f"{server}/{path.relative_to(html_dir).as_posix()}")
        _wait_until_typeset(page)
        assert page.locator("mjx-container").count() > 0
        assert page.locator("mjx-merror").count() == 0, f"{path.name}: a MathJax error"
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
        page, errors, _ = _open(browser, f"{server}/{path.relative_to(html_dir).as_posix()}",
                                viewport={"width": LAYOUT_WIDTH, "height": 900})
        _wait_until_typeset(page)
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
        problems += [f"{path.name}: {problem}" for problem in _code_and_table_fit(page)]
        page.screenshot(path=str(SCREENSHOTS / f"{path.stem}.png"), full_page=True)
        assert errors == [], f"{path.name} raised {errors}"
        page.close()
    print("\n".join(problems))
    assert not problems, f"{len(problems)} layout problems:\n" + "\n".join(problems[:40])


CODE_COLUMNS = 88      # the book's code is wrapped at 88 columns (ruff line-length)
# In the page: how many monospace characters a code block's text box holds, and the padding of the
# cells of printed tables (a bare table runs its cells together: "3.16e-039.85").
FIT_JS = r"""() => {
    const out = {columns: null, unpadded: 0};
    const pre = document.querySelector('article div.highlight pre');
    if (pre) {
        const probe = document.createElement('span');
        probe.textContent = 'x'.repeat(100);
        probe.style.whiteSpace = 'pre';
        pre.appendChild(probe);
        const style = getComputedStyle(pre);
        const box = pre.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
        out.columns = box / (probe.getBoundingClientRect().width / 100);
        probe.remove();
    }
    for (const cell of document.querySelectorAll(
            'article div.cell_output table td, article div.cell_output table th')) {
        const style = getComputedStyle(cell);
        if (parseFloat(style.paddingLeft) + parseFloat(style.paddingRight) < 4) out.unpadded += 1;
    }
    return out;
}"""


def _code_and_table_fit(page) -> list[str]:
    """What breaks the fit rules on a page: a code block holding fewer than CODE_COLUMNS
    characters per line (its longer lines wrap mid-line), printed table cells without padding."""
    fit = page.evaluate(FIT_JS)
    problems = []
    if fit["columns"] is not None and fit["columns"] < CODE_COLUMNS:
        problems.append(f"code blocks hold {fit['columns']:.1f} columns < {CODE_COLUMNS}")
    if fit["unpadded"]:
        problems.append(f"{fit['unpadded']} printed table cells without padding")
    return problems


def test_the_fit_checks_fail_on_the_theme_defaults(browser, server, html_dir, chapter_pages):
    """Negative control: on a chapter with code and a printed table, the book's CSS overridden by
    the earlier code size (0.76em, which held 80 columns) and unpadded cells breaks both rules."""
    path = next(p for p in chapter_pages if p.stem == "training")
    page, _, _ = _open(browser, f"{server}/{path.relative_to(html_dir).as_posix()}",
                       viewport={"width": LAYOUT_WIDTH, "height": 900})
    _wait_until_typeset(page)
    assert _code_and_table_fit(page) == []
    page.add_style_tag(content="div.highlight pre { font-size: 0.76em !important; } "
                               "div.cell_output td, div.cell_output th { padding: 0 !important; }")
    problems = _code_and_table_fit(page)
    page.close()
    assert len(problems) == 2 and "columns" in problems[0] and "padding" in problems[1], problems


# --- the reading rules, on every chapter at 1200 px ----------------------------------------------
# One function evaluated in the page; it returns, per rule, a list of what breaks it (a short
# description each). Only the article (the text column) is checked, not the theme's sidebars.
READING_CHECKS_JS = r"""(placeholder) => {
    const found = {wide_equations: [], raw_tables: [], raw_tex: [], tracebacks: [],
                   bare_reprs: [], placeholder_links: [], long_folded_checks: [],
                   wide_tables: [], combining_marks: []};
    const article = document.querySelector('article.bd-article')
        || document.querySelector('article') || document.querySelector('main') || document.body;
    const squash = (text) => (text || '').replace(/\s+/g, ' ').trim().slice(0, 90);
    const tex = (container) => {
        try {
            const items = MathJax.startup.document.getMathItemsWithin(container);
            if (items.length) return squash(items[0].math);
        } catch (e) { /* no MathJax document: fall back on the text */ }
        return squash(container.getAttribute('aria-label') || container.textContent);
    };

    // 1. display equations no wider than the text column, unless the element that scrolls them
    //    sideways always shows its scrollbar (overflow-x: scroll). The theme's own overflow-x:
    //    auto on mjx-container does not count: its scrollbar is hidden until one scrolls (overlay
    //    scrollbars, headless screenshots), so the display looks cut off at the column's edge.
    const style = getComputedStyle(article);
    const box = article.getBoundingClientRect();
    const left = box.left + parseFloat(style.paddingLeft);
    const right = box.right - parseFloat(style.paddingRight);
    for (const container of article.querySelectorAll('mjx-container[display="true"]')) {
        const body = container.querySelector(':scope > mjx-math, :scope > svg') || container;
        const r = body.getBoundingClientRect();
        if (r.width === 0) continue;                      // not rendered (a folded cell)
        if (r.left >= left - 1 && r.right <= right + 1) continue;
        let scrolls = false;                             // the innermost element that scrolls it
        for (let e = container; e && e !== article; e = e.parentElement) {
            const overflow = getComputedStyle(e).overflowX;
            const overflows = e.scrollWidth > e.clientWidth + 1;
            if ((overflow === 'auto' || overflow === 'scroll') && overflows) {
                scrolls = overflow === 'scroll';
                break;
            }
        }
        if (!scrolls) {
            found.wide_equations.push(
                `${Math.round(r.width)} px in a ${Math.round(right - left)} px column `
                + `(${Math.round(r.left - left)} to ${Math.round(r.right - left)} px): `
                + tex(container));
        }
    }

    const inCode = (node) => !!(node.parentElement && node.parentElement.closest(
        'pre, code, script, style, textarea, .highlight, mjx-container, .sdelib-slider-frames'));
    const proseText = (element) => {       // the text of an element outside maths and code
        const parts = [];
        const texts = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
        for (let node = texts.nextNode(); node; node = texts.nextNode()) {
            if (!inCode(node)) parts.push(node.textContent);
        }
        return parts.join('');
    };

    // 2. Markdown tables that did not become tables: a paragraph (or list item) of pipes, or a
    //    printed separator row |---|---| in an output
    for (const block of article.querySelectorAll('p, li, dd')) {
        if (block.closest('pre, code, table')) continue;
        const text = proseText(block).trim();
        if (text.startsWith('|') || /\|\s*:?(-{3,}|[\u2014\u2013])/.test(text)) {
            found.raw_tables.push(squash(text));
        }
    }
    for (const pre of article.querySelectorAll('.cell_output pre, .output pre')) {
        const row = pre.textContent.split('\n').find(
            (line) => /^\s*\|?\s*:?-{3,}:?\s*\|\s*:?-{3,}/.test(line));
        if (row !== undefined) found.raw_tables.push('output: ' + squash(row));
    }

    // 3. raw TeX: a $ or a \command in the text outside maths and code (one report per block);
    //    a MathJax error; a backslash left in the text of rendered maths (\text{marginal\_std}),
    //    one report per equation
    const blocks = new Set();
    const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        if (inCode(node)) continue;
        const text = node.textContent;
        const hit = text.match(/\$|\\[A-Za-z]+|\\[,;!{}_^]/);
        const block = node.parentElement.closest(
            'p, li, dd, dt, td, th, h1, h2, h3, h4, h5, h6, div');
        if (hit && !blocks.has(block)) {
            blocks.add(block);
            const at = Math.max(0, hit.index - 40);
            found.raw_tex.push(squash(text.slice(at, hit.index + 50)));
        }
    }
    for (const container of article.querySelectorAll('mjx-container')) {
        const error = container.querySelector('mjx-merror');
        const mtext = [...container.querySelectorAll('mjx-assistive-mml mtext')]
            .find((m) => m.textContent.includes('\\'));
        if (error) {
            found.raw_tex.push('MathJax error: ' + squash(error.getAttribute('data-mjx-error')
                || error.textContent) + ' in ' + tex(container));
        } else if (mtext) {
            found.raw_tex.push('TeX in the text of maths: ' + squash(mtext.textContent)
                + ' in ' + tex(container));
        }
    }

    // 4. tracebacks and 5. bare reprs, per output of a code cell (its text without the copy
    //    button's label)
    const outputs = article.querySelectorAll('.cell_output > .output, .cell_output > div');
    for (const output of outputs) {
        const parts = [];
        const texts = document.createTreeWalker(output, NodeFilter.SHOW_TEXT);
        for (let node = texts.nextNode(); node; node = texts.nextNode()) {
            if (!(node.parentElement && node.parentElement.closest('button'))) {
                parts.push(node.textContent);
            }
        }
        const text = parts.join('').trim();
        const red = output.querySelector('[class~="-Color-Red"], [class~="-Color-BrightRed"], '
            + '[class~="-BGColor-Red"], .ansi-red-fg, .ansi-red-intense-fg, .ansi-red-bg');
        if (output.matches('.traceback, .error') || /Traceback/.test(text) || red) {
            const line = text.split('\n').find((l) => /(Error|Exception|Interrupt)\b/.test(l))
                || text.split('\n')[0];
            found.tracebacks.push(squash(line));
            continue;
        }
        // Name(field=..., ...) as Python prints a dataclass or namedtuple, or <... object at 0x...>
        if (/^[A-Za-z_][\w.]*\(\s*[A-Za-z_]\w*\s*=[\s\S]*\)$/.test(text)
                || /^<[\w.]+ object at 0x[0-9a-fA-F]+>$/.test(text)) {
            found.bare_reprs.push(squash(text));
        }
    }

    // 6. no link (or button) to the placeholder repository, anywhere on the page
    for (const element of document.querySelectorAll('*')) {
        for (const attribute of element.attributes) {
            if (attribute.value.includes(placeholder)) {
                const value = attribute.value.slice(0, 90);
                found.placeholder_links.push(
                    `<${element.tagName.toLowerCase()} ${attribute.name}="${value}">`);
            }
        }
    }

    // 7. a folded check (a hide-input cell: its code folded, its output shown) prints one
    //    visible line: more lines belong in a table or folded under that line (viz.folded_lines),
    //    and that line wraps to two rows of the output box at most
    const rows = (element) => {                 // rendered rows of an element's text
        const range = document.createRange();
        range.selectNodeContents(element);
        return new Set([...range.getClientRects()].filter((r) => r.width > 0)
            .map((r) => Math.round(r.bottom))).size;
    };
    for (const cell of article.querySelectorAll('div.cell.tag_hide-input')) {
        for (const stream of cell.querySelectorAll('.cell_output .output.stream')) {
            const pre = stream.querySelector('pre') || stream;     // not the copy button's label
            const lines = pre.textContent.split('\n').filter((line) => line.trim());
            if (lines.length > 1) {
                found.long_folded_checks.push(`${lines.length} lines: ` + squash(lines[0]));
            } else if (lines.length === 1 && rows(pre) > 2) {
                found.long_folded_checks.push(`one line in ${rows(pre)} rows: ` + squash(lines[0]));
            }
        }
        for (const summary of cell.querySelectorAll('details.sdelib-folded > summary')) {
            if (rows(summary) > 2) {
                found.long_folded_checks.push(`a summary in ${rows(summary)} rows: `
                    + squash(summary.textContent));
            }
        }
    }

    // 9. no combining mark (σ̃ = σ + U+0303) in printed output: monospace fonts draw it beside its
    //    letter ("σ˜= 99"); tables and figures, in the text font, may use it
    for (const pre of article.querySelectorAll('.cell_output pre, details.sdelib-folded > summary')) {
        if (/\p{M}/u.test(pre.textContent)) {
            const at = pre.textContent.search(/\p{M}/u);
            found.combining_marks.push(squash(pre.textContent.slice(Math.max(0, at - 40), at + 30)));
        }
    }

    // 8. tables no wider than the text column (a table that scrolls sideways looks cut off: the
    //    scrollbar is hidden until one scrolls)
    for (const table of article.querySelectorAll('table')) {
        const r = table.getBoundingClientRect();
        if (r.width === 0) continue;                      // not rendered (a folded cell)
        if (r.left < left - 1 || r.right > right + 1) {
            found.wide_tables.push(`${Math.round(r.width)} px in a ${Math.round(right - left)} px `
                + 'column: ' + squash(table.textContent));
        }
    }
    return found;
}"""
READING_CHECKS = ("wide_equations", "raw_tables", "raw_tex", "tracebacks", "bare_reprs",
                  "placeholder_links", "long_folded_checks", "wide_tables",
                  "combining_marks")


def _placeholder() -> str:
    """'OWNER/REPO': the owner/name of the placeholder repository, as links would contain it."""
    from tools.set_repository import PLACEHOLDER_URL
    return PLACEHOLDER_URL.split("github.com/", 1)[1]


def _reading_violations(page) -> dict[str, list[str]]:
    """What breaks each reading rule on a page that is typeset (READING_CHECKS_JS)."""
    found = page.evaluate(READING_CHECKS_JS, _placeholder())
    assert sorted(found) == sorted(READING_CHECKS)
    return found


def test_reading_rules_hold_on_every_chapter_at_1200px(browser, server, html_dir, chapter_pages):
    """Every chapter at 1200 px: no display equation wider than the column, no Markdown table
    printed as pipes, no raw TeX in prose, no traceback, no bare repr, no placeholder link. Prints
    the count per page and rule, then every violation."""
    counts, problems = {}, []
    for path in chapter_pages:
        page, errors, _ = _open(browser, f"{server}/{path.relative_to(html_dir).as_posix()}",
                                viewport={"width": LAYOUT_WIDTH, "height": 900})
        _wait_until_typeset(page)
        found = _reading_violations(page)
        counts[path.stem] = {check: len(found[check]) for check in READING_CHECKS}
        problems += [f"{path.name}: {check}: {what}" for check in READING_CHECKS
                     for what in found[check]]
        assert errors == [], f"{path.name} raised {errors}"
        page.close()
    header = f"{'chapter':16s}" + "".join(f"{c:>18s}" for c in READING_CHECKS)
    rows = [f"{name:16s}" + "".join(f"{n[c]:18d}" for c in READING_CHECKS)
            for name, n in counts.items()]
    totals = f"{'total':16s}" + "".join(
        f"{sum(n[c] for n in counts.values()):18d}" for c in READING_CHECKS)
    print("\n" + "\n".join([header, *rows, totals]) + "\n" + "\n".join(problems))
    assert not problems, (f"{len(problems)} breaches of the reading rules at {LAYOUT_WIDTH} px:\n"
                          + "\n".join([header, *rows, totals]) + "\n" + "\n".join(problems[:60]))


# --- negative controls: each check fails on a page made to break its rule ------------------------
_LONG_SUM = " + ".join(f"a_{{{k}}} b_{{{k}}}" for k in range(1, 60))
_CONTROL_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>control</title>
<style>
  body {{ margin: 0; font-family: sans-serif; }}
  .cell_output pre {{ white-space: pre-wrap; }}
  article.bd-article {{ box-sizing: border-box; width: 688px; margin-left: 240px;
                        padding: 0 32px; }}
  mjx-container[display="true"] {{ overflow-x: auto; overflow-y: hidden; }}
  .scroll-x mjx-container[display="true"] {{ overflow-x: scroll; }}
</style>
<script>window.MathJax = {{ options: {{ ignoreHtmlClass: "tex2jax_ignore",
                                        processHtmlClass: "math" }} }};</script>
<script defer src="mathjax/tex-chtml.js"></script>
</head><body><main><article class="bd-article" role="main">
<section class="tex2jax_ignore">
<p>A sentence with inline maths <span class="math">\\(x_t = m(t)\\,x_0\\)</span>.</p>
<div class="math">\\[ \\mathrm{{d}}x = f(x, t)\\,\\mathrm{{d}}t + g(t)\\,\\mathrm{{d}}w \\]</div>
{body}
</section></article></main></body></html>
"""
# what each control page holds: (HTML that breaks the rule, how many breaches it holds)
BROKEN = {
    "wide_equations": (f"""
        <div class="math">\\[ {_LONG_SUM} \\]</div>
        <div style="overflow-x: auto"><div class="math">\\[ {_LONG_SUM} \\]</div></div>""", 2),
    "raw_tables": ("""
        <p>| sampler | NFE |
        |---|---:|
        | Euler | 500 |</p>
        <p>| sampler | NFE | |\u2014|\u2014:|</p>
        <div class="cell_output"><div class="output stream"><pre>| sampler | NFE |
|---|---:|
| Euler | 500 |</pre></div></div>""", 3),
    "raw_tex": ("""
        <p>The drift $f(x, t)$ of the SDE, and $g(t)$.</p>
        <p>A weight \\lambda(t) that was meant to be maths.</p>
        <div class="math">\\[ \\mathrm{{std}}(t) = \\text{{marginal\\_std}}(t) \\]</div>
        <div class="math">\\[ \\undefinedmacro x \\]</div>""", 4),
    "tracebacks": ("""
        <div class="cell_output"><div class="output traceback"><pre>----------------------------
NotImplementedError                       Traceback (most recent call last)
Cell In[25], line 6
NotImplementedError: your turn</pre></div></div>
        <div class="cell_output"><div class="output stream"><pre><span class="-Color -Color-Red">\
ValueError: sigma must be positive</span></pre></div></div>""", 2),
    "bare_reprs": ("""
        <div class="cell_output"><div class="output text_plain">
<pre>SamplerResult(samples=tensor([[ 0.7894],
        [-1.4026]]), nfe=500)</pre><button class="copybtn">Copy to clipboard</button></div></div>
        <div class="cell_output"><div class="output text_plain">
          <pre>&lt;sdelib.sde.VESDE object at 0x7f3a2c1d9e50&gt;</pre></div></div>""", 2),
    "placeholder_links": ("""
        <a class="btn"
           href="https://colab.research.google.com/github/OWNER/REPO/blob/main/book/intro.ipynb"
           >Colab</a>
        <a class="btn" href="https://github.com/OWNER/REPO" title="Source repository"
           >repository</a>""", 2),
    "long_folded_checks": ("""
        <div class="cell tag_hide-input"><div class="cell_output"><div class="output stream">
<pre>mean 1.4992 vs tr A = 1.5000 (SE 0.0072)
passed</pre></div></div></div>
        <div class="cell tag_hide-input"><div class="cell_output"><div class="output stream">
<pre>\u2713 VE: samples match the recursion
\u2713 VP: samples match the recursion</pre></div></div></div>
        <div class="cell tag_hide-input"><div class="cell_output"><div class="output stream">
<pre>\u2713 """ + "a check that says far too much on its one line, " * 8 + """</pre></div></div></div>
        <div class="cell tag_hide-input"><div class="cell_output"><div class="output text_html">
<details class="sdelib-folded"><summary>\u2713 """ + "a summary that runs on and on, " * 12
        + """</summary><pre>numbers</pre></details></div></div></div>""", 4),
    "combining_marks": ("""
        <div class="cell_output"><div class="output stream"><pre>\u2713 noise level \u03c3\u0303 = 99</pre></div></div>
        <div class="cell_output"><div class="output text_html"><details class="sdelib-folded">
<summary>\u2713 one line</summary><pre>x\u0303 = x / m</pre></details></div></div>""", 2),
    "wide_tables": ("""
        <table><tr>""" + "".join(f"<td style='white-space: nowrap'>column {k}</td>" for k in range(12)) + """</tr></table>
        <div class="cell_output"><div class="output text_html" style="overflow-x: auto"><table><tr>"""
                    + "".join(f"<td style='white-space: nowrap'>56.1 ± 2.{k}</td>" for k in range(12))
                    + """</tr></table></div></div>""", 2),
}
# a page that keeps every rule, with the right form of each thing the broken pages get wrong
CLEAN = f"""
    <div class="scroll-x"><div class="math">\\[ {_LONG_SUM} \\]</div></div>
    <div class="math">\\[ \\begin{{aligned}} \\mathrm{{d}}x &= f\\,\\mathrm{{d}}t \\\\
                          &\\quad + g\\,\\mathrm{{d}}w \\end{{aligned}} \\]</div>
    <table><tr><th>sampler</th><th>NFE</th></tr><tr><td>Euler</td><td>500</td></tr></table>
    <p>The price is 10 | 20 units; a path a/b.</p>
    <div class="cell_output"><div class="output stream">
<pre>\u2713 mean within 4 standard errors (z = 1.2)
Euler: 500 steps</pre></div></div>
    <div class="cell_output"><div class="output stream">
      <pre>v(1) = 96.93: the prior is N(0, 9.85^2 I)</pre></div></div>
    <div class="cell_output"><div class="output text_plain"><pre>tensor(0.5000)</pre></div></div>
    <div class="cell tag_hide-input"><div class="cell_output"><div class="output stream">
<pre>\u2713 the mean within 4 standard errors (z = 1.2)
</pre></div></div><div class="cell_output"><div class="output text_html"><details>
<summary>\u2713 both probes unbiased</summary><pre>gaussian 4.905
rademacher 4.897</pre></details></div></div></div>
    <a href="https://github.com/me/my-repo">a real repository</a>"""


def _mathjax_dir() -> Path:
    """The MathJax that sphinx-mathjax-offline copies into the book (no build needed)."""
    import importlib.util

    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or spec.origin is None:
        skip_or_fail("sphinx-mathjax-offline is not installed (pip install sdelib[test])")
    return Path(spec.origin).parent / "static" / "mathjax"


@pytest.fixture(scope="module")
def control_site(tmp_path_factory):
    """The control pages, served from a temporary folder: {name: URL}."""
    folder = tmp_path_factory.mktemp("reading-controls")
    (folder / "mathjax").symlink_to(_mathjax_dir(), target_is_directory=True)
    pages = {"clean": CLEAN, **{check: html for check, (html, _) in BROKEN.items()}}
    for name, body in pages.items():
        (folder / f"{name}.html").write_text(_CONTROL_PAGE.format(body=body), encoding="utf-8")
    with _serve(folder) as url:
        yield {name: f"{url}/{name}.html" for name in pages}


def _check_control(browser, url):
    page, errors, outside = _open(browser, url, viewport={"width": LAYOUT_WIDTH, "height": 900})
    _wait_until_typeset(page)
    assert page.locator("mjx-container").count() >= 2, "MathJax did not typeset the control page"
    found = _reading_violations(page)
    page.close()
    assert errors == [] and outside == [], (errors, outside)
    return found


def test_the_reading_checks_pass_on_a_clean_page(browser, control_site):
    found = _check_control(browser, control_site["clean"])
    assert found == {check: [] for check in READING_CHECKS}, found


@pytest.mark.parametrize("check", READING_CHECKS)
def test_each_reading_check_fails_on_a_page_that_breaks_its_rule(browser, control_site, check):
    """Negative control: the page breaks `check`'s rule n times; the check finds all n, and the
    other checks find nothing there."""
    found = _check_control(browser, control_site[check])
    expected = BROKEN[check][1]
    assert len(found[check]) == expected, (check, found[check])
    others = {name: hits for name, hits in found.items() if name != check and hits}
    assert not others, f"the {check} control page trips other checks: {others}"
