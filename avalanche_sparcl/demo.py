"""`make demo`: DER++ on Split Digits, dense against sparse, on the CPU in about a minute.

Prints the final Class-IL accuracy (mean over the test stream, after the last experience) and the
weight sparsity of the masked layers, for each method and seed.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training import DER
from avalanche.training.plugins import EvaluationPlugin

from avalanche_sparcl.benchmarks import split_digits
from avalanche_sparcl.models import SmallCNN
from avalanche_sparcl.plugins import TDMPlugin

CLASS_IL_ACCURACY = "Top1_Acc_Stream/eval_phase/test_stream/Task000"


@dataclass
class RunResult:
    """Final Class-IL accuracy and masked-layer sparsity of one run."""

    method: str
    seed: int
    class_il_accuracy: float
    sparsity: float


def run_der_on_digits(
    method: str,
    make_plugins: Callable[[], list[SupervisedPlugin]],
    seed: int,
    epochs: int = 10,
    mem_size: int = 200,
) -> RunResult:
    """Train DER++ (paper settings: SGD lr 0.03, batch 32, alpha 0.1, beta 0.5) over 5 experiences."""
    torch.manual_seed(seed)
    benchmark = split_digits(n_experiences=5, seed=seed)
    model = SmallCNN()
    plugins = make_plugins()
    evaluator = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
    strategy = DER(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.03),
        mem_size=mem_size,
        alpha=0.1,
        beta=0.5,
        train_mb_size=32,
        train_epochs=epochs,
        eval_mb_size=512,
        plugins=plugins,
        evaluator=evaluator,
    )
    for experience in benchmark.train_stream:
        strategy.train(experience)
    accuracy = strategy.eval(benchmark.test_stream)[CLASS_IL_ACCURACY]
    masks = next((plugin.masks for plugin in plugins if getattr(plugin, "masks", None)), {})
    kept = sum(int(mask.sum()) for mask in masks.values())
    total = sum(mask.numel() for mask in masks.values())
    return RunResult(method, seed, accuracy, 1 - kept / total if total else 0.0)


METHODS: dict[str, Callable[[], list[SupervisedPlugin]]] = {
    "DER++ dense": lambda: [],
    "DER++ + TDM 0.90": lambda: [TDMPlugin(sparsity=0.9)],
}


def summarise(results: Sequence[RunResult]) -> str:
    """A Markdown table: mean +- std of Class-IL accuracy over seeds, and sparsity."""
    lines = [
        "| method | Class-IL accuracy (%) | masked-layer sparsity | seeds |",
        "|---|---|---|---|",
    ]
    for method in dict.fromkeys(r.method for r in results):
        runs = [r for r in results if r.method == method]
        accuracies = [100 * r.class_il_accuracy for r in runs]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        lines.append(
            f"| {method} | {statistics.mean(accuracies):.1f} +- {spread:.1f} | "
            f"{runs[0].sparsity:.3f} | {len(runs)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10, help="epochs per experience")
    args = parser.parse_args(argv)
    results = []
    for method, make_plugins in METHODS.items():
        for seed in args.seeds:
            result = run_der_on_digits(method, make_plugins, seed, epochs=args.epochs)
            print(f"{method:<20} seed {seed}: Class-IL {100 * result.class_il_accuracy:.1f}%", flush=True)
            results.append(result)
    print()
    print(f"Split Digits, 5 experiences, SmallCNN, {args.epochs} epochs per experience, buffer 200")
    print(summarise(results))


if __name__ == "__main__":
    main()
