"""The report's figures: a distinct style per method, readable FLOPs ticks, legible matrix labels, and
PNG (200 dpi) plus PDF files. Fast: summaries are made by hand, nothing is trained."""

from __future__ import annotations

import pytest
from matplotlib.colors import to_hex, to_rgb
from PIL import Image

from avalanche_sparcl.experiments import report_plots
from avalanche_sparcl.experiments.report_plots import (
    PNG_DPI,
    accuracy_matrix_figure,
    accuracy_vs_flops_figure,
    cell_text_colour,
    plot_accuracy_matrix,
    plot_accuracy_vs_flops,
    plot_training_curves,
    series_style,
    series_styles,
    text_colour_on,
)
from avalanche_sparcl.experiments.results import MethodSummary


def summary(index: int, flops: float = 1e9, accuracy: float = 0.5, matrix=None) -> MethodSummary:
    run = {
        "class_il_accuracy": accuracy,
        "task_il_accuracy": accuracy,
        "train_flops": flops,
        "accuracy_matrix": {
            "class_il": matrix or [[0.9, 0.0], [0.5, 0.6]],
            "task_il": [[1.0, 0.5], [0.8, 0.9]],
        },
        "curves": {
            "weight_sparsity": {"iterations": [0, 10, 20], "values": [0.0, 0.5, 0.75]},
            "kept_data": {"iterations": [0, 10, 20], "values": [1.0, 0.9, 0.8]},
        },
    }
    result = MethodSummary("split_digits", f"m{index}", f"Method {index}", "sparcl", "der", 50, 0.75, [run])
    result.label, result.key = f"Method {index}", f"split_digits__m{index}"
    return result


def test_twelve_methods_get_twelve_distinct_colour_marker_pairs_in_the_figure():
    summaries = [summary(i, flops=1e9 * (1 + i / 10)) for i in range(12)]
    figure = accuracy_vs_flops_figure(summaries)
    axis = figure.axes[0]
    pairs = [(to_hex(line.get_color()), line.get_marker()) for line in axis.lines]
    assert len(pairs) == 12 and len(set(pairs)) == 12
    legend = [text.get_text() for text in figure.axes[1].get_legend().get_texts()]
    assert legend == [f"Method {i} (buffer 50)" for i in range(12)]


@pytest.mark.parametrize("count", [12, 80, 81, 300])
def test_the_style_mapping_never_repeats_a_pair(count):
    styles = series_styles(f"label {i}" for i in range(count))
    assert len({(style.colour, style.marker) for style in styles.values()}) == count


def test_the_same_label_keeps_its_style():
    assert series_styles(["a", "b", "a"]) == {"a": series_style(0), "b": series_style(1)}


def test_a_narrow_flops_range_still_has_several_tick_labels():
    summaries = [summary(0, flops=2.1e11), summary(1, flops=2.6e11)]
    figure = accuracy_vs_flops_figure(summaries)
    figure.canvas.draw()
    axis = figure.axes[0]
    low, high = axis.get_xlim()
    labels = [
        tick.label1.get_text()
        for tick in axis.xaxis.get_major_ticks() + axis.xaxis.get_minor_ticks()
        if low <= tick.get_loc() <= high and tick.label1.get_text()
    ]
    assert len(labels) >= 3, labels
    assert all(label.endswith("G") for label in labels), labels  # engineering notation: 200 G, 300 G


def test_a_wide_flops_range_labels_the_decades():
    figure = accuracy_vs_flops_figure([summary(0, flops=1e6), summary(1, flops=1e12)])
    figure.canvas.draw()
    axis = figure.axes[0]
    labels = [tick.label1.get_text() for tick in axis.xaxis.get_major_ticks() if tick.label1.get_text()]
    assert {"1 M", "1 G", "1 T"} <= set(labels)


@pytest.mark.parametrize(
    ("background", "expected"),
    [("#fde725", "black"), ("yellow", "black"), ("white", "black"), ("#440154", "white"), ("navy", "white")],
)
def test_text_on_a_cell_contrasts_with_it(background, expected):
    assert text_colour_on(background) == expected


def test_matrix_labels_are_dark_on_light_cells_and_light_on_dark_cells():
    assert cell_text_colour(100) == "black"  # viridis yellow
    assert cell_text_colour(0) == "white"  # viridis dark purple
    figure = accuracy_matrix_figure(summary(0, matrix=[[1.0, 0.0], [0.95, 0.05]]))
    texts = {text.get_text(): to_rgb(text.get_color()) for text in figure.axes[0].texts}
    assert texts["100"] == texts["95"] == (0.0, 0.0, 0.0)
    assert texts["0"] == texts["5"] == (1.0, 1.0, 1.0)


def test_figures_are_saved_as_png_of_at_least_200_dpi_and_pdf(tmp_path):
    summaries = [summary(i) for i in range(3)]
    paths = [tmp_path / "flops.png", tmp_path / "matrix.png", tmp_path / "curves.png"]
    plot_accuracy_vs_flops(summaries, paths[0])
    plot_accuracy_matrix(summaries[0], paths[1])
    plot_training_curves(summaries, "split_digits", paths[2])
    assert PNG_DPI >= 200
    for path in paths:
        with Image.open(path) as image:
            assert min(image.info["dpi"]) >= 199.5
        assert path.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    assert report_plots.vector_path(paths[0]) == tmp_path / "flops.pdf"
