"""The report's figures: accuracy against training FLOPs, accuracy matrices, training curves.

Every figure is saved as a PNG at ``PNG_DPI`` and as a PDF of the same name next to it. Each method
keeps one (colour, marker) pair across the figures (``series_styles``), distinct for any number of
methods; matrix cell labels are black or white from the luminance of the cell under them.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import Colormap, Normalize, to_hex, to_rgb  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import EngFormatter, FuncFormatter, LogLocator, MaxNLocator  # noqa: E402

from avalanche_sparcl.experiments.results import MethodSummary  # noqa: E402

PNG_DPI = 200
VECTOR_SUFFIX = ".pdf"

PALETTE = (  # Okabe-Ito's colour-blind safe colours, then tab10's others
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#000000",
    "#8C564B",
    "#7F7F7F",
    "#BCBD22",
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass(frozen=True)
class SeriesStyle:
    colour: str
    marker: str


def series_style(index: int) -> SeriesStyle:
    """The style of the ``index``-th series: distinct from every other index's.

    The first ``len(PALETTE) * len(MARKERS)`` pair the palette's colours with markers shifted by one
    each round of the palette (len(PALETTE) + 1 and len(MARKERS) share no factor, so no pair repeats);
    later ones get hues spaced by the golden ratio, which never meet again.
    """
    colours, markers = len(PALETTE), len(MARKERS)
    if index < colours * markers:
        return SeriesStyle(PALETTE[index % colours], MARKERS[(index + index // colours) % markers])
    hue = (index * (math.sqrt(5) - 1) / 2) % 1.0
    value = 0.55 + 0.3 * ((index // markers) % 2)
    return SeriesStyle(to_hex(colorsys.hsv_to_rgb(hue, 0.8, value)), MARKERS[index % markers])


def series_styles(labels: Iterable[str]) -> dict[str, SeriesStyle]:
    """One style per distinct label, in order of first appearance."""
    return {label: series_style(index) for index, label in enumerate(dict.fromkeys(labels))}


def plot_label(summary: MethodSummary) -> str:
    """The row label plus the buffer size: a legend has no buffer column."""
    return f"{summary.label} (buffer {summary.buffer_size})" if summary.buffer_size else summary.label


def save_figure(figure: Figure, path: Path) -> Path:
    """``path`` as a PNG at PNG_DPI and a PDF next to it; returns the PDF's path."""
    figure.savefig(path, dpi=PNG_DPI)
    vector = path.with_suffix(VECTOR_SUFFIX)
    figure.savefig(vector)
    plt.close(figure)
    return vector


def vector_path(path: Path) -> Path:
    """The PDF written next to the PNG at ``path``."""
    return path.with_suffix(VECTOR_SUFFIX)


def labelled_minor_mantissas(decades: float) -> tuple[int, ...]:
    """Minor ticks of a log axis to label: more of them the fewer decades the axis spans."""
    if decades <= 0.7:
        return (2, 3, 4, 5, 6, 7, 8, 9)
    if decades <= 1.5:
        return (2, 3, 5)
    if decades <= 3:
        return (2, 5)
    return ()


def format_flops_axis(axis: Axes, values: Sequence[float]) -> None:
    """A log FLOPs axis with engineering labels (``200 G``) on the decades and on enough minor ticks.

    The limits span at least a factor of 3 around the points, so a narrow range still shows labels.
    """
    axis.set_xscale("log")
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if positive:
        low, high = min(positive) / 1.25, max(positive) * 1.25
        if high / low < 3:
            centre, half = math.sqrt(low * high), math.sqrt(3)
            low, high = centre / half, centre * half
        axis.set_xlim(low, high)
    low, high = axis.get_xlim()
    labelled = labelled_minor_mantissas(math.log10(high / low))
    engineering = EngFormatter(sep=" ")

    def minor_label(value: float, position: int | None) -> str:
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
        return engineering(value, position) if mantissa in labelled else ""

    axis.xaxis.set_major_locator(LogLocator(base=10))
    axis.xaxis.set_major_formatter(engineering)
    axis.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10))))
    axis.xaxis.set_minor_formatter(FuncFormatter(minor_label))
    axis.tick_params(axis="x", which="minor", labelsize="small")
    axis.set_xlabel("training FLOPs (log scale)")


def plot_accuracy_vs_flops(summaries: Sequence[MethodSummary], path: Path) -> None:
    """Class-IL and Task-IL accuracy against training FLOPs (log x), one point per config."""
    save_figure(accuracy_vs_flops_figure(summaries), path)


