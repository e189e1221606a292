"""``sparcl-bench report``: a Markdown table and PNG plots from the results.json files of many runs.

The table gives mean +- std over seeds and each method's training FLOPs relative to the dense run of
the same benchmark, strategy and buffer size (the paper's efficiency claim). The accuracy-vs-FLOPs
plot is the paper's Figure 1 (right); the other plots show the accuracy matrix and how weight
density and kept data evolve during training.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from avalanche_sparcl.experiments.config import ConfigError  # noqa: E402

TABLE_HEADER = (
    "| benchmark | method | buffer | Class-IL (%) | Task-IL (%) | Class-IL forgetting (%) "
    "| training FLOPs | FLOPs / dense | weight sparsity | kept data | seeds |"
)


@dataclass
class MethodSummary:
    """All seeds of one config (benchmark + config name)."""

    benchmark: str
    name: str
    method: str
    method_kind: str
    strategy: str
    buffer_size: int | None
    sparsity: float
    runs: list[dict[str, Any]]

    @property
    def key(self) -> str:
        return f"{self.benchmark}__{self.name}"

    def values(self, field: str) -> list[float]:
        return [float(run[field]) for run in self.runs]

    def mean(self, field: str) -> float:
        return statistics.fmean(self.values(field))

    def std(self, field: str) -> float:
        values = self.values(field)
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def mean_matrix(self, kind: str) -> np.ndarray:
        return np.mean([np.array(run["accuracy_matrix"][kind], dtype=float) for run in self.runs], axis=0)


@dataclass
class Report:
    """Where the report was written, and its table."""

    table: str
    markdown_path: Path
    accuracy_vs_flops_path: Path
    plot_paths: list[Path]


def load_runs(runs_dir: Path) -> list[MethodSummary]:
    """Every results.json under ``runs_dir``, grouped by benchmark and config name, seeds sorted."""
    paths = sorted(Path(runs_dir).rglob("results.json"))
    if not paths:
        raise ConfigError(
            f"{runs_dir}: no results.json found (run `sparcl-bench run CONFIG --out {runs_dir}`)"
        )
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in paths:
        run = json.loads(path.read_text())
        groups.setdefault((run["benchmark"], run["name"]), []).append(run)
    summaries = []
    for (benchmark, name), runs in groups.items():
        runs.sort(key=lambda run: run["seed"])
        first = runs[0]
        summaries.append(
            MethodSummary(
                benchmark,
                name,
                first["method"],
                first["method_kind"],
                first["strategy"],
                first["buffer_size"],
                first["sparsity"],
                runs,
            )
        )
    kind_order = {"dense": 0, "sparcl": 1, "static": 2, "set": 3, "rigl": 4}
    summaries.sort(
        key=lambda s: (
            s.benchmark,
            s.strategy,
            s.buffer_size or 0,
            kind_order[s.method_kind],
            s.sparsity,
            s.name,
        )
    )
    return summaries


def dense_reference(summary: MethodSummary, summaries: Sequence[MethodSummary]) -> MethodSummary | None:
    """The dense run of the same benchmark, strategy and buffer size, if there is one."""
    for candidate in summaries:
        if (
            candidate.method_kind == "dense"
            and candidate.benchmark == summary.benchmark
            and candidate.strategy == summary.strategy
            and candidate.buffer_size == summary.buffer_size
        ):
            return candidate
    return None


def flops_ratio(summary: MethodSummary, summaries: Sequence[MethodSummary]) -> float:
    """Mean training FLOPs over those of the dense reference (nan without one)."""
    dense = dense_reference(summary, summaries)
    return math.nan if dense is None else summary.mean("train_flops") / dense.mean("train_flops")


def format_flops(value: float) -> str:
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= scale:
            return f"{value / scale:.3g} {suffix}"
    return f"{value:.3g}"


def percent(summary: MethodSummary, field: str) -> str:
    return f"{100 * summary.mean(field):.2f} +- {100 * summary.std(field):.2f}"


def markdown_table(summaries: Sequence[MethodSummary]) -> str:
    """One row per config: mean +- std over seeds; FLOPs relative to the matching dense run."""
    lines = [TABLE_HEADER, "|" + "---|" * TABLE_HEADER.count(" | ") + "---|"]
    for summary in summaries:
        ratio = flops_ratio(summary, summaries)
        lines.append(
            f"| {summary.benchmark} | {summary.method} | {summary.buffer_size or '-'} "
            f"| {percent(summary, 'class_il_accuracy')} | {percent(summary, 'task_il_accuracy')} "
            f"| {percent(summary, 'class_il_forgetting')} | {format_flops(summary.mean('train_flops'))} "
            f"| {'n/a' if math.isnan(ratio) else f'{ratio:.3f}'} | {summary.mean('weight_sparsity'):.3f} "
            f"| {summary.mean('kept_data'):.3f} | {len(summary.runs)} |"
        )
    return "\n".join(lines)


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
                label = (
                    f"{summary.method} (buffer {summary.buffer_size})"
                    if summary.buffer_size
                    else summary.method
                )
                axis.errorbar(
                    summary.mean("train_flops"),
                    100 * summary.mean(field),
                    yerr=100 * summary.std(field),
                    fmt="o" if summary.method_kind == "dense" else "s",
                    capsize=3,
                    label=label,
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
        axis.set_title(f"{summary.method} {title} (%)")
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
        label = f"{summary.method} (buffer {summary.buffer_size})" if summary.buffer_size else summary.method
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


def write_report(runs_dir: str | Path, out_dir: str | Path) -> Report:
    """Write report.md and the plots under ``out_dir``; return their paths and the table."""
    summaries = load_runs(Path(runs_dir))
    out_dir = Path(out_dir)
    (out_dir / "accuracy_matrix").mkdir(parents=True, exist_ok=True)
    accuracy_vs_flops = out_dir / "accuracy_vs_flops.png"
    plot_accuracy_vs_flops(summaries, accuracy_vs_flops)
    plot_paths = [accuracy_vs_flops]
    for benchmark in dict.fromkeys(s.benchmark for s in summaries):
        path = out_dir / f"training_curves_{benchmark}.png"
        plot_training_curves(summaries, benchmark, path)
        plot_paths.append(path)
    for summary in summaries:
        path = out_dir / "accuracy_matrix" / f"{summary.key}.png"
        plot_accuracy_matrix(summary, path)
        plot_paths.append(path)
    table = markdown_table(summaries)
    smoke = any(run["smoke"] for s in summaries for run in s.runs)
    lines = [
        "# SparCL experiments",
        "",
        f"Runs read from `{runs_dir}`: {sum(len(s.runs) for s in summaries)} runs, {len(summaries)} configs.",
        "Accuracies are on the whole test stream after the last experience, mean +- std over seeds.",
        "FLOPs / dense: mean training FLOPs over those of the dense run with the same benchmark, "
        "strategy and buffer size.",
    ]
    if smoke:
        lines.append(
            "**Smoke runs (random data, tiny model): the numbers only show that the pipeline works.**"
        )
    lines += ["", table, "", "## Plots", ""]
    lines += [f"- ![{path.stem}]({path.relative_to(out_dir)})" for path in plot_paths]
    markdown_path = out_dir / "report.md"
    markdown_path.write_text("\n".join(lines) + "\n")
    return Report(table, markdown_path, accuracy_vs_flops, plot_paths)


def section_markers(name: str) -> tuple[str, str]:
    """HTML comments around a section of a generated Markdown file that another command writes, so
    each command rewrites its own part (docs/benchmarks.md: `make bench` and the Split Fashion-MNIST
    reproduction)."""
    return f"<!-- {name}: start -->", f"<!-- {name}: end -->"


def kept_section(path: Path, name: str) -> str:
    """The marked section ``name`` of the file at ``path`` (with its markers), or ''."""
    start, end = section_markers(name)
    text = path.read_text() if path.is_file() else ""
    if start not in text or end not in text:
        return ""
    return "\n" + text[text.index(start) : text.index(end) + len(end)] + "\n"


def replace_section(path: Path, name: str, content: str) -> None:
    """Write ``content`` as the marked section ``name`` of the file at ``path`` (appended if absent)."""
    start, end = section_markers(name)
    text = path.read_text() if path.is_file() else ""
    block = f"{start}\n{content.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
