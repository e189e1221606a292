"""DDR against no DDR on Split Digits: training iterations and Class-IL accuracy for DER, ER and ER_ACE.

    .venv/bin/python experiments/ddr_comparison.py            # 10 epochs, removal_ratio 0.3, seed 0
    .venv/bin/python experiments/ddr_comparison.py --seeds 0 1 2

Prints a Markdown table: per strategy, the training iterations and the final Class-IL accuracy over
the whole test stream, with and without DDRPlugin (everything else identical, same seed).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from avalanche.training import DER, ER_ACE, Naive
from avalanche.training.plugins import ReplayPlugin
from torch import nn

from avalanche_sparcl import DDRPlugin
from avalanche_sparcl.benchmarks import split_digits
from avalanche_sparcl.models import SmallCNN

STRATEGIES = ("der", "er", "er_ace")


def build_strategy(name: str, model: nn.Module, plugins: list, args: argparse.Namespace):
    """DER(++), ER (Naive + ReplayPlugin) or ER_ACE with the comparison's shared settings."""
    common = dict(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=args.lr),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=args.batch_size,
        train_epochs=args.epochs,
        eval_mb_size=512,
        evaluator=None,
    )
    if name == "der":
        return DER(mem_size=args.mem_size, batch_size_mem=args.batch_size, plugins=plugins, **common)
    if name == "er":
        return Naive(plugins=[*plugins, ReplayPlugin(mem_size=args.mem_size)], **common)
    if name == "er_ace":
        return ER_ACE(mem_size=args.mem_size, batch_size_mem=args.batch_size, plugins=plugins, **common)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")


@torch.no_grad()
def class_il_accuracy(model: nn.Module, test_stream) -> float:
    """Accuracy over every test example seen so far, all logits (single head, no task label)."""
    model.eval()
    correct = total = 0
    for experience in test_stream:
        loader = torch.utils.data.DataLoader(experience.dataset.eval(), batch_size=512)
        for inputs, labels, *_ in loader:
            correct += int((model(inputs).argmax(dim=1) == labels).sum())
            total += len(labels)
    return correct / total


def run(name: str, use_ddr: bool, seed: int, args: argparse.Namespace) -> dict:
    """Train one strategy on Split Digits; return its iterations, accuracy and wall time."""
    torch.manual_seed(seed)
    benchmark = split_digits(n_experiences=5, seed=seed)
    model = SmallCNN(width=args.width)
    plugins = [DDRPlugin(removal_ratio=args.removal_ratio)] if use_ddr else []
    strategy = build_strategy(name, model, plugins, args)
    start = time.perf_counter()
    for experience in benchmark.train_stream:
        strategy.train(experience)
    return {
        "iterations": strategy.clock.train_iterations,
        "accuracy": class_il_accuracy(model, benchmark.test_stream),
        "seconds": time.perf_counter() - start,
    }


def compare(args: argparse.Namespace) -> list[str]:
    """Markdown table rows of the comparison (means over the seeds)."""
    rows = [
        "| strategy | iterations (no DDR) | iterations (DDR) | ratio | Class-IL acc. (no DDR) "
        "| Class-IL acc. (DDR) |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(rows), flush=True)
    for name in args.strategies:
        results = {
            use_ddr: [run(name, use_ddr, seed, args) for seed in args.seeds] for use_ddr in (False, True)
        }
        mean = {
            use_ddr: {key: sum(r[key] for r in runs) / len(runs) for key in ("iterations", "accuracy")}
            for use_ddr, runs in results.items()
        }
        rows.append(
            f"| {name} | {mean[False]['iterations']:.0f} | {mean[True]['iterations']:.0f} "
            f"| {mean[True]['iterations'] / mean[False]['iterations']:.3f} "
            f"| {100 * mean[False]['accuracy']:.2f} | {100 * mean[True]['accuracy']:.2f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--removal-ratio", type=float, default=0.3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mem-size", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--width", type=int, default=32, help="SmallCNN width")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Call to deprecated function update")  # Avalanche's own
    print(
        f"Split Digits, 5 experiences, {args.epochs} epochs, removal_ratio {args.removal_ratio}, "
        f"batch {args.batch_size}, buffer {args.mem_size}, seeds {args.seeds}"
    )
    compare(args)


if __name__ == "__main__":
    main()
