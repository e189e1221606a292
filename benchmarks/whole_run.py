"""Whole-run cost of SparCL against dense: training wall clock on Split Fashion-MNIST, peak memory.

Two measurements, every run in its own fresh Python process (so no run inherits another's allocator
state, caches or peak memory), dense and SparCL alternating so both see the same machine load:

1. wall clock: SparCL-DER++ 0.75 against dense DER++ on the quick Split Fashion-MNIST protocol (small
   CNN, 3 epochs per experience, 5 experiences), each run's ``train_time_s`` (time inside
   ``strategy.train``), iterations (DDR's removals shorten the later epochs), Class-IL and peak RSS;
   target: SparCL's training wall clock <= 0.80x dense;
2. peak memory where 1.5x the parameters is measurable: ResNet-18 (nf 64, 1x28x28 inputs) trained by
   Avalanche's DER with and without SparCLPlugin on a synthetic two-experience benchmark, long enough
   for TDM mask updates, DGM gradient-mask refreshes and a DDR removal stage; target: SparCL's peak RSS
   <= dense peak RSS + 1.5x the model's parameter bytes.

    python benchmarks/whole_run.py [--seeds 0 1] [--threads N] [--epochs N] [--memory-rounds 2]
                                   [--parts wall_clock memory] [--json FILE] [--docs]

``--docs`` rewrites the "Whole run on Split Fashion-MNIST" section of docs/benchmarks.md.

Peak RSS is the child's ``VmHWM`` (/proc/self/status): Linux carries ``ru_maxrss`` over ``execve``
from the process that spawned the child, so a child started by a big parent (``make bench``) would
report the parent's peak; ``ru_maxrss`` is recorded next to it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avalanche_sparcl.settings import counted

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
QUICK = ROOT / "experiments" / "configs" / "split_fmnist_quick"
DENSE_CONFIG = QUICK / "der_buf200.yaml"
SPARCL_CONFIG = QUICK / "sparcl_der_0.75_buf200.yaml"
METHODS = ("dense", "sparcl")
WALL_CLOCK_TARGET = 0.80  # SparCL training wall clock / dense
STATE_TARGET = 1.5  # SparCL peak memory <= dense peak + this many times the parameter bytes
WHOLE_RUN_SECTION = "whole_run"
SCRIPT = str(Path(__file__).resolve())
PARTS = ("wall_clock", "memory")
MIB = 2**20

# The memory measurement's SparCL: the paper's settings with the short-schedule rules off, so a 30-step
# experience still sees TDM mask updates, a DDR removal stage and DGM's gradient masks.
MEMORY_PLUGIN_OPTIONS = {
    "sparsity": 0.75,
    "removal_ratio": 0.3,
    "gradient_sparsity": 0.2,
    "min_update_steps": 0,
    "min_experience_steps": 0,
    "min_gradient_masking_steps": 0,
}
MEMORY_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
"""glibc's allocator with a fixed mmap threshold: every block of 128 KiB or more (every tensor worth
counting) is its own mapping, returned to the system when freed, so the peak resident size follows
the peak of live tensors instead of the heap's high-water mark (which otherwise moves by tens of MiB
from one identical run to the next)."""
MEMORY_BATCH = 32
MEMORY_BUFFER = 200


def peak_rss_kib() -> dict[str, int | None]:
    """This process's peak resident memory in KiB: ``VmHWM`` (its own, since exec) and ``ru_maxrss``."""
    hwm = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except OSError:
        pass
    return {"vm_hwm_kib": hwm, "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def peak_kib(record: dict[str, Any]) -> int:
    """The peak RSS of a child's record: VmHWM where the kernel has it, else ru_maxrss."""
    return record["vm_hwm_kib"] if record.get("vm_hwm_kib") is not None else record["ru_maxrss_kib"]


def set_threads(threads: int | None) -> int:
    """Apply ``--threads`` (None keeps torch's default); return the count the run uses."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# --- children: one run each, in a fresh process --------------------------------------------------


def one_quick_run(
    config_path: Path, seed: int, out_dir: Path, threads: int | None, epochs: int | None
) -> dict:
    """One whole Split Fashion-MNIST run through the project's runner (the child of ``--one``)."""
    import dataclasses

    from avalanche_sparcl.console import hide_avalanche_deprecation_notices
    from avalanche_sparcl.experiments.config import load_config
    from avalanche_sparcl.experiments.runner import RunOptions, build_model, run_experiment

    hide_avalanche_deprecation_notices()
    used_threads = set_threads(threads)
    config = load_config(config_path)
    if epochs is not None:
        config = dataclasses.replace(config, training={**config.training, "epochs": epochs})
    model = build_model(config, smoke=False)
    started = time.perf_counter()
    result = run_experiment(config, seed, RunOptions(out_dir=out_dir, quiet=True, restart=True))
    return {
        "method": "dense" if config.method_kind == "dense" else "sparcl",
        "config": config.name,
        "seed": seed,
        "epochs": config.training["epochs"],
        "threads": used_threads,
        "train_time_s": result["train_time_s"],
        "train_iterations": result["train_iterations"],
        "class_il": result["class_il_accuracy"],
        "train_flops": result["train_flops"],
        "kept_data": result["kept_data"],
        "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "run_wall_s": time.perf_counter() - started,  # training, evaluation and checkpoints
        **peak_rss_kib(),
    }


def one_memory_run(
    method: str, nf: int, epochs: int, minibatches: int, threads: int | None, seed: int = 0
) -> dict:
    """ResNet-18 trained by DER on two synthetic experiences, with or without SparCL (``--memory-one``)."""
    import torch
    from avalanche.core import SupervisedPlugin
    from avalanche.training import DER
    from avalanche.training.plugins import EvaluationPlugin

    from avalanche_sparcl import SparCLPlugin
    from avalanche_sparcl.benchmarks import tensor_benchmark
    from avalanche_sparcl.console import hide_avalanche_deprecation_notices
    from avalanche_sparcl.models import ResNet18

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from overhead import plugin_state_bytes

    class RefreshCounter(SupervisedPlugin):
        """Counts DGM's gradient-mask refreshes (its ``apply`` returns whether it refreshed)."""

        def __init__(self, sparcl: SparCLPlugin):
            super().__init__()
            self.sparcl, self.refreshes, self.wrapped = sparcl, 0, None

        def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
            masking = self.sparcl.dgm.gradient_masking if self.sparcl.dgm is not None else None
            if masking is None or masking is self.wrapped:
                return
            apply = masking.apply

            def counted(*args: Any, **kwargs: Any) -> bool:
                refreshed = apply(*args, **kwargs)
                self.refreshes += bool(refreshed)
                return refreshed

            masking.apply, self.wrapped = counted, masking

    hide_avalanche_deprecation_notices()
    used_threads = set_threads(threads)
    torch.manual_seed(seed)
    n_train = 2 * minibatches * MEMORY_BATCH  # two experiences of 5 classes, ``minibatches`` per epoch
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat(n_train // 10 + 1)[:n_train]
    images = torch.randn(n_train, 1, 28, 28, generator=generator)
    benchmark = tensor_benchmark((images, labels), (images[:MEMORY_BATCH], labels[:MEMORY_BATCH]), 2, seed)
    model = ResNet18(num_classes=10, nf=nf, in_channels=1)
    sparcl = SparCLPlugin(**MEMORY_PLUGIN_OPTIONS) if method == "sparcl" else None
    counter = RefreshCounter(sparcl) if sparcl is not None else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        strategy = DER(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.03),
            mem_size=MEMORY_BUFFER,
            batch_size_mem=MEMORY_BATCH,
            train_mb_size=MEMORY_BATCH,
            train_epochs=epochs,
            device="cpu",
            plugins=[plugin for plugin in (sparcl, counter) if plugin is not None],
            evaluator=EvaluationPlugin(loggers=[]),
        )
    setup = peak_rss_kib()
    started = time.perf_counter()
    for experience in benchmark.train_stream:
        strategy.train(experience)
    record: dict[str, Any] = {
        "method": method,
        "model": f"ResNet18(nf={nf}, in_channels=1)",
        "threads": used_threads,
        "train_time_s": time.perf_counter() - started,
        "train_iterations": strategy.clock.train_iterations,
        "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "setup_peak_kib": peak_kib(setup),
        "plugin_state_bytes": plugin_state_bytes(sparcl) if sparcl is not None else 0,
        "mask_updates": len(sparcl.tdm.dynamic_sparsity.history) if sparcl is not None else 0,
        "gradient_mask_refreshes": counter.refreshes if counter is not None else 0,
        "ddr_stages": sum(len(r.stages) for r in sparcl.ddr.stage_counts) if sparcl is not None else 0,
        **peak_rss_kib(),
    }
    return record


# --- the parent: alternate fresh children ------------------------------------------------------------


def run_child(arguments: list[str]) -> dict[str, Any]:
    """Run this script with ``arguments`` in a fresh interpreter; return the JSON it wrote."""
    return run_children([arguments])[0]


def run_children(
    argument_lists: list[list[str]], environment: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Run this script once per argument list, all at the same time, each in a fresh interpreter
    (with ``environment`` added to this one's); return the JSON each wrote, in order."""
    env = {**os.environ, **(environment or {})}
    with tempfile.TemporaryDirectory() as folder:
        outputs = [Path(folder) / f"result_{index}.json" for index in range(len(argument_lists))]
        children = [
            subprocess.Popen([sys.executable, SCRIPT, *arguments, "--json", str(output)], env=env)
            for arguments, output in zip(argument_lists, outputs, strict=True)
        ]
        codes = [child.wait() for child in children]
        if any(codes):
            raise subprocess.CalledProcessError(max(codes), f"benchmarks/whole_run.py {argument_lists}")
        return [json.loads(output.read_text()) for output in outputs]


def thread_arguments(threads: int | None) -> list[str]:
    return [] if threads is None else ["--threads", str(threads)]


def wall_clock_runs(
    seeds: list[int], out_dir: Path, threads: int | None, epochs: int | None, side_by_side: bool = True
) -> list[dict[str, Any]]:
    """Dense and SparCL runs of each seed, one process each: side by side (both at once, one torch
    thread each, so that both see the same machine at every moment: this 2-core machine's speed
    drifts by tens of percent over minutes) or alternating (dense s0, SparCL s0, dense s1, ...)."""
    rows = []
    for seed in seeds:
        pair = []
        for config in (DENSE_CONFIG, SPARCL_CONFIG):
            arguments = ["--one", str(config), "--seed", str(seed), "--out", str(out_dir)]
            arguments += thread_arguments(1 if side_by_side else threads)
            pair.append(arguments + ([] if epochs is None else ["--epochs", str(epochs)]))
        results = run_children(pair) if side_by_side else [run_child(arguments) for arguments in pair]
        for row in results:
            row["side_by_side"] = side_by_side
            rows.append(row)
            print(
                f"  {row['config']} seed {seed}: {row['train_time_s']:.1f} s training, "
                f"{row['train_iterations']} iterations, peak RSS {peak_kib(row) / 1024:.0f} MiB",
                flush=True,
            )
    return rows


def memory_runs(
    rounds: int, nf: int, epochs: int, minibatches: int, threads: int | None
) -> list[dict[str, Any]]:
    """``rounds`` pairs of ResNet-18 DER runs, dense then SparCL, one process each."""
    rows = []
    for index in range(rounds):
        for method in METHODS:
            arguments = ["--memory-one", method, "--memory-nf", str(nf), "--memory-epochs", str(epochs)]
            arguments += ["--memory-minibatches", str(minibatches), *thread_arguments(threads)]
            row = {**run_children([arguments], MEMORY_ENVIRONMENT)[0], "round": index}
            rows.append(row)
            print(
                f"  round {index} {method}: peak RSS {peak_kib(row) / 1024:.1f} MiB, "
                f"{row['train_time_s']:.1f} s training",
                flush=True,
            )
    return rows


# --- summaries (pure) ------------------------------------------------------------------------------


def median_of(rows: list[dict[str, Any]], method: str, key: str) -> float:
    return statistics.median(row[key] for row in rows if row["method"] == method)


def summarise_wall_clock(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per method, SparCL/dense ratios (of the medians, and per seed), the peak RSS against
    1.5x the parameter bytes, and the wall-clock verdict."""
    summary: dict[str, Any] = {}
    for method in METHODS:
        runs = [row for row in rows if row["method"] == method]
        summary[method] = {
            "runs": len(runs),
            "train_time_s": median_of(rows, method, "train_time_s"),
            "train_iterations": median_of(rows, method, "train_iterations"),
            "class_il": median_of(rows, method, "class_il"),
            "train_flops": median_of(rows, method, "train_flops"),
            "peak_rss_kib": statistics.median(peak_kib(row) for row in runs),
        }
    dense, sparcl = summary["dense"], summary["sparcl"]
    by_seed = {(row["method"], row["seed"]): row for row in rows}
    seeds = sorted({row["seed"] for row in rows})
    summary["seed_ratios"] = [
        by_seed[("sparcl", seed)]["train_time_s"] / by_seed[("dense", seed)]["train_time_s"]
        for seed in seeds
        if ("sparcl", seed) in by_seed and ("dense", seed) in by_seed
    ]
    summary["wall_clock_ratio"] = sparcl["train_time_s"] / dense["train_time_s"]
    summary["iterations_ratio"] = sparcl["train_iterations"] / dense["train_iterations"]
    summary["flops_reduction"] = dense["train_flops"] / sparcl["train_flops"]
    summary["wall_clock_met"] = summary["wall_clock_ratio"] <= WALL_CLOCK_TARGET
    summary["parameter_bytes"] = rows[0]["parameter_bytes"]
    summary["rss_difference_bytes"] = 1024 * (sparcl["peak_rss_kib"] - dense["peak_rss_kib"])
    summary["rss_budget_bytes"] = STATE_TARGET * summary["parameter_bytes"]
    return summary


def summarise_memory(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median peak RSS per method over the rounds, the per-round differences, the budget (1.5x the
    parameter bytes) and its verdict, and whether every SparCL run saw each kind of SparCL event."""
    summary: dict[str, Any] = {}
    for method in METHODS:
        runs = [row for row in rows if row["method"] == method]
        summary[method] = {
            "runs": len(runs),
            "peak_rss_kib": statistics.median(peak_kib(row) for row in runs),
            "peak_rss_kib_per_round": [peak_kib(row) for row in runs],
            "setup_peak_kib": statistics.median(row["setup_peak_kib"] for row in runs),
            "train_time_s": median_of(rows, method, "train_time_s"),
        }
    by_round = {(row["method"], row["round"]): row for row in rows}
    rounds = sorted({row["round"] for row in rows})
    summary["round_differences_bytes"] = [
        1024 * (peak_kib(by_round[("sparcl", r)]) - peak_kib(by_round[("dense", r)]))
        for r in rounds
        if ("sparcl", r) in by_round and ("dense", r) in by_round
    ]
    difference = 1024 * (summary["sparcl"]["peak_rss_kib"] - summary["dense"]["peak_rss_kib"])
    parameter_bytes = rows[0]["parameter_bytes"]
    summary["model"] = rows[0]["model"]
    summary["parameter_bytes"] = parameter_bytes
    summary["rss_difference_bytes"] = difference
    summary["rss_budget_bytes"] = STATE_TARGET * parameter_bytes
    summary["memory_met"] = difference <= summary["rss_budget_bytes"]
    sparse_runs = [row for row in rows if row["method"] == "sparcl"]
    summary["plugin_state_bytes"] = max(row["plugin_state_bytes"] for row in sparse_runs)
    summary["events"] = {
        key: min(row[key] for row in sparse_runs)
        for key in ("mask_updates", "gradient_mask_refreshes", "ddr_stages")
    }
    return summary


# --- the docs section (pure) -----------------------------------------------------------------------


def verdict(met: bool, detail: str) -> str:
    return f"met ({detail})" if met else f"**missed** ({detail})"


def mib(n_bytes: float) -> str:
    return f"{n_bytes / MIB:.1f}"


def memory_verdict(difference: float, budget: float) -> str:
    """'met (+a MiB of b MiB allowed)' or '**missed** (+a MiB, c MiB over the b MiB allowed)'."""
    if difference <= budget:
        return verdict(True, f"{difference / MIB:+.1f} MiB of {mib(budget)} MiB allowed")
    return verdict(
        False,
        f"{difference / MIB:+.1f} MiB, {mib(difference - budget)} MiB over the {mib(budget)} MiB allowed",
    )


def iterations_sentence(iterations_ratio: float) -> str:
    """How much of the wall-clock difference DDR's fewer iterations explain."""
    if iterations_ratio == 1:
        return "SparCL ran as many iterations as dense (DDR removed no data)."
    return (
        f"SparCL ran {iterations_ratio:.2f}x dense's iterations (DDR's removals): at an unchanged cost "
        f"per step that alone would give {iterations_ratio:.2f}x the wall clock."
    )


def wall_clock_lines(report: dict[str, Any]) -> list[str]:
    summary, settings = report["summary"], report["settings"]
    dense, sparcl = summary["dense"], summary["sparcl"]
    epochs = settings["epochs"]
    protocol = (
        "3 epochs per experience"
        if epochs == 3
        else f"**{counted(epochs, 'epoch')} per experience** (not the protocol's 3)"
    )
    ratio = summary["wall_clock_ratio"]
    lines = [
        f"SparCL-DER++ 0.75 (`{SPARCL_CONFIG.relative_to(ROOT)}`) against dense DER++ "
        f"(`{DENSE_CONFIG.relative_to(ROOT)}`): small CNN, {protocol}, 5 experiences, batch 32 + 32 "
        "replayed, reservoir buffer 200. Wall clock is each run's `train_time_s` (time inside "
        "`strategy.train`; evaluation and checkpoints excluded); seeds "
        f"{settings['seeds']}, one fresh process per run, "
        + (
            "the dense and SparCL runs of a seed side by side (at the same time, one torch thread "
            "each: both see the same machine, whose speed drifts by tens of percent over minutes)"
            if settings.get("side_by_side")
            else "dense and SparCL alternating"
        )
        + "; medians over seeds.",
        "",
        "| target | result |",
        "|---|---|",
        f"| SparCL-DER++ 0.75 training wall clock <= {WALL_CLOCK_TARGET:.2f}x dense DER++ | "
        + verdict(summary["wall_clock_met"], f"{ratio:.2f}x")
        + " |",
        "",
        "| method | training wall clock (s) | vs dense | iterations | Class-IL (%) | FLOPs reduction "
        "| peak RSS (MiB) | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, row, vs in (("DER++", dense, 1.0), ("SparCL-DER++ 0.75", sparcl, ratio)):
        lines.append(
            f"| {label} | {row['train_time_s']:.1f} | {vs:.2f}x | {row['train_iterations']:.0f} | "
            f"{100 * row['class_il']:.1f} | {dense['train_flops'] / row['train_flops']:.1f}x | "
            f"{row['peak_rss_kib'] / 1024:.1f} | {row['runs']} |"
        )
    seed_ratios = ", ".join(f"{value:.2f}x" for value in summary["seed_ratios"])
    lines += [
        "",
        f"Per seed (same-seed pairs): {seed_ratios}. {iterations_sentence(summary['iterations_ratio'])} "
        f"Per iteration SparCL took {ratio / summary['iterations_ratio']:.2f}x dense's time: its own work "
        "in each step (mask updates, gradient masking, DDR's scoring) against what its sparse weights "
        "save.",
        "",
        f"Peak RSS: SparCL {summary['rss_difference_bytes'] / MIB:+.1f} MiB against dense; 1.5x the small "
        f"CNN's {summary['parameter_bytes'] / 1024:.0f} KiB of parameters is "
        f"{summary['rss_budget_bytes'] / 1024:.0f} KiB, below the run-to-run noise of a process's RSS, "
        "hence the ResNet-18 measurement below.",
    ]
    return lines


def memory_lines(report: dict[str, Any]) -> list[str]:
    summary, settings = report["summary"], report["settings"]
    dense, sparcl = summary["dense"], summary["sparcl"]
    steps = 2 * settings["epochs"] * settings["minibatches"]
    events = summary["events"]
    options = ", ".join(f"{key}={value}" for key, value in MEMORY_PLUGIN_OPTIONS.items())
    differences = ", ".join(f"{value / MIB:+.1f}" for value in summary["round_differences_bytes"])
    lines = [
        f"{summary['model']}, Avalanche's DER (mem_size {MEMORY_BUFFER}, batch {MEMORY_BATCH} + "
        f"{MEMORY_BATCH} replayed) on two synthetic experiences of random 1x28x28 images, "
        f"{settings['epochs']} epochs of {settings['minibatches']} minibatches each ({steps} steps), with "
        f"and without `SparCLPlugin({options})`; {counted(settings['rounds'], 'round')} of one dense "
        "and one SparCL run, each in a fresh process; peak RSS is the process's high-water mark "
        "(`VmHWM`), median over the rounds, with glibc's mmap threshold fixed at 128 KiB "
        "(`MALLOC_MMAP_THRESHOLD_`: freed tensors go back to the system, so the high-water mark "
        "follows the live tensors rather than the allocator's heap).",
        "",
        "| target | result |",
        "|---|---|",
        "| SparCL peak RSS <= dense peak RSS + 1.5x parameter bytes | "
        + memory_verdict(summary["rss_difference_bytes"], summary["rss_budget_bytes"])
        + " |",
        "",
        "| method | peak RSS (MiB) | per round (MiB) | peak RSS before training (MiB) | training time (s) |",
        "|---|---|---|---|---|",
    ]
    for label, row in (("DER", dense), ("DER + SparCL", sparcl)):
        per_round = ", ".join(f"{value / 1024:.1f}" for value in row["peak_rss_kib_per_round"])
        lines.append(
            f"| {label} | {row['peak_rss_kib'] / 1024:.1f} | {per_round} | "
            f"{row['setup_peak_kib'] / 1024:.1f} | {row['train_time_s']:.1f} |"
        )
    lines += [
        "",
        f"Parameters: {mib(summary['parameter_bytes'])} MiB (1.5x: {mib(summary['rss_budget_bytes'])} MiB). "
        f"Peak difference {summary['rss_difference_bytes'] / MIB:+.1f} MiB (per round: {differences} MiB); "
        f"the plugin's own tensors: {mib(summary['plugin_state_bytes'])} MiB. Fewest SparCL events in a "
        f"run: {events['mask_updates']} TDM mask updates, {events['gradient_mask_refreshes']} DGM "
        f"gradient-mask refreshes, {events['ddr_stages']} DDR removal stages.",
    ]
    missing = [name for name, count in events.items() if count == 0]
    if missing:
        lines.append(f"**Not every SparCL event happened** ({', '.join(missing)}): lengthen the runs.")
    return lines


def section_markdown(report: dict[str, Any], machine: str, longer: dict[str, Any] | None = None) -> str:
    """The docs section from a measured report (``measure``'s result): how, then one table per target;
    ``longer``, a saved report at a longer schedule (``LONGER_SCHEDULE``), adds its paragraph."""
    threads = report["threads"] if report["threads"] is not None else "torch's default"
    lines = [
        "## Whole run on Split Fashion-MNIST: wall clock and peak memory",
        "",
        f"Measured on {report['date']}, {machine}, by `{report['command']}`; torch threads per run: "
        f"{threads} (used: {', '.join(str(t) for t in report['threads_used'])}).",
        "",
        "### Training wall clock",
        "",
    ]
    if report.get("wall_clock") is None:
        lines.append("Not measured in this run.")
    else:
        lines += wall_clock_lines(report["wall_clock"])
    lines += ["", "### Peak memory (ResNet-18)", ""]
    if report.get("memory") is None:
        lines.append("Not measured in this run.")
    else:
        lines += memory_lines(report["memory"])
    if longer is not None:
        lines += ["", *longer_schedule_lines(longer)]
    return "\n".join(lines) + "\n"


LONGER_SCHEDULE = ROOT / "docs" / "whole_run_10_epochs.json"
"""The wall-clock measurement at 10 epochs per experience (about 20 minutes a pair on this machine),
written by ``python benchmarks/whole_run.py --parts wall_clock --epochs 10 --seeds 0 --json
docs/whole_run_10_epochs.json`` and shown next to the protocol's 3 epochs by every later section."""


def load_longer_schedule() -> dict[str, Any] | None:
    """The saved longer-schedule report, if one was measured."""
    return json.loads(LONGER_SCHEDULE.read_text()) if LONGER_SCHEDULE.is_file() else None


def longer_schedule_lines(report: dict[str, Any]) -> list[str]:
    """The section's paragraph on a longer schedule, from a saved ``--epochs`` wall-clock report."""
    wall = report["wall_clock"]
    summary, settings = wall["summary"], wall["settings"]
    dense, sparcl = summary["dense"], summary["sparcl"]
    ratio = summary["wall_clock_ratio"]
    return [
        f"### Training wall clock at {counted(settings['epochs'], 'epoch')} per experience",
        "",
        f"Measured on {report['date']} by `{report['command']}` (seeds {settings['seeds']}"
        + (", side by side, one torch thread each" if settings.get("side_by_side") else "")
        + "). DDR removes its 30% in more stages, earlier in the experience, so more of the "
        "iterations go:",
        "",
        "| target | result |",
        "|---|---|",
        f"| SparCL-DER++ 0.75 training wall clock <= {WALL_CLOCK_TARGET:.2f}x dense DER++ | "
        + verdict(ratio <= WALL_CLOCK_TARGET, f"{ratio:.2f}x")
        + " |",
        "",
        "| method | training wall clock (s) | iterations | Class-IL (%) |",
        "|---|---|---|---|",
        f"| DER++ | {dense['train_time_s']:.1f} | {dense['train_iterations']:.0f} | "
        f"{100 * dense['class_il']:.1f} |",
        f"| SparCL-DER++ 0.75 | {sparcl['train_time_s']:.1f} | {sparcl['train_iterations']:.0f} | "
        f"{100 * sparcl['class_il']:.1f} |",
        "",
        f"{iterations_sentence(summary['iterations_ratio'])} Per iteration SparCL took "
        f"{ratio / summary['iterations_ratio']:.2f}x dense's time.",
    ]


# --- measurement and entry points ----------------------------------------------------------------------


def measure(
    seeds: Sequence[int] = (0, 1),
    threads: int | None = None,
    epochs: int | None = None,
    memory_rounds: int = 2,
    parts: tuple[str, ...] = PARTS,
    out_dir: Path = ROOT / "runs" / "whole_run",
    memory_nf: int = 64,
    memory_epochs: int = 3,
    memory_minibatches: int = 10,
    command: str = "python benchmarks/whole_run.py",
    side_by_side: bool = True,
) -> dict[str, Any]:
    """Both measurements (or the ``parts`` asked for): raw per-run records and their summaries."""
    seeds = list(seeds)
    report: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "command": command,
        "threads": threads,
        "wall_clock": None,
        "memory": None,
    }
    used: set[int] = set()
    if "wall_clock" in parts:
        print("whole runs on Split Fashion-MNIST (quick) ...", flush=True)
        rows = wall_clock_runs(seeds, out_dir, threads, epochs, side_by_side)
        settings = {"seeds": seeds, "epochs": rows[0]["epochs"], "side_by_side": side_by_side}
        report["wall_clock"] = {"settings": settings, "rows": rows, "summary": summarise_wall_clock(rows)}
        used |= {row["threads"] for row in rows}
    if "memory" in parts:
        print("peak memory, ResNet-18 DER ...", flush=True)
        rows = memory_runs(memory_rounds, memory_nf, memory_epochs, memory_minibatches, threads)
        settings = {"rounds": memory_rounds, "nf": memory_nf, "epochs": memory_epochs}
        settings["minibatches"] = memory_minibatches
        report["memory"] = {"settings": settings, "rows": rows, "summary": summarise_memory(rows)}
        used |= {row["threads"] for row in rows}
    report["threads_used"] = sorted(used)
    return report


def whole_run_section(machine: str, **options: Any) -> str:
    """Measure (``options`` as for ``measure``) and return the docs section, for ``benchmarks/run.py``."""
    return section_markdown(measure(**options), machine)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs per experience (default: the config's)"
    )
    parser.add_argument("--memory-rounds", type=int, default=2, help="dense/SparCL pairs of memory runs")
    parser.add_argument("--memory-nf", type=int, default=64, help="ResNet-18 width of the memory runs")
    parser.add_argument("--memory-epochs", type=int, default=3, help="epochs per experience, memory runs")
    parser.add_argument(
        "--memory-minibatches", type=int, default=10, help="minibatches per epoch, memory runs"
    )
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument(
        "--alternate",
        action="store_true",
        help="wall clock: run dense and SparCL one after the other (default: side by side, 1 thread each)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "whole_run", help="run folders go here")
    parser.add_argument("--json", type=Path, help="write the raw results (a child: its one record) here")
    parser.add_argument("--docs", action="store_true", help="write the section of docs/benchmarks.md")
    child = parser.add_argument_group("one child run (used by the script itself)")
    child.add_argument("--one", type=Path, metavar="CONFIG", help="run this config once and exit")
    child.add_argument("--seed", type=int, default=0)
    child.add_argument("--memory-one", choices=METHODS, help="one ResNet-18 memory run and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one is not None or args.memory_one is not None:
        if args.one is not None:
            record = one_quick_run(args.one, args.seed, args.out, args.threads, args.epochs)
        else:
            record = one_memory_run(
                args.memory_one, args.memory_nf, args.memory_epochs, args.memory_minibatches, args.threads
            )
        if args.json is None:
            print(json.dumps(record, indent=2))
        else:
            args.json.write_text(json.dumps(record, indent=2) + "\n")
        return
    command = "python benchmarks/whole_run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = measure(
        args.seeds,
        args.threads,
        args.epochs,
        args.memory_rounds,
        tuple(args.parts),
        args.out,
        args.memory_nf,
        args.memory_epochs,
        args.memory_minibatches,
        command.strip(),
        side_by_side=not args.alternate,
    )
    # imported after the children ran: this process stays small while they measure their memory
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import machine_description

    from avalanche_sparcl.experiments.report import replace_section

    report["machine"] = machine_description()
    longer = load_longer_schedule() if args.epochs is None else None
    content = section_markdown(report, report["machine"], longer)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.docs:
        replace_section(DOCS, WHOLE_RUN_SECTION, content)
    print(content)


if __name__ == "__main__":
    main()
