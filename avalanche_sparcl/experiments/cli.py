"""``sparcl-bench``: run experiment configs and report on the runs.

    sparcl-bench run CONFIG.yaml [CONFIG ...] [--out runs/] [--seeds 0 1 2] [--device cpu|cuda]
                     [--quiet] [--smoke] [--restart] [--nproc N] [--set KEY=VALUE ...]
    sparcl-bench report RUNS_DIR [--out report/]
    sparcl-bench export RUN_DIR --out DIR [--onnx]
    sparcl-bench --version

User errors (a bad config or profile, missing data, no CUDA, ``--out`` not a folder) print one line
on stderr and exit with code 2, before any training starts. A run folder with a checkpoint of the same
run (equal fingerprint in run.json) resumes from it; a finished run of the same run (its results.json)
is not rerun; ``--restart`` starts such runs over. A folder holding another run's checkpoint or
results, a damaged checkpoint or results.json, a folder another process is running, and any file
system error (full disk, no permission) also exit with code 2 and one line naming the file or folder.
Training that turns non-finite stops with exit code 1 and a message naming the experience, epoch and
iteration.

``--set section.key=value`` replaces a value in every config of the command (checked as in the file);
the run's config and fingerprint are the result. Every run folder of the command is computed first:
two configs that would share one exit with code 2 before anything trains. Each finished run prints
one line with ``[done/total, ETA ...]`` before its folder. Avalanche and the run machinery are
imported by the commands, not by this module, so ``--help`` and ``--version`` answer at once.

``--nproc N`` trains each run data-parallel in N processes on this machine: the command claims and
checks its run folders, then starts itself again under torch's launcher (``launch``: torch's elastic
agent, ``--standalone --nproc_per_node N``); each process joins the group (gloo on CPU, NCCL on CUDA,
one GPU per process) and rank 0 alone writes run folders, logs, checkpoints and results.json. The
command waits for the launcher and forwards SIGINT, SIGTERM and SIGHUP to it, and the launcher and
ranks end when their parent does, so no process of the run outlives the command. Errors the ranks
find are printed once, with the exit codes above; a collective waits at most
``SPARCL_COLLECTIVE_TIMEOUT_S`` seconds (default 300) for the other ranks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avalanche_sparcl import __version__
from avalanche_sparcl.console import hide_avalanche_deprecation_notices
from avalanche_sparcl.settings import OPTIONS

if TYPE_CHECKING:
    from avalanche_sparcl.experiments.config import ExperimentConfig

LAZY_NAMES = {
    "DatasetFormatError": "avalanche_sparcl.benchmarks",
    "DatasetNotFoundError": "avalanche_sparcl.benchmarks",
    "CheckpointError": "avalanche_sparcl.checkpointing",
    "ConfigError": "avalanche_sparcl.experiments.config",
    "load_config": "avalanche_sparcl.experiments.config",
    "RunOptions": "avalanche_sparcl.experiments.options",
    "RunFolderError": "avalanche_sparcl.experiments.run_folder",
    "run_directory": "avalanche_sparcl.experiments.run_folder",
    "run_experiment": "avalanche_sparcl.experiments.runner",
    "NonFiniteTrainingError": "avalanche_sparcl.plugins.guard",
}
"""Names this module offered before its imports moved into the commands (Avalanche takes seconds to
import, which ``--help`` should not wait for); still importable from here, on first use."""


def __getattr__(name: str) -> Any:
    if name in LAZY_NAMES:
        return getattr(importlib.import_module(LAZY_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


USER_ERROR = 2
TRAINING_FAILED = 1
INTERRUPTED = 130
"""128 + SIGINT, what a shell reports for a command stopped with Ctrl-C."""


def seed_value(text: str) -> int:
    """An argparse type: an integer seed in the range every random generator accepts."""
    seed = OPTIONS["seed"].range
    try:
        return seed.check("seed", int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be {seed.describe()}, got {text!r}") from None


def process_count(text: str) -> int:
    """An argparse type: a number of processes, at least 1."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"--nproc must be an integer >= 1, got {text!r}")
    return count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparcl-bench", description="SparCL experiments on Avalanche.")
    parser.add_argument("--version", action="version", version=f"sparcl-bench {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and evaluate configs, one folder per config and seed")
    run.add_argument("configs", nargs="+", type=Path, metavar="CONFIG", help="experiment YAML files")
    run.add_argument("--out", type=Path, default=Path("runs"), help="output folder (default: runs)")
    run.add_argument("--seeds", type=seed_value, nargs="+", default=[0], help="seeds to run (default: 0)")
    run.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    run.add_argument("--quiet", action="store_true", help="no progress bars, one line per finished run")
    run.add_argument(
        "--smoke",
        action="store_true",
        help="random tensors shaped like the benchmark, tiny model width, a few iterations",
    )
    run.add_argument(
        "--restart", action="store_true", help="ignore checkpoints and finished results; start over"
    )
    run.add_argument(
        "--nproc",
        type=process_count,
        default=1,
        help="data-parallel processes per run, through torch.distributed.run (default: 1)",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="replace a config value in every config, e.g. --set training.epochs=1 sparcl.sparsity=0.9 "
        "(checked as in the file; part of the run's config and fingerprint)",
    )
    report = commands.add_parser("report", help="Markdown table and plots from the runs under RUNS_DIR")
    report.add_argument("runs_dir", type=Path, metavar="RUNS_DIR")
    report.add_argument("--out", type=Path, default=Path("report"), help="output folder (default: report)")
    export = commands.add_parser(
        "export", help="the trained model of a finished run as a compact sparse file (and ONNX)"
    )
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run's folder")
    export.add_argument("--out", type=Path, required=True, help="folder for model.sparse (and model.onnx)")
    export.add_argument(
        "--onnx",
        action="store_true",
        help='also write model.onnx (needs the export extra: pip install ".[export]")',
    )
    return parser


