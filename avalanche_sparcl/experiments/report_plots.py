"""The report's figures: accuracy against training FLOPs, accuracy matrices, training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from avalanche_sparcl.experiments.results import MethodSummary  # noqa: E402


def plot_label(summary: MethodSummary) -> str:
    """The row label plus the buffer size: a legend has no buffer column."""
    return f"{summary.label} (buffer {summary.buffer_size})" if summary.buffer_size else summary.label


def plot_accuracy_vs_flops(summaries: Sequence[MethodSummary], path: Path) -> None:
    """Class-IL and Task-IL accuracy against training FLOPs (log x), one point per config."""
    benchmarks = list(dict.fromkeys(s.benchmark for s in summaries))
    figure, axes = plt.subplots(
        len(benchmarks), 2, figsize=(12, 4.5 * len(benchmarks)), squeeze=False, constrained_layout=True
    )
    for row, benchmark in enumerate(benchmarks):
        for column, (field, title) in enumerate(
            (("class_il_accuracy", "Class-IL"), ("task_il_accuracy", "Task-IL"))
        ):
            axis = axes[row][column]
            for summary in (s for s in summaries if s.benchmark == benchmark):
                axis.errorbar(
                    summary.mean("train_flops"),
                    100 * summary.mean(field),
                    yerr=100 * summary.std(field),
                    fmt="o" if summary.method_kind == "dense" else "s",
                    capsize=3,
                    label=plot_label(summary),
                )
            axis.set_xscale("log")
            axis.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a narrow range overlap
            axis.set_xlabel("training FLOPs")
            axis.set_ylabel(f"{title} accuracy (%)")
            axis.set_title(f"{benchmark}: {title}")
            axis.grid(True, which="both", alpha=0.3)
        axes[row][1].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_accuracy_matrix(summary: MethodSummary, path: Path) -> None:
    """Accuracy on each experience (columns) after training each experience (rows), mean over seeds."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    for axis, kind, title in zip(axes, ("class_il", "task_il"), ("Class-IL", "Task-IL"), strict=True):
        matrix = 100 * summary.mean_matrix(kind)
        image = axis.imshow(matrix, vmin=0, vmax=100, cmap="viridis")
        axis.set_xlabel("evaluated experience")
        axis.set_ylabel("after training experience")
        axis.set_title(f"{summary.label} {title} (%)")
        if matrix.shape[0] <= 10 and matrix.shape[1] <= 10:
            for (i, j), value in np.ndenumerate(matrix):
                axis.text(j, i, f"{value:.0f}", ha="center", va="center", color="white", fontsize=8)
        figure.colorbar(image, ax=axis, shrink=0.8)
    figure.suptitle(f"{summary.benchmark} / {summary.name}")
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_training_curves(summaries: Sequence[MethodSummary], benchmark: str, path: Path) -> None:
    """Weight density of the masked layers and kept data fraction over training iterations (seed 0)."""
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
    for summary in (s for s in summaries if s.benchmark == benchmark):
        curves = summary.runs[0]["curves"]
        density = curves["weight_sparsity"]
        label = plot_label(summary)
        axes[0].plot(density["iterations"], [1 - v for v in density["values"]], label=label)
        axes[1].plot(curves["kept_data"]["iterations"], curves["kept_data"]["values"], label=label)
    axes[0].set_ylabel("weight density of the masked layers")
    axes[1].set_ylabel("kept data (fraction of the experience)")
    for axis in axes:
        axis.set_xlabel("training iteration")
        axis.set_ylim(0, 1.05)
        axis.grid(True, alpha=0.3)
    axes[1].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.suptitle(benchmark)
    figure.savefig(path, dpi=100)
    plt.close(figure)
