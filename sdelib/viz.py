"""Pictures for the book: sample grids, 2-D scatter plots, and sliders that work everywhere.

`slider(render, values, label=...)` shows `render(value)` (a matplotlib Figure) for a value picked
with a slider. `ipywidgets` sliders need a running kernel, so they are dead in the static HTML book.
The helper therefore has two modes:

- live:   an ipywidgets SelectionSlider re-renders the figure on demand (Jupyter, Colab, VS Code);
- static: every frame is rendered now, as a PNG, and shown in one self-contained HTML block whose
          range input swaps the image (a few lines of inline JavaScript; no kernel, no network).

The mode is `live=True/False` if given, else the environment variable SDELIB_SLIDERS ('live' or
'static'), else live exactly when a live frontend is detected (`live_frontend()`): the book build
(jupyter-book, nbclient, nbmake) is not one, so the built book gets static sliders.

ipywidgets and IPython are imported only when a slider is shown.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import sys
import uuid
from typing import Callable, NamedTuple, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

__all__ = ["image_grid", "save_image_grid", "scatter_2d", "slider", "slider_mode", "live_frontend",
           "SliderFrames", "LiveSlider", "SLIDER_MODES", "sweep_lines", "plot_sampler_sweep",
           "html_table", "folded_lines"]

SLIDER_MODES = ("live", "static")


# ------------------------------------------------------------------------------------------------
# Images and points
# ------------------------------------------------------------------------------------------------
def _grid_array(images, nrow: int, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile (N, C, H, W) (or (N, H, W)) images in [0, 1] (clamped) into an (rows, cols[, 3]) array."""
    images = torch.as_tensor(images).detach().to("cpu", torch.float32)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"images must have shape (N, C, H, W) with N >= 1 and C in (1, 3), "
                         f"got {tuple(images.shape)}")
    if not (isinstance(nrow, int) and nrow >= 1):
        raise ValueError(f"nrow must be an integer >= 1, got {nrow!r}")
    n, channels, height, width = images.shape
    cols, rows = min(nrow, n), math.ceil(n / nrow)
    grid = np.full((channels, rows * (height + padding) + padding,
                    cols * (width + padding) + padding), pad_value, dtype=np.float32)
    for k, image in enumerate(images.clamp(0.0, 1.0).numpy()):
        top = padding + (k // nrow) * (height + padding)
        left = padding + (k % nrow) * (width + padding)
        grid[:, top:top + height, left:left + width] = image
    return grid[0] if channels == 1 else grid.transpose(1, 2, 0)


def image_grid(images, nrow: int = 8, ax=None, title: str | None = None):
    """Show a batch of images (N, C, H, W) with values in [0, 1] (clamped) as a grid of `nrow`
    columns on a matplotlib axis (a new figure if `ax` is None), axis off. Returns the axis."""
    grid = _grid_array(images, nrow)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax


def save_image_grid(images, path, nrow: int = 8):
    """Write the grid of `image_grid` to a PNG file, one image pixel per file pixel. Returns path."""
    plt.imsave(path, _grid_array(images, nrow), cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return path


def scatter_2d(points, ax=None, *, title: str | None = None, label: str | None = None,
               color=None, s: float = 3.0, alpha: float = 0.5, lim: float | None = None):
    """Scatter plot of 2-D points (N, 2) with labelled axes x_1, x_2 and equal aspect; `lim` sets
    both axis ranges to [-lim, lim]. Returns the axis (a new figure if `ax` is None)."""
    points = torch.as_tensor(points).detach().to("cpu", torch.float64).numpy()
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {points.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(points[:, 0], points[:, 1], s=s, alpha=alpha, color=color, label=label)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal")
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    if title is not None:
        ax.set_title(title)
    return ax


# ------------------------------------------------------------------------------------------------
# Sliders
# ------------------------------------------------------------------------------------------------
class SliderFrames(NamedTuple):
    """A static slider: the values, their labels ('label = value'), one PNG per value, the HTML."""
    values: list
    labels: list
    pngs: list
    html: str

    def __repr__(self) -> str:  # the PNGs and HTML are far too long to print
        return f"SliderFrames({len(self.values)} frames: {self.labels[0]!r} ... {self.labels[-1]!r})"


class LiveSlider(NamedTuple):
    """A live slider: the values, their labels and the ipywidgets box (slider + output) shown."""
    values: list
    labels: list
    widget: object

    def __repr__(self) -> str:
        return f"LiveSlider({len(self.values)} values: {self.labels[0]!r} ... {self.labels[-1]!r})"


def live_frontend() -> bool:
    """True when a frontend that runs widgets is attached: Colab; a kernel started by a Jupyter
    server (it sets JPY_SESSION_NAME; nbclient, nbmake and jupyter-book do not); VS Code's
    notebooks (VSCODE_PID, but not in VS Code's terminal, TERM_PROGRAM=vscode, where a book build
    may run)."""
    if "google.colab" in sys.modules or os.environ.get("JPY_SESSION_NAME"):
        return True
    return bool(os.environ.get("VSCODE_PID")) and os.environ.get("TERM_PROGRAM") != "vscode"


def slider_mode(live: bool | None = None) -> str:
    """'live' or 'static': from `live` if given, else $SDELIB_SLIDERS, else `live_frontend()`."""
    if live is not None:
        return "live" if live else "static"
    env = os.environ.get("SDELIB_SLIDERS", "").strip().lower()
    if env:
        if env not in SLIDER_MODES:
            raise ValueError(f"SDELIB_SLIDERS must be one of {SLIDER_MODES}, got {env!r}")
        return env
    return "live" if live_frontend() else "static"


def _render_checked(render: Callable, value) -> Figure:
    fig = render(value)
    if not isinstance(fig, Figure):
        raise ValueError(f"render({value!r}) must return a matplotlib Figure, got "
                         f"{type(fig).__name__} (return the figure, e.g. `fig, ax = plt.subplots()`"
                         f" ... `return fig`)")
    return fig


def _png(fig: Figure, dpi: int) -> bytes:
    """The figure as PNG bytes (fixed size, so the image does not jump between frames); closes it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def _static_html(labels: Sequence[str], pngs: Sequence[bytes], index: int, label: str) -> str:
    """One <div class="sdelib-slider">: a range input, a label and an image whose data URI the
    input's `oninput` handler swaps. The frames sit in a JSON <script> block (never executed; '<'
    escaped so no label can close it) that the handler parses once; ids are unique, so several
    sliders can share a page."""
    uid = uuid.uuid4().hex
    srcs = ["data:image/png;base64," + base64.b64encode(png).decode("ascii") for png in pngs]
    frames = json.dumps({"srcs": srcs, "labels": list(labels)}).replace("<", "\\u003c")
    handler = ("var r=this.closest('.sdelib-slider');"
               "r._frames=r._frames||JSON.parse(r.querySelector('.sdelib-slider-frames').textContent);"
               "var i=+this.value;"
               "r.querySelector('.sdelib-slider-img').src=r._frames.srcs[i];"
               "r.querySelector('.sdelib-slider-label').textContent=r._frames.labels[i];")
    return (
        f'<div class="sdelib-slider" id="sdelib-slider-{uid}">\n'
        f'<div style="display:flex;align-items:center;gap:1em">'
        f'<input type="range" class="sdelib-slider-input" id="sdelib-slider-input-{uid}" '
        f'min="0" max="{len(pngs) - 1}" step="1" value="{index}" style="width:50%" '
        f'aria-label="{html.escape(label)}" oninput="{html.escape(handler)}">'
        f'<label class="sdelib-slider-label" for="sdelib-slider-input-{uid}">'
        f'{html.escape(labels[index])}</label></div>\n'
        f'<img class="sdelib-slider-img" src="{srcs[index]}" alt="{html.escape(label)} slider frame" '
        f'style="max-width:100%">\n'
        f'<script type="application/json" class="sdelib-slider-frames">{frames}</script>\n'
        f'</div>')


LIVE_SLIDER_STYLE = {"description_width": "initial"}


def _live_layout(label: str) -> dict:
    """Width of a live slider: its label (about 0.6 em a character), a 20 em track
    and the readout; never wider than the output area."""
    return {"width": f"{max(30, round(0.6 * len(label)) + 26)}em", "max_width": "100%"}


def _formatted(fmt: str, values: list) -> list[str]:
    """fmt.format(value) of every value, or a ValueError naming `fmt` and the value it fails on."""
    if not isinstance(fmt, str):
        raise TypeError(f"fmt must be a format string such as '{{:.2f}}', got "
                        f"{type(fmt).__name__} {fmt!r}")
    texts = []
    for value in values:
        try:
            texts.append(fmt.format(value))
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            raise ValueError(f"fmt={fmt!r} cannot format the value {value!r} "
                             f"({type(value).__name__}): {type(exc).__name__}: {exc}") from exc
    return texts


def slider(render: Callable, values, *, label: str, fmt: str = "{}", live: bool | None = None,
           initial=None, dpi: int = 90):
    """Show `render(value)`, a matplotlib Figure, with a slider over `values`.

    The slider reads 'label = fmt.format(value)' (the live one shows `label` whole). A
    slider whose values run backwards in time says so in its label, e.g.
    't (reverse time: 1 → 0)'. `initial` (one of `values`, default the first) is shown
    first. Mode (module docstring): `live`, else $SDELIB_SLIDERS, else auto-detected.
    Static mode renders every value now (dpi `dpi`) and closes each figure; live mode renders on
    demand. Returns `SliderFrames(values, labels, pngs, html)` (static) or
    `LiveSlider(values, labels, widget)` (live); the slider is displayed either way."""
    values = list(values)
    if len(values) < 2:
        raise ValueError(f"a slider needs at least 2 values, got {len(values)}")
    texts = _formatted(fmt, values)
    labels = [f"{label} = {text}" for text in texts]
    if len(set(labels)) != len(labels):
        raise ValueError(f"fmt={fmt!r} gives two values the same label: {labels}")
    if initial is None:
        index = 0
    else:
        matches = [i for i, value in enumerate(values) if value == initial]
        if not matches:
            raise ValueError(f"initial={initial!r} is not one of the values {values}")
        index = matches[0]
    mode = slider_mode(live)

    if mode == "static":
        from IPython.display import HTML, display

        pngs = [_png(_render_checked(render, value), dpi) for value in values]
        frames = SliderFrames(values, labels, pngs, _static_html(labels, pngs, index, label))
        display(HTML(frames.html))
        return frames

    import ipywidgets as widgets
    from IPython.display import display

    # Render the first frame now, so a bad `render` fails here and not inside the widget. Close
    # every figure before showing it: interactive_output flushes pyplot's open figures to the
    # cell's own output, outside the slider (a closed figure still displays).
    first = {index: _render_checked(render, values[index])}
    plt.close(first[index])

    def show(i):
        fig = first.pop(i, None) or _render_checked(render, values[i])
        plt.close(fig)
        display(fig)

    # The whole label is shown: ipywidgets' default description box is 80 px and cuts
    # it ("guidance …"); 'initial' sizes it to the text and the layout widens the slider
    # so that its track keeps its length.
    control = widgets.SelectionSlider(
        options=[(text, i) for i, text in enumerate(texts)], value=index,
        description=label, continuous_update=False, style=dict(LIVE_SLIDER_STYLE),
        layout=_live_layout(label))
    box = widgets.VBox([control, widgets.interactive_output(show, {"i": control})])
    display(box)
    return LiveSlider(values, labels, box)


def html_table(header: Sequence[str], rows: Sequence[Sequence], right: Sequence[int] = (), *,
               markup: bool = False):
    """A table (a header, then rows of cells) as an IPython HTML object: the HTML book renders
    Markdown printed by a cell as plain text, pipes and all, but an HTML table as a table. Cells
    are escaped, so a cell's text shows as written; with `markup=True` the cells are HTML written
    by the caller (a model name in <code>, a subscript) and go in as they are. The columns whose
    index (from 0) is in `right` are right-aligned, and their cells kept on one line: columns of
    numbers."""
    from IPython.display import HTML

    if not isinstance(markup, bool):
        raise ValueError(f"markup is True (cells are HTML) or False (cells are text); got {markup!r}")
    text = str if markup else (lambda cell: html.escape(str(cell)))
    width = len(header)
    if isinstance(right, (int, str)):
        raise ValueError(f"right is a sequence of column indices, e.g. right=(1, 2); got {right!r}")
    right = list(right)
    for column in right:
        if isinstance(column, bool) or not isinstance(column, int) or not 0 <= column < width:
            raise ValueError(f"right names the columns to right-align by their index, 0 to "
                             f"{width - 1} for this table of {width} columns; got {column!r}")
    right = set(right)
    for row in rows:
        if len(row) != width:
            raise ValueError(f"every row of an html_table needs {width} cells (the header's), "
                             f"got {len(row)}: {list(row)}")

    def cells(tag, row):
        out = []
        for column, cell in enumerate(row):
            style = ""
            if column in right:
                style = (" style='text-align: right; white-space: nowrap'" if tag == "td"
                         else " style='text-align: right'")
            out.append(f"<{tag}{style}>{text(cell)}</{tag}>")
        return "".join(out)

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return HTML(f"<table><thead><tr>{cells('th', header)}</tr></thead><tbody>{body}</tbody></table>")


class FoldedLines(NamedTuple):
    """One visible line with more lines folded under it (see `folded_lines`)."""
    summary: str
    lines: tuple[str, ...]

    def _repr_html_(self) -> str:
        body = html.escape("\n".join(self.lines))
        return (f"<details class='sdelib-folded'><summary>{html.escape(self.summary)}</summary>"
                f"<pre>{body}</pre></details>")

    def __repr__(self) -> str:
        return "\n".join([self.summary, *("  " + line for line in self.lines)])


def folded_lines(summary: str, lines: Sequence[str]) -> FoldedLines:
    """A check's report as the book shows it: `summary` (what was checked, and its verdict) on one
    visible line, and `lines` (the numbers behind it) folded under it, opened with a click.
    Display it with IPython's display(); a plain-text frontend prints every line."""
    if not isinstance(summary, str) or not summary.strip() or "\n" in summary:
        raise ValueError(f"summary is one non-empty line of text, got {summary!r}")
    if isinstance(lines, str):
        lines = lines.splitlines()
    return FoldedLines(summary, tuple(str(line) for line in lines))


def sweep_lines(rows) -> list:
    """The rows of a sampler sweep (dicts with 'sampler', 'settings', 'nfe', ...) grouped into
    plotted lines: one per sampler, and one per snr of predictor–corrector and per eta of
    DPM-Solver++; each line's rows sorted by NFE. Returns [(label, rows), ...] in first-seen order."""
    lines = {}
    for row in rows:
        key = {"predictor–corrector": "snr", "DPM-Solver++ SDE + Tweedie": "eta"}.get(row["sampler"])
        if key is None:
            label = row["sampler"]
        else:
            value = row["settings"][key]
            label = f"PC, snr {value}" if key == "snr" else f"{row['sampler']}, η = {value:g}"
        lines.setdefault(label, []).append(row)
    return [(label, sorted(group, key=lambda r: r["nfe"])) for label, group in lines.items()]


def plot_sampler_sweep(rows, ax=None, *, ylabel: str = "Fréchet distance (± 2 SE)"):
    """Fréchet distance against NFE on log-log axes, one line per `sweep_lines` group, ± 2 SE
    (ten distinct colours: more lines than ten repeat a colour, with another marker)."""
    ax = ax if ax is not None else plt.subplots(figsize=(10, 4.5))[1]
    for k, (label, group) in enumerate(sweep_lines(rows)):
        ax.errorbar([r["nfe"] for r in group], [r["frechet"] for r in group],
                    fmt="osD^v<>ph*XP"[k % 12] + "-", color=plt.cm.tab10(k % 10),
                    yerr=[2 * r["frechet_standard_error"] for r in group], capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel(ylabel)
    return ax
