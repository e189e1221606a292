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

from avalanche_sparcl.experiments.report import load_runs, replace_section

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"
METHODS = {  # row label -> shipped config name
    "dense DER++": "der_buf200",
    "SparCL-DER++ 0.75": "sparcl_der_0.75_buf200",
    "SparCL-DER++ 0.90": "sparcl_der_0.90_buf200",
}
EPOCHS = (1, 2, 3, 5, 10)


def run_name(config_name: str, epochs: int, lr: float | None = None) -> str:
    return f"{config_name}_e{epochs}" + ("" if lr is None else f"_lr{lr:g}")


def schedule_config(
    benchmark: str, config_name: str, epochs: int, folder: Path, lr: float | None = None
) -> Path:
    """A config extending the shipped one with ``epochs`` epochs per experience (and ``lr``)."""
    name = run_name(config_name, epochs, lr)
    path = folder / f"{name}.yaml"
    shipped = CONFIGS / benchmark / f"{config_name}.yaml"
    lr_line = "" if lr is None else f"  lr: {lr}\n"
    path.write_text(f"extends: {shipped}\nname: {name}\ntraining:\n  epochs: {epochs}\n{lr_line}")
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


def table(out: Path, lr: float | None = None) -> str:
    """Markdown rows: epochs x method, Class-IL and FLOPs reduction against dense at those epochs."""
    summaries = {summary.name: summary for summary in load_runs(out)}
    lines = [
        "| epochs per experience | method | Class-IL (%) | vs dense (points) | FLOPs reduction | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for epochs in EPOCHS:
        dense = summaries.get(run_name(METHODS["dense DER++"], epochs, lr))
        for label, config_name in METHODS.items():
            summary = summaries.get(run_name(config_name, epochs, lr))
            if summary is None:
                lines.append(f"| {epochs} | {label} | not run | | | 0 |")
                continue
            accuracies = [100 * run["class_il_accuracy"] for run in summary.runs]
            spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
            mean = statistics.fmean(accuracies)
            versus, reduction = "", ""
            if dense is not None:
                dense_mean = statistics.fmean(100 * run["class_il_accuracy"] for run in dense.runs)
                versus = f"{mean - dense_mean:+.1f}"
                dense_flops = statistics.fmean(run["train_flops"] for run in dense.runs)
                flops = statistics.fmean(run["train_flops"] for run in summary.runs)
                reduction = f"{dense_flops / flops:.1f}x"
            lines.append(
                f"| {epochs} | {label} | {mean:.1f} +- {spread:.1f} | {versus} | {reduction} | "
                f"{len(accuracies)} |"
            )
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
    args = parser.parse_args()
    out = args.out or REPO / "runs" / "short_schedules" / args.benchmark
    config_folder = out / "configs"
    config_folder.mkdir(parents=True, exist_ok=True)
    learning_rates = [None] if args.lr is None else [None, args.lr]
    jobs = [
        (schedule_config(args.benchmark, config_name, epochs, config_folder, lr), seed)
        for lr in learning_rates
        for epochs in args.epochs
        for config_name in args.methods
        for seed in args.seeds
    ]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: run_one(job[0], job[1], out / "runs"), jobs))
    rows = table(out / "runs")
    if args.lr is not None:
        rows += (
            f"\n\nThe same runs at learning rate {args.lr:g} (`--lr {args.lr:g}`), every other setting as "
            f"above:\n\n{table(out / 'runs', args.lr)}"
        )
    content = "\n".join(
        [
            f"## SparCL at short schedules: {args.benchmark}",
            "",
            f"Written by `python experiments/short_schedules.py --benchmark {args.benchmark}"
            f"{'' if args.lr is None else f' --lr {args.lr:g}'}` on "
            f"{cpu_name()} ({os.cpu_count()} cores, one torch thread per run, {platform.system()}). "
            f"The shipped `{args.benchmark}` configs with only the epochs per experience changed; "
            f"seeds {' '.join(map(str, args.seeds))}; FLOPs reduction against dense DER++ at the same "
            "schedule.",
            "",
            rows,
            "",
        ]
    )
    replace_section(REPO / "docs" / "benchmarks.md", f"short_schedules_{args.benchmark}", content)
    print(content)


if __name__ == "__main__":
    main()
