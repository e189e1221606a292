"""Where SparCL's own time goes in a training step: time inside each plugin hook and step hook.

Trains the same strategy with SparCLPlugin for a few epochs and times every call the plugin makes
(Avalanche hooks of each part, and the optimizer step hooks of TDM and DGM), next to the whole step,
on two models: ResNet-18 (paper variant) and a CNN with a wide hidden Linear layer.

    python benchmarks/plugin_profile.py [--device cpu] [--steps 60] [--docs]

``--docs`` rewrites the "Where the plugin's time goes" section of docs/benchmarks.md; `make bench`
regenerates the same section with the rest of the page.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from avalanche_sparcl import SparCLPlugin
from avalanche_sparcl.benchmarks import tensor_benchmark
from avalanche_sparcl.experiments.report import replace_section
from avalanche_sparcl.models import ResNet18

sys.path.insert(0, str(Path(__file__).resolve().parent))
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


class WideLinearCNN(nn.Module):
    """Conv 32/64/128 and a 6272x256 Linear layer on 28x28 images (the default masks conv2, conv3)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.hidden = nn.Linear(128 * 7 * 7, 256)
        self.classifier = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.hidden(torch.flatten(self.features(x), 1))))


class StepClock(SupervisedPlugin):
    """Wall time of each whole training step (before_training_iteration to the next one)."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        self.started: float | None = None
        self.steps: list[float] = []

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        self.started = None

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        now = self.now()
        if self.started is not None:
            self.steps.append(now - self.started)
        self.started = now


def timed(function: Callable, name: str, record: Callable[[str, float], None], clock: StepClock) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = clock.now()
        try:
            return function(*args, **kwargs)
        finally:
            record(name, clock.now() - started)

    return wrapper


PER_STEP_HOOKS = ("before_training_iteration", "before_forward", "after_forward", "after_backward")


def wrap_per_step_calls(
    sparcl: SparCLPlugin, wrap: Callable[[Callable, SupervisedPlugin, str], Callable]
) -> None:
    """Replace each call SparCL's parts make in every training step, their Avalanche per-step hooks
    and TDM's and DGM's optimizer step hooks, by ``wrap(call, part, hook)``; ``hook`` is the hook's
    name, or "before step" / "after step" for the optimizer step hooks."""
    for part in sparcl.parts:
        for hook in PER_STEP_HOOKS:
            if getattr(type(part), hook) is not getattr(SupervisedPlugin, hook):
                setattr(part, hook, wrap(getattr(part, hook), part, hook))
        engine = getattr(part, "engine", None)
        hooks = getattr(engine, "step_hooks", None)
        if hooks is not None:
            hooks.before_step = wrap(hooks.before_step, part, "before step")
            if hooks.after_step is not None:
                hooks.after_step = wrap(hooks.after_step, part, "after step")


def instrument(sparcl: SparCLPlugin, record: Callable[[str, float], None], clock: Any) -> None:
    """Time every per-step call of every part; each call's seconds go to ``record(name, seconds)``.
    ``clock.now()`` reads the time."""

    def wrap(call: Callable, part: SupervisedPlugin, hook: str) -> Callable:
        label = type(part).__name__.removesuffix("Plugin")
        name = f"{label} {hook.replace('step', 'optimizer step')}" if " " in hook else f"{label}.{hook}"
        return timed(call, name, record, clock)

    wrap_per_step_calls(sparcl, wrap)


def profile(model_name: str, device: torch.device, steps: int) -> tuple[float, dict[str, float]]:
    """Median whole-step time and each hook's mean time per step, in milliseconds."""
    torch.manual_seed(0)
    if model_name == "resnet18":
        model, shape = ResNet18(num_classes=10, nf=16), (3, 32, 32)
    else:
        model, shape = WideLinearCNN(), (1, 28, 28)
    images = torch.randn(steps * 32, *shape)
    labels = torch.arange(10).repeat(steps * 32 // 10 + 1)[: steps * 32]
    benchmark = tensor_benchmark((images, labels), (images[:32], labels[:32]), 1, 0)
    # DDR and DGM forced on: the run is shorter than the experiences it profiles
    sparcl = SparCLPlugin(
        sparsity=0.75,
        removal_ratio=0.3,
        gradient_sparsity=0.2,
        min_experience_steps=0,
        min_gradient_masking_steps=0,
    )
    clock = StepClock(device)
    totals: dict[str, list[float]] = defaultdict(list)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.03),
        train_mb_size=32,
        train_epochs=2,
        device=device,
        plugins=[clock, sparcl],
        evaluator=EvaluationPlugin(loggers=[]),
    )
    instrument(sparcl, lambda name, seconds: totals[name].append(seconds), clock)
    strategy.train(benchmark.train_stream[0])
    n_steps = 2 * steps
    return 1000 * statistics.median(clock.steps), {
        name: 1000 * sum(times) / n_steps for name, times in sorted(totals.items())
    }


def profile_table(device: str = "cpu", steps: int = 60) -> str:
    """Markdown: per model, the whole step and the plugin's time per step in each hook."""
    lines = []
    models = (("resnet18", "ResNet-18 (nf 16), 3x32x32"), ("wide", "CNN + 6272x256 Linear, 1x28x28"))
    for model_name, label in models:
        step_ms, hooks = profile(model_name, torch.device(device), steps)
        plugin_ms = sum(hooks.values())
        lines += [
            f"{label}, batch 32, SparCLPlugin(0.75, removal_ratio=0.3, gradient_sparsity=0.2, "
            "min_experience_steps=0, min_gradient_masking_steps=0), plain SGD; "
            f"median step {step_ms:.1f} ms, plugin {plugin_ms:.2f} ms per step "
            f"({100 * plugin_ms / step_ms:.1f}% of the step; mask updates and refreshes included):",
            "",
            "| where | ms per step | share of the step |",
            "|---|---|---|",
            *[f"| {name} | {ms:.3f} | {100 * ms / step_ms:.1f}% |" for name, ms in hooks.items()],
            "",
        ]
    return "\n".join(lines)


PROFILE_SECTION = "plugin_profile"


def profile_section(machine: str, device: str = "cpu", steps: int = 60) -> str:
    """The docs section: how it was measured, then the tables."""
    return "\n".join(
        [
            "## Where the plugin's time goes (CPU)",
            "",
            f"Measured on {datetime.date.today().isoformat()}, {machine}, by `python "
            "benchmarks/plugin_profile.py`: every call SparCL's parts make in a training step (their "
            "Avalanche hooks and the optimizer step hooks) timed inside one training run of 2 epochs "
            f"of {steps} minibatches, averaged over all steps (TDM's mask updates and DGM's refreshes "
            "included), next to the median whole step. `TDM.before_training_iteration` is the mask "
            "updates, `DGM before optimizer step` the gradient masking with its top-k refreshes, "
            "`TDM.after_backward` the importance accumulation.",
            "",
            profile_table(device, steps),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=60, help="minibatches per epoch (2 epochs)")
    parser.add_argument("--docs", action="store_true", help="write the section of docs/benchmarks.md")
    args = parser.parse_args()
    from run import machine_description

    content = profile_section(machine_description(), args.device, args.steps)
    if args.docs:
        replace_section(DOCS, PROFILE_SECTION, content)
    print(content)


if __name__ == "__main__":
    main()
