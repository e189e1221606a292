"""`make demo`: the Split Digits comparison on the CPU in a few minutes.

Runs the six quick configs in experiments/configs/split_digits/ (dense ER and DER++, SparCL-ER and
SparCL-DER++ at weight sparsity 0.75 and 0.90; 5 experiences, 10 epochs each, buffer 200) for each
seed through the same runner as ``sparcl-bench run``, then prints the report's table (Class-IL,
Task-IL, training FLOPs and their ratio to the dense run) and the path of the accuracy-vs-FLOPs plot.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from avalanche_sparcl.console import hide_avalanche_deprecation_notices
from avalanche_sparcl.experiments.cli import USER_ERROR, user_error_message
from avalanche_sparcl.experiments.config import load_config
from avalanche_sparcl.experiments.report import write_report
from avalanche_sparcl.experiments.runner import RunOptions, run_experiment

DIGITS_CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "split_digits"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; user errors (a run folder of another version, a full disk) exit with 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="runs and report go here")
    parser.add_argument("--restart", action="store_true", help="start finished or interrupted runs over")
    args = parser.parse_args(argv)
    hide_avalanche_deprecation_notices()
    try:
        run_demo(args)
    except Exception as error:
        message = user_error_message(error)
        if message is None:
            raise
        print(f"demo: error: {message}", file=sys.stderr)
        return USER_ERROR
    return 0


def run_demo(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    configs = [load_config(path) for path in sorted(DIGITS_CONFIGS.glob("*.yaml"))]
    options = RunOptions(out_dir=args.out / "runs", quiet=True, restart=args.restart)
    for config in configs:
        for seed in args.seeds:
            results = run_experiment(config, seed, options)
            print(
                f"{results['method']:<20} seed {seed}: Class-IL {100 * results['class_il_accuracy']:5.1f}%  "
                f"Task-IL {100 * results['task_il_accuracy']:5.1f}%  ({results['wall_time_s']:.0f} s)",
                flush=True,
            )
    report = write_report(args.out / "runs", args.out / "report")
    print()
    print(f"Split Digits, 5 experiences, SmallCNN, 10 epochs per experience, buffer 200, seeds {args.seeds}")
    print(report.table)
    print()
    print(f"accuracy vs training FLOPs plot: {report.accuracy_vs_flops_path}")
    print(f"full report: {report.markdown_path}")
    print(f"({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    sys.exit(main())