def accuracy_vs_flops_figure(summaries: Sequence[MethodSummary]) -> Figure:
    benchmarks = list(dict.fromkeys(s.benchmark for s in summaries))
    styles = series_styles(plot_label(s) for s in summaries)
    figure, axes = plt.subplots(
        len(benchmarks), 2, figsize=(12, 4.5 * len(benchmarks)), squeeze=False, constrained_layout=True
    )
    for row, benchmark in enumerate(benchmarks):
        shown = [s for s in summaries if s.benchmark == benchmark]
        for column, (field, title) in enumerate(
            (("class_il_accuracy", "Class-IL"), ("task_il_accuracy", "Task-IL"))
        ):
            axis = axes[row][column]
            for summary in shown:
                style = styles[plot_label(summary)]
                axis.errorbar(
                    summary.mean("train_flops"),
                    100 * summary.mean(field),
                    yerr=100 * summary.std(field) if len(summary.runs) > 1 else None,
                    fmt=style.marker,
                    color=style.colour,
                    markersize=7,
                    capsize=3,
                    label=plot_label(summary),
                )
            format_flops_axis(axis, [s.mean("train_flops") for s in shown])
            axis.set_ylabel(f"{title} accuracy (%)")
            axis.set_title(f"{benchmark}: {title}")
            axis.grid(True, which="major", alpha=0.4)
            axis.grid(True, which="minor", alpha=0.15)
        axes[row][1].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    return figure


def relative_luminance(colour) -> float:
    """WCAG relative luminance of a matplotlib colour (0 black, 1 white)."""
    channels = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(colour)]
    return 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]


def text_colour_on(background) -> str:
    """Black or white, whichever contrasts more with ``background`` (WCAG contrast ratio)."""
    luminance = relative_luminance(background)
    return "black" if (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) else "white"


def cell_text_colour(value: float, cmap: Colormap | str = "viridis", norm: Normalize | None = None) -> str:
    """The label colour of a matrix cell holding ``value`` (0..100 unless ``norm`` says otherwise)."""
    cmap = plt.get_cmap(cmap) if isinstance(cmap, str) else cmap
    norm = Normalize(0, 100) if norm is None else norm
    return text_colour_on(cmap(norm(value)))


def plot_accuracy_matrix(summary: MethodSummary, path: Path) -> None:
    """Accuracy on each experience (columns) after training each experience (rows), mean over seeds."""
    save_figure(accuracy_matrix_figure(summary), path)


def accuracy_matrix_figure(summary: MethodSummary) -> Figure:
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    cmap, norm = plt.get_cmap("viridis"), Normalize(0, 100)
    for axis, kind, title in zip(axes, ("class_il", "task_il"), ("Class-IL", "Task-IL"), strict=True):
        matrix = 100 * summary.mean_matrix(kind)
        image = axis.imshow(matrix, cmap=cmap, norm=norm)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("evaluated experience")
        axis.set_ylabel("after training experience")
        axis.set_title(f"{summary.label} {title} (%)")
        if matrix.shape[0] <= 10 and matrix.shape[1] <= 10:
            for (i, j), value in np.ndenumerate(matrix):
                colour = "white" if math.isnan(value) else cell_text_colour(value, cmap, norm)
                axis.text(j, i, f"{value:.0f}", ha="center", va="center", color=colour, fontsize=8)
        figure.colorbar(image, ax=axis, shrink=0.8)
    figure.suptitle(f"{summary.benchmark} / {summary.name}")
    return figure


def plot_training_curves(summaries: Sequence[MethodSummary], benchmark: str, path: Path) -> None:
    """Weight density of the masked layers and kept data fraction over training iterations (seed 0)."""
    styles = series_styles(plot_label(s) for s in summaries)
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
    for summary in (s for s in summaries if s.benchmark == benchmark):
        curves = summary.runs[0]["curves"]
        density = curves["weight_sparsity"]
        label = plot_label(summary)
        style = styles[label]
        common = {"label": label, "color": style.colour, "marker": style.marker, "markevery": 0.1}
        axes[0].plot(density["iterations"], [1 - v for v in density["values"]], **common)
        axes[1].plot(curves["kept_data"]["iterations"], curves["kept_data"]["values"], **common)
    axes[0].set_ylabel("weight density of the masked layers")
    axes[1].set_ylabel("kept data (fraction of the experience)")
    for axis in axes:
        axis.set_xlabel("training iteration")
        axis.set_ylim(0, 1.05)
        axis.grid(True, alpha=0.3)
    axes[1].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.suptitle(benchmark)
    save_figure(figure, path)
