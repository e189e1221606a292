"""`make bench`: SparCL's efficiency against the dense baselines, and the plugins' own overhead.

Runs in one process, so ratios compare like with like on a noisy machine, and writes
docs/benchmarks.md and docs/benchmarks.json (figures, machine description and date):

1. plugin overhead per training step and plugin state, ResNet-18 (paper variant, nf 16) on the CPU;
2. whole runs on Split Digits, several seeds: dense DER++ and ER against SparCL-DER++ and SparCL-ER at
   weight sparsity 0.75 / 0.90 / 0.95 (accuracy, training FLOPs ratio, wall-clock ratio);
3. the time SparCL spends in each of its hooks per step (``benchmarks/plugin_profile.py``);
4. the edge export (``avalanche_sparcl.export``): sparse-file and ONNX sizes of ResNet-18, ONNX
   Runtime latency against PyTorch eager (also written alone by ``benchmarks/export_report.py``);
5. the same overhead measurement on a CUDA GPU (ResNet-18 at full width), measured here when this
   machine has one, else read from docs/benchmarks_gpu.json if a GPU machine wrote it with
   ``python benchmarks/overhead.py --device cuda --nf 64 --json docs/benchmarks_gpu.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distributed_throughput import DISTRIBUTED_SECTION  # noqa: E402
from export_report import EXPORT_SECTION, export_section  # noqa: E402
from overhead import measure as measure_overhead  # noqa: E402
from overhead import parse_args as overhead_args  # noqa: E402
from plugin_profile import PROFILE_SECTION, profile_section  # noqa: E402

from avalanche_sparcl.console import hide_avalanche_deprecation_notices  # noqa: E402
from avalanche_sparcl.experiments.config import load_config  # noqa: E402
from avalanche_sparcl.experiments.report import kept_section, section_markers  # noqa: E402
from avalanche_sparcl.experiments.runner import RunOptions, run_experiment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "experiments" / "configs" / "split_digits"
DOCS = ROOT / "docs"
SPARSITIES = (0.75, 0.90, 0.95)
FLOPS_TARGETS = {0.75: 5, 0.90: 10, 0.95: 20}  # times fewer training FLOPs than dense DER++
STEP_OVERHEAD_TARGET = 0.05
STATE_TARGET = 1.5
WALL_CLOCK_TARGET = 0.8
ACCURACY_GAP_TARGET = 1.0  # Class-IL points below dense DER++ at 0.75


def machine_description() -> str:
    """CPU model, cores, Python and torch versions."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), "
        f"Python {platform.python_version()}, torch {torch.__version__}, {platform.system()}"
    )


def digits_configs() -> dict[tuple[str, float], Any]:
    """Dense DER++ / ER and SparCL at each sparsity, from the shipped Split Digits configs."""
    configs: dict[tuple[str, float], Any] = {}
    for strategy in ("der", "er"):
        configs[(strategy, 0.0)] = load_config(DIGITS / f"{strategy}_buf200.yaml")
        sparse = load_config(DIGITS / f"sparcl_{strategy}_0.75_buf200.yaml")
        for sparsity in SPARSITIES:
            configs[(strategy, sparsity)] = dataclasses.replace(
                sparse,
                name=f"sparcl_{strategy}_{sparsity:.2f}_buf200",
                sparcl={**sparse.sparcl, "sparsity": sparsity},
            )
    return configs


def whole_runs(seeds: list[int], out_dir: Path) -> list[dict[str, Any]]:
    """Every config for every seed, configs interleaved so each sees the same machine load."""
    options = RunOptions(out_dir=out_dir, quiet=True, restart=True)  # measure, never reuse old runs
    rows = []
    configs = digits_configs()
    for seed in seeds:
        for (strategy, sparsity), config in configs.items():
            result = run_experiment(config, seed, options)
            rows.append(
                {
                    "strategy": strategy,
                    "sparsity": sparsity,
                    "seed": seed,
                    "class_il": result["class_il_accuracy"],
                    "task_il": result["task_il_accuracy"],
                    "train_flops": result["train_flops"],
                    "train_time_s": result["train_time_s"],
                    "train_iterations": result["train_iterations"],
                }
            )
            print(f"  {config.name} seed {seed}: {result['train_time_s']:.1f} s training", flush=True)
    return rows


