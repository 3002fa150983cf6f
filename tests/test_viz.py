"""sdelib.viz: sample grids, and the slider helper in its static (book) and live (kernel) modes."""
import json
import re
import sys
import types
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from sdelib import viz  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Elements(HTMLParser):
    """Collect (tag, attributes) of every start tag and the text of each <script>."""

    def __init__(self):
        super().__init__()
        self.tags, self.scripts, self._in_script = [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)


def _parse(html):
    parser = _Elements()
    parser.feed(html)
    return parser


def _line_at(level):
    """A figure whose content depends on `level`: a horizontal line at that height."""
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.axhline(level)
    ax.set_ylim(0, 1)
    return fig


@pytest.fixture(autouse=True)
def _no_frontend(monkeypatch):
    """Each test starts with no live frontend detected and no mode forced by the environment."""
    for name in ("SDELIB_SLIDERS", "JPY_SESSION_NAME", "VSCODE_PID", "TERM_PROGRAM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    yield
    plt.close("all")


# --- static sliders ------------------------------------------------------------------------------
def test_static_slider_renders_one_frame_per_value_in_order():
    values = [0.1, 0.3, 0.5, 0.7, 0.9]
    seen = []

    def render(value):
        seen.append(value)
        return _line_at(value)

    frames = viz.slider(render, values, label="t", fmt="{:.1f}", live=False)
    assert isinstance(frames, viz.SliderFrames)
    assert seen == values
    assert frames.values == values
    assert frames.labels == ["t = 0.1", "t = 0.3", "t = 0.5", "t = 0.7", "t = 0.9"]
    assert len(frames.pngs) == len(values)
    assert all(png.startswith(PNG_MAGIC) for png in frames.pngs)


def test_static_slider_closes_every_figure_it_renders():
    plt.close("all")
    viz.slider(_line_at, [0.2, 0.4, 0.6], label="level", live=False)
    assert plt.get_fignums() == []


def test_static_frames_differ_when_the_render_differs():
    frames = viz.slider(_line_at, [0.2, 0.4, 0.6, 0.8], label="level", live=False)
    assert len(set(frames.pngs)) == 4
    # Negative control: a render that ignores its value gives identical frames.
    constant = viz.slider(lambda value: _line_at(0.5), [0.2, 0.4, 0.6, 0.8], label="level",
                          live=False)
    assert len(set(constant.pngs)) == 1


def test_static_html_holds_one_range_input_one_image_and_all_labels():
    values = [1, 2, 3, 4, 5, 6]
    frames = viz.slider(lambda v: _line_at(v / 10), values, label="k", initial=3, live=False)
    page = _parse(frames.html)
    inputs = [attrs for tag, attrs in page.tags if tag == "input"]
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(inputs) == 1 and len(images) == 1
    assert inputs[0]["type"] == "range"
    assert (inputs[0]["min"], inputs[0]["max"], inputs[0]["step"]) == ("0", str(len(values) - 1), "1")
    assert inputs[0]["value"] == "2"  # initial=3 is the third value
    assert "oninput" in inputs[0]
    # the image shown is the initial frame; the JSON block holds every frame and label
    assert images[0]["src"] == "data:image/png;base64," + viz.base64.b64encode(frames.pngs[2]).decode()
    data = json.loads(page.scripts[0])
    assert data["labels"] == [f"k = {v}" for v in values]
    assert [src.split(",", 1)[1] for src in data["srcs"]] == [
        viz.base64.b64encode(png).decode() for png in frames.pngs]
    classes = {attrs.get("class") for _, attrs in page.tags}
    assert {"sdelib-slider", "sdelib-slider-input", "sdelib-slider-label",
            "sdelib-slider-img"} <= classes
    # self-contained: nothing is fetched from the network
    assert "http" not in frames.html and "src=\"//" not in frames.html


def test_two_static_sliders_get_distinct_ids():
    first = viz.slider(_line_at, [0.2, 0.4], label="a", live=False)
    second = viz.slider(_line_at, [0.2, 0.4], label="a", live=False)
    ids = [attrs["id"] for html in (first.html, second.html)
           for _, attrs in _parse(html).tags if "id" in attrs]
    assert len(ids) == len(set(ids)) == 4


def test_static_labels_are_html_escaped():
    frames = viz.slider(_line_at, [0.2, 0.4], label="<b>x</b>", live=False)
    assert "<b>" not in frames.html
    assert "&lt;b&gt;x&lt;/b&gt; = 0.2" in frames.html


# --- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("values", [[], [0.5]])
def test_slider_needs_at_least_two_values(values):
    with pytest.raises(ValueError, match="at least 2 values"):
        viz.slider(_line_at, values, label="t", live=False)


@pytest.mark.parametrize("live", [False, True])
def test_render_must_return_a_figure(live):
    def render_axes(value):
        return _line_at(value).axes[0]

    with pytest.raises(ValueError, match="must return a matplotlib Figure, got Axes"):
        viz.slider(render_axes, [0.2, 0.4], label="t", live=live)


def test_initial_must_be_one_of_the_values():
    with pytest.raises(ValueError, match="initial=0.3 is not one of the values"):
        viz.slider(_line_at, [0.2, 0.4], label="t", initial=0.3, live=False)


def test_labels_must_be_distinct():
    with pytest.raises(ValueError, match="same label"):
        viz.slider(_line_at, [0.21, 0.24], label="t", fmt="{:.1f}", live=False)


# --- mode selection ------------------------------------------------------------------------------
def test_mode_defaults_to_static_without_a_live_frontend():
    assert viz.slider_mode() == "static"


@pytest.mark.parametrize("env, mode", [("static", "static"), ("live", "live"), (" LIVE ", "live")])
def test_mode_follows_the_environment_variable(monkeypatch, env, mode):
    monkeypatch.setenv("SDELIB_SLIDERS", env)
    assert viz.slider_mode() == mode


def test_explicit_live_argument_overrides_the_environment(monkeypatch):
    monkeypatch.setenv("SDELIB_SLIDERS", "live")
    assert viz.slider_mode(live=False) == "static"
    monkeypatch.setenv("SDELIB_SLIDERS", "static")
    assert viz.slider_mode(live=True) == "live"


def test_environment_variable_overrides_a_detected_frontend(monkeypatch):
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/user/intro.ipynb")
    monkeypatch.setenv("SDELIB_SLIDERS", "static")
    assert viz.slider_mode() == "static"


def test_bad_environment_variable_is_rejected(monkeypatch):
    monkeypatch.setenv("SDELIB_SLIDERS", "animated")
    with pytest.raises(ValueError, match="SDELIB_SLIDERS must be one of"):
        viz.slider_mode()


def test_jupyter_server_kernel_is_live(monkeypatch):
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/user/intro.ipynb")
    assert viz.slider_mode() == "live"


def test_colab_is_live(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert viz.slider_mode() == "live"


def test_vscode_notebook_is_live_but_a_vscode_terminal_build_is_static(monkeypatch):
    monkeypatch.setenv("VSCODE_PID", "1234")
    assert viz.slider_mode() == "live"
    monkeypatch.setenv("TERM_PROGRAM", "vscode")
    assert viz.slider_mode() == "static"


def test_auto_mode_builds_static_frames():
    frames = viz.slider(_line_at, [0.2, 0.4], label="t")
    assert isinstance(frames, viz.SliderFrames)


# --- live sliders --------------------------------------------------------------------------------
def test_live_slider_renders_on_demand():
    widgets = pytest.importorskip("ipywidgets")
    seen = []

    def render(value):
        seen.append(value)
        return _line_at(value)

    result = viz.slider(render, [0.2, 0.4, 0.6, 0.8, 1.0], label="t", initial=0.4, live=True)
    assert isinstance(result, viz.LiveSlider)
    control = result.widget.children[0]
    assert isinstance(control, widgets.SelectionSlider)
    assert control.description == "t" and control.label == "0.4"
    assert seen == [0.4]                      # only the frame shown, rendered once
    control.value = 4                         # move the slider to the last value
    assert seen == [0.4, 1.0]
    assert plt.get_fignums() == []


@pytest.mark.parametrize("label", ["t", "hidden fraction", "guidance strength",
                                   "t (reverse time: 1 → 0)"])
def test_live_slider_shows_its_whole_label(label):
    """ipywidgets cuts a description to 80 px ('hidden fra…') unless its width is 'initial';
    the slider is then widened, so the track keeps its length, within the output area."""
    widgets = pytest.importorskip("ipywidgets")
    control = viz.slider(_line_at, [0.2, 0.4], label=label, live=True).widget.children[0]
    assert isinstance(control, widgets.SelectionSlider)
    assert control.description == label
    assert control.style.description_width == "initial"
    width = control.layout.width
    assert width.endswith("em") and float(width[:-2]) >= 26 + 0.5 * len(label)
    assert control.layout.max_width == "100%"
    # every slider gets its own style: no shared widget mutated by the next one
    other = viz.slider(_line_at, [0.2, 0.4], label="x", live=True).widget.children[0]
    assert other.style is not control.style and other.layout is not control.layout


def test_live_slider_leaves_no_open_figure_for_interactive_output_to_flush(monkeypatch):
    """interactive_output flushes pyplot's open figures into the cell's own output, outside the
    slider: the pre-rendered first frame must already be closed when it is called."""
    widgets = pytest.importorskip("ipywidgets")
    open_at_call = []
    real_interactive_output = widgets.interactive_output

    def spy(f, controls):
        open_at_call.append(plt.get_fignums())
        return real_interactive_output(f, controls)

    monkeypatch.setattr(widgets, "interactive_output", spy)
    plt.close("all")
    viz.slider(_line_at, [0.2, 0.4, 0.6], label="t", live=True)
    assert open_at_call == [[]]


# --- image grids ---------------------------------------------------------------------------------
def test_grid_places_each_image_in_row_major_order():
    images = torch.arange(10, dtype=torch.float32).reshape(10, 1, 1, 1).expand(10, 1, 28, 28) / 10
    grid = viz._grid_array(images, nrow=4, padding=2)
    assert grid.shape == (3 * 30 + 2, 4 * 30 + 2)
    for k in range(10):
        top, left = 2 + (k // 4) * 30, 2 + (k % 4) * 30
        np.testing.assert_array_equal(grid[top:top + 28, left:left + 28], images[k, 0].numpy())
    assert grid[2 + 2 * 30:, 2 + 2 * 30:].min() == 1.0  # the two empty cells of the last row: white


def test_grid_clamps_values_to_the_unit_interval():
    images = torch.tensor([-1.0, 2.0]).reshape(2, 1, 1, 1).expand(2, 1, 28, 28)
    grid = viz._grid_array(images, nrow=2)
    assert grid.min() == 0.0 and grid.max() == 1.0


def test_image_grid_draws_on_an_axis_without_ticks():
    fig, ax = plt.subplots()
    out = viz.image_grid(torch.rand(16, 1, 28, 28), nrow=8, ax=ax, title="samples")
    assert out is ax and not ax.axison and ax.get_title() == "samples"
    assert ax.images[0].get_array().shape == (2 * 30 + 2, 8 * 30 + 2)


def test_save_image_grid_writes_a_png_of_the_grid(tmp_path):
    path = viz.save_image_grid(torch.rand(5, 1, 28, 28), tmp_path / "grid.png", nrow=5)
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert plt.imread(path).shape[:2] == (30 + 2, 5 * 30 + 2)


def test_image_grid_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match="images must have shape"):
        viz.image_grid(torch.rand(4, 2, 28, 28))


def test_scatter_2d_labels_its_axes():
    ax = viz.scatter_2d(torch.randn(50, 2), title="data", lim=5)
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("$x_1$", "$x_2$", "data")
    assert ax.get_xlim() == (-5, 5)
    with pytest.raises(ValueError, match=r"points must have shape \(N, 2\)"):
        viz.scatter_2d(torch.randn(50, 3))


def test_html_table_is_a_table_of_escaped_cells():
    from sdelib.viz import html_table
    table = html_table(["a", "b < c"], [["1", "<b>x</b>"], [2, 3.5]]).data
    assert table.startswith("<table><thead><tr><th>a</th><th>b &lt; c</th></tr></thead>")
    assert "<td>&lt;b&gt;x&lt;/b&gt;</td>" in table and "<td>3.5</td>" in table
    assert table.count("<tr>") == 3


def test_html_table_refuses_a_row_of_another_width():
    from sdelib.viz import html_table
    with pytest.raises(ValueError, match="needs 2 cells.*got 3"):
        html_table(["a", "b"], [["1", "2", "3"]])


def test_html_table_right_aligns_only_the_named_columns():
    from sdelib.viz import html_table
    table = html_table(["name", "bits/dim", "n"], [["a", "2.80 ± 0.02", "1,000"]], right=(1,)).data
    header_cells = re.findall(r"<th(?: [^>]*)?>", table)
    body_cells = re.findall(r"<td(?: [^>]*)?>", table)
    assert [("right" in cell) for cell in header_cells] == [False, True, False]
    assert [("right" in cell) for cell in body_cells] == [False, True, False]
    # a number in a right-aligned column stays on one line
    assert "nowrap" in body_cells[1] and "nowrap" not in body_cells[0] + body_cells[2]
    # without `right`, no column is styled
    assert "style" not in html_table(["a", "b"], [["1", "2"]]).data


def test_html_table_with_markup_keeps_the_callers_html():
    from sdelib.viz import html_table
    header, rows = ["<code>name</code>", "u<sub>θ</sub>"], [["<code>mnist-rf</code>", "a < b"]]
    table = html_table(header, rows, markup=True).data
    assert "<th><code>name</code></th>" in table and "<td><code>mnist-rf</code></td>" in table
    assert "<th>u<sub>θ</sub></th>" in table
    # negative control: without markup the same cells are escaped, shown as written
    assert "<code>" not in html_table(header, rows).data
    with pytest.raises(ValueError, match="markup"):
        html_table(header, rows, markup="yes")


@pytest.mark.parametrize("right", [(3,), (-1,), (1.0,), (True,), 2, "1"])
def test_html_table_refuses_a_right_column_it_does_not_have(right):
    from sdelib.viz import html_table
    with pytest.raises(ValueError, match="right"):
        html_table(["a", "b", "c"], [["1", "2", "3"]], right=right)


def test_folded_lines_shows_one_line_and_folds_the_rest():
    from sdelib.viz import folded_lines
    report = folded_lines("✓ a < b within 4 SE", ["a = 1.0", "b = <2.0>"])
    page = report._repr_html_()
    summary, _, folded = page.partition("</summary>")
    assert summary.startswith("<details") and "✓ a &lt; b within 4 SE" in summary
    assert "a = 1.0\nb = &lt;2.0&gt;" in folded and "<pre>" in folded
    assert repr(report).splitlines() == ["✓ a < b within 4 SE", "  a = 1.0", "  b = <2.0>"]


@pytest.mark.parametrize("summary", ["", "   ", "two\nlines", None])
def test_folded_lines_refuses_a_summary_that_is_not_one_line(summary):
    from sdelib.viz import folded_lines
    with pytest.raises(ValueError, match="one non-empty line"):
        folded_lines(summary, ["x"])
