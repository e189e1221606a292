"""SparCL at the schedules Avalanche users run: Class-IL against epochs per experience.

    python experiments/short_schedules.py                               # Split Digits, seeds 0-2
    python experiments/short_schedules.py --benchmark split_fmnist_quick --jobs 2

Runs dense DER++ and SparCL-DER++ 0.75 / 0.90 (the shipped configs of the benchmark, only the number
of epochs per experience changed) at 1, 2, 3, 5 and 10 epochs per experience, each (config, epochs,
seed) one ``sparcl-bench run`` process with one torch thread, ``--jobs`` at a time; finished runs in
``--out`` are reused. Then it writes its table (Class-IL mean +- std over seeds, FLOPs reduction
against the dense run of the same schedule) as the benchmark's section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from avalanche_sparcl.experiments.report import load_runs, replace_section

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"
METHODS = {  # row label -> shipped config name
    "dense DER++": "der_buf200",
    "SparCL-DER++ 0.75": "sparcl_der_0.75_buf200",
    "SparCL-DER++ 0.90": "sparcl_der_0.90_buf200",
}
EPOCHS = (1, 2, 3, 5, 10)
STARTS = {  # row label -> the sparcl options of SparCL-DER++ 0.75 (--starts): how its masked layers start
    "kept weights as drawn (`kept_scale: none`, the default up to 0.3.0)": {"kept_scale": "none"},
    "per-weight variance (the default, `kept_scale: auto`, below 256 steps)": {},
    "per-unit variance (`kept_scale: unit_variance`)": {"kept_scale": "unit_variance"},
    "ERK densities, kept weights as drawn": {"kept_scale": "none", "layer_densities": "erk"},
    "sparsity ramp over 27 steps (`ramp_steps: 27`)": {"kept_scale": "none", "ramp_steps": 27},
    "per-weight variance + ERK densities": {"layer_densities": "erk"},
    "per-weight variance, DGM on at any length (`min_gradient_masking_steps: 0`)": {
        "min_gradient_masking_steps": 0
    },
}
START_CONFIG = "sparcl_der_0.75_buf200"
START_EPOCHS = (2, 3)


def run_name(config_name: str, epochs: int, lr: float | None = None, start: int | None = None) -> str:
    """The run's folder name; a row of ``STARTS`` with no options is the shipped config's run."""
    if start is not None and not list(STARTS.values())[start]:
        start = None
    return (
        f"{config_name}_e{epochs}"
        + ("" if lr is None else f"_lr{lr:g}")
        + ("" if start is None else f"_start{start}")
    )


def schedule_config(
    benchmark: str,
    config_name: str,
    epochs: int,
    folder: Path,
    lr: float | None = None,
    start: int | None = None,
    train_per_class: int | None = None,
    sparcl_options: dict[str, str] | None = None,
) -> Path:
    """A config extending the shipped one with ``epochs`` epochs per experience (and ``lr``, the
    options of row ``start`` of ``STARTS``, the first ``train_per_class`` training images per class,
    ``sparcl_options`` on SparCL configs)."""
    name = run_name(config_name, epochs, lr, start)
    path = folder / f"{name}.yaml"
    shipped = CONFIGS / benchmark / f"{config_name}.yaml"
    lr_line = "" if lr is None else f"  lr: {lr}\n"
    options = {} if start is None else dict(list(STARTS.values())[start])
    if config_name != METHODS["dense DER++"]:
        options = {**(sparcl_options or {}), **options}
    sparcl = "".join(f"  {key}: {value}\n" for key, value in options.items())
    path.write_text(
        f"extends: {shipped}\nname: {name}\ntraining:\n  epochs: {epochs}\n{lr_line}"
        + (f"sparcl:\n{sparcl}" if sparcl else "")
        + ("" if train_per_class is None else f"benchmark:\n  train_per_class: {train_per_class}\n")
    )
    return path


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_one(config: Path, seed: int, out: Path) -> None:
    """One run in its own process with one torch thread (results do not depend on --jobs)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "avalanche_sparcl.experiments.cli", "run", str(config)]
    command += ["--seeds", str(seed), "--quiet", "--out", str(out)]
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)