def summarise_runs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread per method; FLOPs and wall-clock ratios to the dense run of the same strategy."""
    summary = []
    for strategy in ("der", "er"):
        dense = [r for r in rows if r["strategy"] == strategy and r["sparsity"] == 0]
        dense_flops = statistics.mean(r["train_flops"] for r in dense)
        dense_wall = statistics.mean(r["train_time_s"] for r in dense)
        for sparsity in (0.0, *SPARSITIES):
            runs = [r for r in rows if r["strategy"] == strategy and r["sparsity"] == sparsity]
            class_il = [100 * r["class_il"] for r in runs]
            task_il = [100 * r["task_il"] for r in runs]
            summary.append(
                {
                    "strategy": strategy,
                    "sparsity": sparsity,
                    "seeds": len(runs),
                    "class_il_mean": statistics.mean(class_il),
                    "class_il_std": statistics.stdev(class_il) if len(runs) > 1 else 0.0,
                    "task_il_mean": statistics.mean(task_il),
                    "task_il_std": statistics.stdev(task_il) if len(runs) > 1 else 0.0,
                    "flops_reduction": dense_flops / statistics.mean(r["train_flops"] for r in runs),
                    "wall_clock_ratio": statistics.mean(r["train_time_s"] for r in runs) / dense_wall,
                    "train_iterations": statistics.mean(r["train_iterations"] for r in runs),
                }
            )
    return summary


def verdict(met: bool, detail: str) -> str:
    return f"met ({detail})" if met else f"**missed** ({detail})"


def overhead_rows(result: dict[str, Any]) -> list[str]:
    dense_ms = 1000 * result["dense_step_s"]
    lines = [
        "| step | median time (ms) | vs dense |",
        "|---|---|---|",
        f"| dense step (no plugin) | {dense_ms:.1f} | - |",
    ]
    for kind, label in (
        ("ordinary", "SparCL ordinary step"),
        ("gradient_mask_refresh", "SparCL step with a gradient-mask refresh"),
        ("mask_update", "SparCL step with a TDM mask update"),
    ):
        seconds = result[f"sparcl_{kind}_step_s"]
        if seconds is None:
            lines.append(f"| {label} | not seen | - |")
        else:
            lines.append(f"| {label} | {1000 * seconds:.1f} | {100 * result[f'{kind}_overhead']:+.1f}% |")
    lines.append("")
    if "ordinary_overhead_per_round" in result:
        rounds = ", ".join(f"{100 * ratio:+.1f}%" for ratio in result["ordinary_overhead_per_round"])
        lines.append(
            f"Ordinary-step overhead is the median over the alternating run pairs ({rounds}); their "
            "spread is the measurement noise of this machine."
        )
    lines.append(
        f"Plugin state: {result['plugin_state_bytes'] / 2**20:.2f} MiB for "
        f"{result['parameter_bytes'] / 2**20:.2f} MiB of parameters "
        f"({result['state_to_parameters']:.2f}x)."
    )
    if "peak_cuda_bytes_dense" in result:
        added = result["peak_cuda_bytes_sparcl"] - result["peak_cuda_bytes_dense"]
        lines.append(
            f"Peak GPU memory: {result['peak_cuda_bytes_dense'] / 2**20:.0f} MiB dense, "
            f"{result['peak_cuda_bytes_sparcl'] / 2**20:.0f} MiB with SparCL ({added / 2**20:+.0f} MiB)."
        )
    return lines


def write_markdown(report: dict[str, Any]) -> str:
    """docs/benchmarks.md from the measured figures."""
    cpu, runs, gpu = report["cpu_overhead"], report["runs"], report["gpu_overhead"]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`python benchmarks/run.py`) on {report['date']}.",
        f"Machine: {report['machine']}.",
        "",
        "## Targets",
        "",
        "| target | result |",
        "|---|---|",
    ]
    der = {row["sparsity"]: row for row in runs["summary"] if row["strategy"] == "der"}
    for sparsity, factor in FLOPS_TARGETS.items():
        reduction = der[sparsity]["flops_reduction"]
        lines.append(
            f"| SparCL-DER++ {sparsity:.2f}: >= {factor}x fewer training FLOPs than dense DER++ | "
            + verdict(reduction >= factor, f"{reduction:.1f}x")
            + " |"
        )
    gap = der[0.0]["class_il_mean"] - der[0.75]["class_il_mean"]
    lines.append(
        "| SparCL-DER++ 0.75: Class-IL within 1 point of dense DER++ | "
        + verdict(gap <= ACCURACY_GAP_TARGET, f"{gap:.1f} points below dense")
        + " |"
    )
    wall = der[0.75]["wall_clock_ratio"]
    lines.append(
        "| SparCL-DER++ 0.75: wall clock <= 0.8x dense DER++ (CPU) | "
        + verdict(wall <= WALL_CLOCK_TARGET, f"{wall:.2f}x")
        + " |"
    )
    step = cpu["ordinary_overhead"]
    lines.append(
        "| plugin overhead <= 5% per ordinary step (CPU) | "
        + verdict(step is not None and step <= STEP_OVERHEAD_TARGET, f"{100 * (step or 0):+.1f}%")
        + " |"
    )
    state = cpu["state_to_parameters"]
    lines.append(
        "| plugin state <= 1.5x parameter memory | " + verdict(state <= STATE_TARGET, f"{state:.2f}x") + " |"
    )
    if gpu is not None and gpu.get("ordinary_overhead") is not None:
        step = gpu["ordinary_overhead"]
        lines.append(
            f"| plugin overhead <= 5% per ordinary step ({gpu['device']}) | "
            + verdict(step <= STEP_OVERHEAD_TARGET, f"{100 * step:+.1f}%")
            + " |"
        )
    lines += [
        "",
        "## Whole runs on Split Digits",
        "",
        f"Seeds {runs['seeds']}; 5 experiences, SmallCNN, 10 epochs per experience, batch 32, buffer 200; "
        "SparCL = TDM + DDR (30% removed) + DGM (gradient sparsity 0.2), no masked head. Training FLOPs "
        "are counted by `avalanche_sparcl.metrics` (sparsity-aware, buffer samples and DER's logit pass "
        "included); wall clock is the time spent in `strategy.train` over the whole run on this machine "
        "(evaluation and checkpoints excluded).",
        "",
        "| method | Class-IL (%) | Task-IL (%) | FLOPs reduction | wall clock vs dense | iterations |",
        "|---|---|---|---|---|---|",
    ]
    for row in runs["summary"]:
        name = {"der": "DER++", "er": "ER"}[row["strategy"]]
        method = name if row["sparsity"] == 0 else f"SparCL-{name} {row['sparsity']:.2f}"
        lines.append(
            f"| {method} | {row['class_il_mean']:.1f} +- {row['class_il_std']:.1f} | "
            f"{row['task_il_mean']:.1f} +- {row['task_il_std']:.1f} | {row['flops_reduction']:.1f}x | "
            f"{row['wall_clock_ratio']:.2f}x | {row['train_iterations']:.0f} |"
        )
    lines += [
        "",
        "On a CPU a masked weight is still multiplied (dense kernels), so the wall-clock saving comes "
        "from DDR's fewer iterations alone, minus the plugins' own cost; the FLOPs figure is what "
        "sparse kernels on edge hardware could turn into time.",
        "",
        "## Plugin overhead on the CPU",
        "",
        f"{cpu['model']}, batch {cpu['batch_size']}, random 32x32 images, Naive strategy with and "
        f"without SparCLPlugin (0.75 / 0.3 / 0.2), {cpu['rounds']} alternating run pairs, medians over "
        f"{cpu['steps_measured']['dense']} dense and {cpu['steps_measured']['sparcl']} SparCL steps.",
        "",
        *overhead_rows(cpu),
        "",
        "## Plugin overhead on a GPU",
        "",
    ]
    if gpu is None:
        lines.append("Not measured: no CUDA GPU here, and no docs/benchmarks_gpu.json from a GPU machine.")
    else:
        lines += [
            f"{gpu['device']}, {gpu['model']}, batch {gpu['batch_size']}; measured by "
            f"`{gpu.get('command', 'python benchmarks/overhead.py --device cuda')}`"
            f"{' on ' + gpu['date'] if 'date' in gpu else ''}.",
            "",
            *overhead_rows(gpu),
        ]
    lines.append("")
    return "\n".join(lines)


SPLIT_FMNIST_SECTION = "split_fmnist"
"""The section of docs/benchmarks.md that experiments/split_fmnist_reproduction.py writes (its runs
take most of an hour, so `make bench` keeps the last one instead of rerunning them)."""


SHORT_SCHEDULE_SECTIONS = ("short_schedules_split_digits", "short_schedules_split_fmnist_quick")
"""Sections written by experiments/short_schedules.py (45 runs per benchmark), kept by `make bench`."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="run folders go here")
    parser.add_argument("--docs", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    hide_avalanche_deprecation_notices()
    args.docs.mkdir(parents=True, exist_ok=True)
    print("plugin overhead on the CPU ...", flush=True)
    cpu_options = ["--device", "cpu", "--nf", "16", "--epochs", "10", "--rounds", "5"]
    cpu = measure_overhead(overhead_args(cpu_options))
    gpu = None
    gpu_file = args.docs / "benchmarks_gpu.json"
    if torch.cuda.is_available():
        print("plugin overhead on the GPU ...", flush=True)
        gpu = measure_overhead(overhead_args(["--device", "cuda", "--nf", "64", "--epochs", "10"]))
        gpu["command"] = "make bench"
    elif gpu_file.is_file():
        gpu = json.loads(gpu_file.read_text())
    print("whole runs on Split Digits ...", flush=True)
    rows = whole_runs(args.seeds, args.out)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "cpu_overhead": cpu,
        "gpu_overhead": gpu,
        "runs": {"seeds": args.seeds, "rows": rows, "summary": summarise_runs(rows)},
    }
    (args.docs / "benchmarks.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = write_markdown(report)
    print("time per plugin hook ...", flush=True)
    start, end = section_markers(PROFILE_SECTION)
    markdown += f"\n{start}\n{profile_section(report['machine']).rstrip()}\n{end}\n"
    print("edge export sizes and latency ...", flush=True)
    start, end = section_markers(EXPORT_SECTION)
    markdown += f"\n{start}\n{export_section(report['machine']).rstrip()}\n{end}\n"
    markdown += kept_section(args.docs / "benchmarks.md", SPLIT_FMNIST_SECTION)
    for section in SHORT_SCHEDULE_SECTIONS:
        markdown += kept_section(args.docs / "benchmarks.md", section)
    markdown += kept_section(args.docs / "benchmarks.md", DISTRIBUTED_SECTION)
    (args.docs / "benchmarks.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