def check_runnable(configs: Sequence[ExperimentConfig], device: str, smoke: bool, out: Path) -> None:
    """Fail before training if the device is missing, ``out`` is a file, a profile does not fit its
    model or a benchmark's data is absent."""
    from avalanche_sparcl.benchmarks import (
        DatasetFormatError,
        DatasetNotFoundError,
        check_dataset_files,
        check_fmnist_files,
    )
    from avalanche_sparcl.experiments.build import check_profile_fits
    from avalanche_sparcl.experiments.config import BENCHMARK_SHAPES, ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    for config in configs:
        check_profile_fits(config, smoke)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: CUDA is not available on this machine; use --device cpu")
    if smoke:
        return
    for config in configs:
        benchmark = config.benchmark
        try:
            if benchmark["name"] == "split_fmnist":
                check_fmnist_files(benchmark["dataset_root"])
            elif BENCHMARK_SHAPES[benchmark["name"]].dataset_root == "required":
                check_dataset_files(benchmark["name"], benchmark["dataset_root"])
        except (DatasetNotFoundError, DatasetFormatError) as error:
            raise ConfigError(f"{config.path}: {error}") from None


def run_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from avalanche_sparcl.experiments.config_files import load_raw

    for path in args.configs:  # every file read and its YAML checked before torch and Avalanche load
        load_raw(Path(path))
    from avalanche_sparcl.distributed import is_distributed, rank
    from avalanche_sparcl.experiments.config import load_config, parse_override
    from avalanche_sparcl.experiments.grid import GridProgress, grid_runs, trains
    from avalanche_sparcl.experiments.options import RunOptions
    from avalanche_sparcl.experiments.runner import run_experiment

    overrides = [parse_override(text) for text in args.overrides]
    configs = [load_config(path, overrides) for path in args.configs]
    runs = grid_runs(configs, args.seeds, args.out, args.smoke)  # no two runs in one folder
    check_runnable(configs, args.device, args.smoke, args.out)
    check_processes(args.nproc, args.device)
    options = RunOptions(
        out_dir=args.out, device=args.device, quiet=args.quiet, smoke=args.smoke, restart=args.restart
    )
    if args.nproc > 1 and LAUNCHED_RANK not in os.environ:
        from avalanche_sparcl.experiments.launch import launch_processes

        return launch_processes(args.nproc, argv, runs, options)
    if LAUNCHED_RANK in os.environ and not is_distributed():
        from avalanche_sparcl.experiments.launch import join_process_group

        join_process_group(args.device)
    progress = GridProgress([trains(run, args.restart) for run in runs])
    for run in runs:
        progress.start_run()
        results = run_experiment(run.config, run.seed, options)
        done = progress.finish_run()
        if rank() != 0:
            continue  # one line per run, from the process that wrote it
        print(
            f"{results['benchmark']} {run.config.name} seed {run.seed}: "
            f"Class-IL {100 * results['class_il_accuracy']:.2f}%, "
            f"Task-IL {100 * results['task_il_accuracy']:.2f}%, "
            f"training FLOPs {results['train_flops']:.3e}, {results['wall_time_s']:.1f} s {done} "
            f"-> {run.folder}",
            flush=True,
        )
    return 0