def table(out: Path, lr: float | None = None, epochs_list: tuple[int, ...] = EPOCHS) -> str:
    """Markdown rows: epochs x method, Class-IL and FLOPs reduction against dense at those epochs."""
    summaries = {summary.name: summary for summary in load_runs(out)}
    lines = [
        "| epochs per experience | method | Class-IL (%) | vs dense (points) | FLOPs reduction | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for epochs in epochs_list:
        dense = summaries.get(run_name(METHODS["dense DER++"], epochs, lr))
        for label, config_name in METHODS.items():
            lines.append(table_row(epochs, label, summaries.get(run_name(config_name, epochs, lr)), dense))
    return "\n".join(lines)


def command_line() -> str:
    """This script's command line as run, without where its runs went and how many ran at a time."""
    words, skip = [], False
    for word in sys.argv[1:]:
        if skip or word in ("--out", "--jobs"):
            skip = word in ("--out", "--jobs")
            continue
        words.append(word)
    return " ".join(["python experiments/short_schedules.py", *words])


def mean_class_il(summary: Any) -> float:
    return statistics.fmean(100 * run["class_il_accuracy"] for run in summary.runs)


def mean_flops(summary: Any) -> float:
    return statistics.fmean(run["train_flops"] for run in summary.runs)


def table_row(epochs: int, label: str, summary: Any, dense: Any) -> str:
    """One row: Class-IL mean +- std over seeds, and against ``dense`` (points, FLOPs reduction)."""
    if summary is None:
        return f"| {epochs} | {label} | not run | | | 0 |"
    accuracies = [100 * run["class_il_accuracy"] for run in summary.runs]
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    versus, reduction = "", ""
    if dense is not None:
        versus = f"{mean_class_il(summary) - mean_class_il(dense):+.1f}"
        reduction = f"{mean_flops(dense) / mean_flops(summary):.1f}x"
    return (
        f"| {epochs} | {label} | {statistics.fmean(accuracies):.1f} +- {spread:.1f} | {versus} | {reduction} "
        f"| {len(accuracies)} |"
    )


def starts_table(out: Path, epochs_list: list[int], lr: float | None = None) -> str:
    """Markdown rows: SparCL-DER++ 0.75 with each way of starting its masked layers, against dense."""
    summaries = {summary.name: summary for summary in load_runs(out)}
    lines = [
        "| epochs per experience | how the masked layers start | Class-IL (%) | vs dense (points) "
        "| FLOPs reduction | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for epochs in epochs_list:
        dense = summaries.get(run_name(METHODS["dense DER++"], epochs, lr))
        for index, label in enumerate(STARTS):
            summary = summaries.get(run_name(START_CONFIG, epochs, lr, index))
            lines.append(table_row(epochs, label, summary, dense))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", default="split_digits", choices=("split_digits", "split_fmnist_quick"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, nargs="+", default=list(EPOCHS), choices=EPOCHS)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS.values()),
        choices=list(METHODS.values()),
        help="configs to run (default: all three); the table lists the others as far as they were run",
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--lr", type=float, default=None, help="also run every schedule at this learning rate (second table)"
    )
    parser.add_argument("--out", type=Path, default=None, help="default: runs/short_schedules/<benchmark>")
    parser.add_argument(
        "--starts",
        action="store_true",
        help="also run SparCL-DER++ 0.75 with each way of starting its masked layers (STARTS) at "
        "--start-epochs, at the shipped learning rate, and write that table",
    )
    parser.add_argument("--start-epochs", type=int, nargs="+", default=list(START_EPOCHS), choices=EPOCHS)
    parser.add_argument(
        "--train-per-class",
        type=int,
        default=None,
        help="split_fmnist_quick only: train on the first N images of each class (shorter experiences)",
    )
    parser.add_argument(
        "--sparcl",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="sparcl options set on every SparCL config (e.g. masked_head=false); own runs and section",
    )
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.sparcl)
    if args.train_per_class is not None and args.benchmark != "split_fmnist_quick":
        parser.error("--train-per-class applies to split_fmnist_quick only")
    subset = "" if args.train_per_class is None else f"_pc{args.train_per_class}"
    subset += "".join(f"_{key}-{value}" for key, value in extra.items())
    title = args.benchmark + (
        "" if args.train_per_class is None else f", {args.train_per_class} training images per class"
    )
    title += "".join(f", {key}: {value}" for key, value in extra.items())
    cut = (
        ""
        if args.train_per_class is None
        else f", the first {args.train_per_class} training images per class"
    )
    cut += "".join(f", `{key}: {value}` on the SparCL configs" for key, value in extra.items())
    out = args.out or REPO / "runs" / "short_schedules" / (args.benchmark + subset)
    config_folder = out / "configs"
    config_folder.mkdir(parents=True, exist_ok=True)
    learning_rates = [None] if args.lr is None else [None, args.lr]
    jobs = [
        (
            schedule_config(
                args.benchmark, config_name, epochs, config_folder, lr, None, args.train_per_class, extra
            ),
            seed,
        )
        for lr in learning_rates
        for epochs in args.epochs
        for config_name in args.methods
        for seed in args.seeds
    ]
    if args.starts:
        jobs += [
            (
                schedule_config(
                    args.benchmark,
                    config_name,
                    epochs,
                    config_folder,
                    None,
                    start,
                    args.train_per_class,
                    extra,
                ),
                seed,
            )
            for epochs in args.start_epochs
            for config_name, start in [(METHODS["dense DER++"], None)]
            + [(START_CONFIG, index) for index in range(len(STARTS))]
            for seed in args.seeds
        ]
    jobs = list(dict.fromkeys(jobs))  # the default row of STARTS and dense are runs of the main table
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: run_one(job[0], job[1], out / "runs"), jobs))
    rows = table(out / "runs", None, tuple(args.epochs))
    if args.lr is not None:
        rows += (
            f"\n\nThe same runs at learning rate {args.lr:g} (`--lr {args.lr:g}`), every other setting as "
            f"above:\n\n{table(out / 'runs', args.lr, tuple(args.epochs))}"
        )
    content = "\n".join(
        [
            f"## SparCL at short schedules: {title}",
            "",
            f"Written by `{command_line()}` on "
            f"{cpu_name()} ({os.cpu_count()} cores, one torch thread per run, {platform.system()}). "
            f"The shipped `{args.benchmark}` configs with only the epochs per experience changed"
            f"{cut}; "
            f"seeds {' '.join(map(str, args.seeds))}; FLOPs reduction against dense DER++ at the same "
            "schedule.",
            "",
            rows,
            "",
        ]
    )
    replace_section(REPO / "docs" / "benchmarks.md", f"short_schedules_{args.benchmark}{subset}", content)
    print(content)
    if args.starts:
        starts = "\n".join(
            [
                f"### How the masked layers start: {title}",
                "",
                f"Written by `{command_line()}` on {cpu_name()} "
                f"({os.cpu_count()} cores, one torch thread per run, {platform.system()}). SparCL-DER++ "
                f"0.75 (`{START_CONFIG}`, shipped learning rate) with the sparcl options of each row; "
                f"seeds {' '.join(map(str, args.seeds))}; against dense DER++ at the same schedule.",
                "",
                starts_table(out / "runs", args.start_epochs),
                "",
            ]
        )
        section = f"short_schedules_{args.benchmark}{subset}_starts"
        replace_section(REPO / "docs" / "benchmarks.md", section, starts)
        print(starts)


if __name__ == "__main__":
    main()
