"""``sparcl-bench report``: a Markdown table and plots (PNG and PDF) from the results.json files of
many runs.

The table gives mean +- std over seeds (the mean alone for a single seed) and each method's training
FLOPs relative to the dense run of the same benchmark, strategy and buffer size (the paper's efficiency
claim). The accuracy-vs-FLOPs plot is the paper's Figure 1 (right); the other plots show the accuracy
matrix and how weight density and kept data evolve during training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avalanche_sparcl.experiments.config import ConfigError
from avalanche_sparcl.experiments.fingerprint import IGNORED_CONFIG_KEYS, fingerprint
from avalanche_sparcl.experiments.report_plots import (
    PNG_DPI,
    plot_accuracy_matrix,
    plot_accuracy_vs_flops,
    plot_training_curves,
    vector_path,
)
from avalanche_sparcl.experiments.results import RESULTS_NAME, MethodSummary, read_results

TABLE_HEADER = (
    "| benchmark | method | buffer | Class-IL (%) | Task-IL (%) | Class-IL forgetting (%) "
    "| training FLOPs | FLOPs / dense | weight sparsity | kept data | seeds |"
)


@dataclass
class Report:
    """Where the report was written, its table, and the run folders it could not include."""

    table: str
    markdown_path: Path
    accuracy_vs_flops_path: Path
    plot_paths: list[Path]
    unfinished_runs: list[Path] = dataclasses.field(default_factory=list)


UNFINISHED_MARKERS = ("checkpoint.pkl", "run.json")
"""Files a run folder holds before its results.json is written (the runner writes that last)."""

KIND_ORDER = {"dense": 0, "sparcl": 1, "static": 2, "set": 3, "rigl": 4}


def run_fingerprint(run: dict[str, Any], path: Path) -> str:
    """The run's fingerprint, checked against its identity when both are there.

    Results written before runs carried an identity are fingerprinted from their ``config`` (less the
    keys that do not change a run) and ``smoke`` flag: the profile contents and the package version of
    such a run are unknown, so they never share a group with results that carry an identity.
    """
    identity = run.get("identity")
    stored = run.get("fingerprint")
    if identity is not None and not isinstance(identity, dict):
        raise ConfigError(f"{path}: identity: expected an object, got {identity!r}")
    if stored is not None and not isinstance(stored, str):
        raise ConfigError(f"{path}: fingerprint: expected a string, got {stored!r}")
    if identity is None and stored is None:
        config = run["config"]
        if not isinstance(config, dict):
            raise ConfigError(f"{path}: config: expected an object, got {config!r}")
        kept = {key: value for key, value in config.items() if key not in IGNORED_CONFIG_KEYS}
        return fingerprint({"config": kept, "smoke": run["smoke"]})
    if identity is None:
        return stored
    computed = fingerprint(identity)
    if stored is not None and stored != computed:
        raise ConfigError(
            f"{path}: fingerprint does not match its identity (stored {stored[:12]}, computed "
            f"{computed[:12]}); the file was edited or damaged"
        )
    return computed


def load_runs(runs_dir: Path) -> list[MethodSummary]:
    """Every results.json under ``runs_dir``, grouped by fingerprint (one group per run identity),
    seeds sorted; the same fingerprint and seed twice (e.g. a run copied into two folders) would count
    one run as two seeds, so it is refused."""
    paths = sorted(Path(runs_dir).rglob(RESULTS_NAME))
    if not paths:
        unfinished = list(unfinished_runs(Path(runs_dir)))
        listed = f"; {len(unfinished)} unfinished run{'s' * (len(unfinished) > 1)}: " if unfinished else ""
        raise ConfigError(
            f"{runs_dir}: no results.json found{listed}{', '.join(map(str, unfinished))} "
            f"(run `sparcl-bench run CONFIG --out {runs_dir}`)"
        )
    groups: dict[str, dict[int, tuple[Path, dict[str, Any]]]] = {}
    for path in paths:
        run = read_results(path)
        run_id = run_fingerprint(run, path)
        seeds = groups.setdefault(run_id, {})
        if run["seed"] in seeds:
            raise ConfigError(
                f"{seeds[run['seed']][0]} and {path}: the same run (fingerprint {run_id[:12]}, "
                f"seed {run['seed']}) twice; remove one of them or report their folders separately"
            )
        seeds[run["seed"]] = (path, run)
    summaries = []
    for group_fingerprint, seeds in groups.items():
        ordered = [seeds[seed] for seed in sorted(seeds)]
        runs = [run for _, run in ordered]
        first = runs[0]
        summaries.append(
            MethodSummary(
                first["benchmark"],
                first["name"],
                first["method"],
                first["method_kind"],
                first["strategy"],
                first["buffer_size"],
                first["sparsity"],
                runs,
                fingerprint=group_fingerprint,
                smoke=first["smoke"],
                paths=[path for path, _ in ordered],
            )
        )
    summaries.sort(
        key=lambda s: (
            s.benchmark,
            s.smoke,
            s.strategy,
            s.buffer_size or 0,
            KIND_ORDER.get(s.method_kind, len(KIND_ORDER)),
            s.sparsity,
            s.name,
            s.fingerprint,
        )
    )
    assign_labels(summaries)
    return summaries


def assign_labels(summaries: Sequence[MethodSummary]) -> None:
    """Row labels and plot file names that tell every group apart.

    A label is the method label, plus " (smoke)" for smoke runs. Groups that would show the same
    benchmark, label and buffer get the config name in brackets, and a fingerprint prefix where the
    names are the same too (two config files with one name).
    """
    clashes: dict[tuple[str, str, bool, int | None], list[MethodSummary]] = {}
    for summary in summaries:
        clashes.setdefault(
            (summary.benchmark, summary.method, summary.smoke, summary.buffer_size), []
        ).append(summary)
    for group in clashes.values():
        names = Counter(summary.name for summary in group)
        for summary in group:
            suffix = ""
            if len(group) > 1:
                short = "" if names[summary.name] == 1 else f" {summary.fingerprint[:8]}"
                suffix = f" [{summary.name}{short}]"
            summary.label = summary.method + suffix + (" (smoke)" if summary.smoke else "")
    keys = Counter(plain_key(summary) for summary in summaries)
    for summary in summaries:
        key = plain_key(summary)
        summary.key = key if keys[key] == 1 else f"{key}__{summary.fingerprint[:8]}"


def plain_key(summary: MethodSummary) -> str:
    return f"{summary.benchmark}__{summary.name}" + ("__smoke" if summary.smoke else "")


def unfinished_runs(runs_dir: Path) -> dict[Path, list[str]]:
    """Run folders with a checkpoint or a run record but no results.json, sorted, with the files found:
    runs in progress or interrupted, which the table leaves out."""
    found: dict[Path, list[str]] = {}
    for marker in UNFINISHED_MARKERS:
        for path in runs_dir.rglob(marker):
            if path.is_file() and not (path.parent / RESULTS_NAME).is_file():
                found.setdefault(path.parent, []).append(marker)
    return dict(sorted(found.items()))


SPARSE_CONFIG_KEYS = ("name", "description", "sparcl", "baseline")
"""Config keys a sparse run and its dense reference may differ in: what makes one sparse, and names."""


def dense_identity(summary: MethodSummary) -> str:
    """The run's identity less its sparse sections, as canonical JSON: equal for a sparse run and the
    dense run of the same benchmark, model, training schedule, process count, package version and
    smoke flag. Results without an identity are compared on their config and smoke flag alone."""
    run = summary.runs[0]
    identity = run.get("identity") or {"config": run.get("config") or {}, "smoke": summary.smoke}
    config = {key: value for key, value in identity["config"].items() if key not in SPARSE_CONFIG_KEYS}
    reduced = {**identity, "config": config, "world_size": run.get("world_size", 1)}
    return json.dumps(reduced, sort_keys=True, separators=(",", ":"), allow_nan=True)


def dense_candidates(summary: MethodSummary, summaries: Sequence[MethodSummary]) -> list[MethodSummary]:
    """The dense runs of the same identity less the sparse sections."""
    identity = dense_identity(summary)
    return [
        candidate
        for candidate in summaries
        if candidate.method_kind == "dense" and dense_identity(candidate) == identity
    ]


def dense_reference(summary: MethodSummary, summaries: Sequence[MethodSummary]) -> MethodSummary | None:
    """The one dense run :func:`dense_candidates` finds, or None when there is none or several."""
    candidates = dense_candidates(summary, summaries)
    return candidates[0] if len(candidates) == 1 else None


def flops_ratio(summary: MethodSummary, summaries: Sequence[MethodSummary]) -> float:
    """Mean training FLOPs over those of the dense reference (nan without exactly one)."""
    dense = dense_reference(summary, summaries)
    return math.nan if dense is None else summary.mean("train_flops") / dense.mean("train_flops")


def flops_ratio_cell(summary: MethodSummary, summaries: Sequence[MethodSummary]) -> str:
    """The table's "FLOPs / dense" cell: the ratio, or why there is none (never another run's ratio)."""
    candidates = dense_candidates(summary, summaries)
    if not candidates:
        return "n/a (no dense run of this setup)"
    if len(candidates) > 1:
        names = ", ".join(sorted(candidate.name for candidate in candidates))
        return f"n/a ({len(candidates)} dense runs of this setup: {names})"
    return f"{flops_ratio(summary, summaries):.3f}"


def format_flops(value: float) -> str:
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= scale:
            return f"{value / scale:.3g} {suffix}"
    return f"{value:.3g}"


def percent(summary: MethodSummary, field: str) -> str:
    """Mean +- std over seeds; the mean alone for one seed, whose std is no spread (seeds column: 1)."""
    if len(summary.runs) == 1:
        return f"{100 * summary.mean(field):.2f}"
    return f"{100 * summary.mean(field):.2f} +- {100 * summary.std(field):.2f}"


def markdown_table(summaries: Sequence[MethodSummary]) -> str:
    """One row per config: mean +- std over seeds (the mean alone for one seed); FLOPs relative to the
    matching dense run."""
    lines = [TABLE_HEADER, "|" + "---|" * TABLE_HEADER.count(" | ") + "---|"]
    for summary in summaries:
        lines.append(
            f"| {summary.benchmark} | {summary.label} | {summary.buffer_size or '-'} "
            f"| {percent(summary, 'class_il_accuracy')} | {percent(summary, 'task_il_accuracy')} "
            f"| {percent(summary, 'class_il_forgetting')} | {format_flops(summary.mean('train_flops'))} "
            f"| {flops_ratio_cell(summary, summaries)} | {summary.mean('weight_sparsity'):.3f} "
            f"| {summary.mean('kept_data'):.3f} | {len(summary.runs)} |"
        )
    return "\n".join(lines)


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
    unfinished = unfinished_runs(Path(runs_dir))
    legacy = sum("identity" not in run and "fingerprint" not in run for s in summaries for run in s.runs)
    lines = [
        "# SparCL experiments",
        "",
        f"Runs read from `{runs_dir}`: {sum(len(s.runs) for s in summaries)} runs, {len(summaries)} configs"
        + (f"; {len(unfinished)} unfinished (listed below, not in the table)." if unfinished else "."),
        "Accuracies are on the whole test stream after the last experience, mean +- std over seeds; "
        "a row of one seed (seeds = 1) shows the mean alone.",
        "FLOPs / dense: mean training FLOPs over those of the dense run with the same benchmark, "
        "strategy and buffer size (smoke runs against smoke runs).",
        "A row is one run identity (the resolved config, smoke or not, the package version); rows that "
        "would read the same get their config name in brackets, and a fingerprint prefix if the names "
        "are the same too.",
    ]
    if legacy:
        lines.append(
            f"{legacy} results.json without a fingerprint (written by an older version) are grouped by "
            "their config and smoke flag, apart from results that carry one."
        )
    if any(s.smoke for s in summaries):
        lines.append(
            "**Rows marked (smoke) are smoke runs (random data, tiny model): their numbers only show that "
            "the pipeline works.**"
        )
    lines += ["", table, ""]
    if unfinished:
        lines += [
            f"## Unfinished runs ({len(unfinished)}, not in the table)",
            "",
            "In progress or interrupted: running the same config and seed with the same `--out` "
            "(and `--smoke` for smoke runs) resumes them.",
            "",
        ]
        lines += [f"- `{path}`: {' and '.join(found)}, no results.json" for path, found in unfinished.items()]
        lines.append("")
    lines += ["## Plots", ""]
    lines.append(f"Each PNG ({PNG_DPI} dpi) has a PDF of the same name next to it.")
    lines.append("")
    lines += [
        f"- ![{path.stem}]({path.relative_to(out_dir)}) ([PDF]({vector_path(path).relative_to(out_dir)}))"
        for path in plot_paths
    ]
    markdown_path = out_dir / "report.md"
    markdown_path.write_text("\n".join(lines) + "\n")
    return Report(table, markdown_path, accuracy_vs_flops, plot_paths, list(unfinished))


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


def marked_section_names(path: Path, prefix: str) -> list[str]:
    """The names of the marked sections of the file at ``path`` that start with ``prefix``, in the
    file's order (those with both markers), so a command that rewrites the file keeps every one."""
    text = path.read_text() if path.is_file() else ""
    names = re.findall(r"<!-- (" + re.escape(prefix) + r"\S*): start -->", text)
    return [name for name in dict.fromkeys(names) if section_markers(name)[1] in text]


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