def check_processes(nproc: int, device: str) -> None:
    """NCCL runs one process per GPU: refuse more processes than GPUs before launching any."""
    if device != "cuda" or nproc == 1:
        return
    import torch

    from avalanche_sparcl.experiments.config import ConfigError

    if torch.cuda.device_count() < nproc:
        raise ConfigError(
            f"--nproc {nproc} --device cuda needs one GPU per process; this machine has "
            f"{torch.cuda.device_count()}"
        )


LAUNCHED_RANK = "LOCAL_RANK"
"""Set by torch's launcher in every process it starts."""


def report_command(args: argparse.Namespace) -> int:
    from avalanche_sparcl.experiments.report import write_report

    report = write_report(args.runs_dir, args.out)
    print(report.table)
    print()
    print(f"report: {report.markdown_path}")
    print(f"accuracy vs training FLOPs: {report.accuracy_vs_flops_path}")
    if report.unfinished_runs:
        print(f"unfinished runs, not in the table ({len(report.unfinished_runs)}):")
        for run_dir in report.unfinished_runs:
            print(f"  {run_dir}")
    return 0


def describe_os_error(error: OSError) -> str:
    """'<file>: <reason>' (e.g. 'runs/x/checkpoint.pkl: No space left on device'), on one line."""
    reason = error.strerror or str(error) or type(error).__name__
    if error.filename is None:
        return reason
    if error.filename2 is not None:
        return f"{error.filename} -> {error.filename2}: {reason}"
    return f"{error.filename}: {reason}"


def export_command(args: argparse.Namespace) -> int:
    from avalanche_sparcl.experiments.export_run import export_run

    print(export_run(args.run_dir, args.out, onnx=args.onnx).summary())
    return 0


USER_ERROR_CLASSES = {
    "avalanche_sparcl.experiments.config_files": ("ConfigError",),
    "avalanche_sparcl.benchmarks": ("DatasetNotFoundError", "DatasetFormatError"),
    "avalanche_sparcl.experiments.run_folder": ("RunFolderError",),
}
"""Exceptions printed as they are (exit code 2), by the module that defines them."""


def loaded_classes(names: dict[str, tuple[str, ...]]) -> tuple[type, ...]:
    """The classes named, from those of their modules that are loaded."""
    found = []
    for module_name, class_names in names.items():
        module = sys.modules.get(module_name)
        if module is not None:
            found += [getattr(module, name) for name in class_names]
    return tuple(found)


def user_error_message(error: Exception) -> str | None:
    """The one line a user error is reported with (exit code 2), or None for any other exception.

    The error classes are looked up among the modules already loaded (an error of a class exists only
    once its module is), so a config refused before torch is imported exits without importing it.
    """
    if isinstance(error, loaded_classes(USER_ERROR_CLASSES)):
        return str(error)
    if isinstance(error, loaded_classes({"avalanche_sparcl.checkpointing": ("CheckpointError",)})):
        return f"{error}; start the run over with --restart"
    if isinstance(error, OSError):
        return describe_os_error(error)
    return None


def interrupted_message(command: str) -> str:
    """The line printed on Ctrl-C: a run keeps its last checkpoint, and the same command resumes it."""
    if command == "run":
        return "sparcl-bench: interrupted; the last checkpoint is kept (run the same command to resume)"
    return "sparcl-bench: interrupted"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sparcl-bench``; returns the exit code."""
    hide_avalanche_deprecation_notices()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return run_command(args, argv)
        if args.command == "export":
            return export_command(args)
        return report_command(args)
    except KeyboardInterrupt:
        # Ctrl-C is the user's choice, not a crash: one line, no traceback, the shell's code for SIGINT
        print(interrupted_message(args.command), file=sys.stderr)
        return INTERRUPTED
    except Exception as error:
        guard = sys.modules.get("avalanche_sparcl.plugins.guard")  # loaded by any run that trained
        if guard is not None and isinstance(error, guard.NonFiniteTrainingError):
            print(f"sparcl-bench: training failed: {error}; the last checkpoint is kept", file=sys.stderr)
            return TRAINING_FAILED
        message = user_error_message(error)
        if message is None:
            raise
        print(f"sparcl-bench: error: {message}", file=sys.stderr)
        return USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
