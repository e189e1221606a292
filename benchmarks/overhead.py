"""What SparCLPlugin itself costs per training step, and how much state it keeps.

Times every training iteration of the same strategy with and without the plugin (batch 32, random
images; ResNet-18 of the paper on 3x32x32, or ``--model wide``: a CNN with a 6272x256 Linear layer on
1x28x28), alternating the two so that both see the same machine load, and splits the plugin's steps
into ordinary ones, gradient-mask refreshes and TDM mask updates.

    python benchmarks/overhead.py --device cpu --nf 16
    python benchmarks/overhead.py --device cpu --model wide
    python benchmarks/overhead.py --device cuda --nf 64 --json docs/benchmarks_gpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin

from avalanche_sparcl import SparCLPlugin
from avalanche_sparcl.benchmarks import tensor_benchmark
from avalanche_sparcl.models import ResNet18

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plugin_profile import WideLinearCNN, instrument  # noqa: E402

STEP_KINDS = ("ordinary", "CWI window", "gradient-mask refresh", "mask update")
"""SparCL steps by what the plugin does in them: nothing but masking the gradients (ordinary), that
plus CWI's accumulation (the importance_window steps before a mask update), a DGM refresh, a TDM
mask update (with its refresh)."""
MODEL_LABELS = {"resnet18": "ResNet18(nf={nf})", "wide": "CNN + 6272x256 Linear"}


class StepTimer(SupervisedPlugin):
    """Wall time of each training iteration, from one iteration's start to the next one's."""

    def __init__(self, sparcl: SparCLPlugin | None, device: torch.device):
        super().__init__()
        self.sparcl = sparcl
        self.device = device
        self.steps: list[tuple[str, float]] = []
        self.plugin_times: list[tuple[str, float]] = []  # seconds inside SparCL's calls, per step
        self.plugin_seconds = 0.0
        self._started: float | None = None
        self._kind = "ordinary"
        self._mask_updates = 0

    def add_plugin_time(self, _name: str, seconds: float) -> None:
        self.plugin_seconds += seconds

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        self._started = None

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        now = self.now()
        if self._started is not None:
            self.steps.append((self._kind, now - self._started))
            self.plugin_times.append((self._kind, self.plugin_seconds))
        self._started = now
        self.plugin_seconds = 0.0
        self._kind = "ordinary"

    def after_backward(self, strategy: Any, **kwargs: Any) -> None:
        """Classify the step (this plugin runs before SparCL's own after_backward)."""
        if self.sparcl is None:
            return
        dynamic = self.sparcl.tdm.dynamic_sparsity
        if len(dynamic.history) != self._mask_updates:
            self._kind = "mask update"
            self._mask_updates = len(dynamic.history)
        elif self.sparcl.dgm.gradient_masking.iterations % self.sparcl.dgm.refresh_every == 0:
            # DGM refreshes at this step's optimizer step, which comes after backward
            self._kind = "gradient-mask refresh"
        elif dynamic.observing:
            self._kind = "CWI window"


def synthetic_benchmark(n_train: int, seed: int = 0, shape: tuple[int, ...] = (3, 32, 32)):
    """Two experiences of random images (5 classes each), 32x32 RGB unless ``shape`` says otherwise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat(n_train // 10 + 1)[:n_train]
    images = torch.randn(n_train, *shape, generator=generator)
    return tensor_benchmark((images, labels), (images, labels), 2, seed)


def plugin_state_bytes(root: Any) -> int:
    """Bytes of the tensors a plugin keeps, parameters and data sets excluded."""
    seen: set[int] = set()
    total = 0

    def walk(value: Any) -> None:
        nonlocal total
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, torch.nn.Parameter):
            return
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple, set)):
            for item in value:
                walk(item)
        elif type(value).__module__.startswith("avalanche_sparcl") and hasattr(value, "__dict__"):
            for name, item in vars(value).items():
                if name != "full_dataset":  # the experience's data, not plugin state
                    walk(item)

    walk(root)
    return total


def time_run(with_plugin: bool, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One training run over the benchmark's first experience; per-step times by kind."""
    torch.manual_seed(0)
    if args.model == "wide":
        model, shape = WideLinearCNN(), (1, 28, 28)
    else:
        model, shape = ResNet18(num_classes=10, nf=args.nf), (3, 32, 32)
    # DDR and DGM forced on: the run is shorter than the experiences it measures the cost of
    sparcl = (
        SparCLPlugin(
            sparsity=0.75,
            update_every=args.update_every,
            min_experience_steps=0,
            min_gradient_masking_steps=0,
        )
        if with_plugin
        else None
    )
    timer = StepTimer(sparcl, device)
    if sparcl is not None and device.type == "cpu":  # on a GPU timing each call would synchronise
        instrument(sparcl, timer.add_plugin_time, timer)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.03),
        train_mb_size=32,
        train_epochs=args.epochs,
        device=device,
        plugins=[timer] + ([sparcl] if sparcl else []),
        evaluator=EvaluationPlugin(loggers=[]),
    )
    strategy.train(synthetic_benchmark(args.samples, shape=shape).train_stream[0])
    result: dict[str, Any] = {"steps": timer.steps, "plugin_times": timer.plugin_times}
    result["parameter_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    result["state_bytes"] = plugin_state_bytes(sparcl) if sparcl else 0
    if device.type == "cuda":
        result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


def kind_key(kind: str) -> str:
    """'CWI window' -> 'cwi_window': the step kind in result keys."""
    return kind.lower().replace(" ", "_").replace("-", "_")


def median_of(steps: Iterable[tuple[str, float]], kind: str) -> float | None:
    times = [seconds for step_kind, seconds in steps if step_kind == kind]
    return statistics.median(times) if times else None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Alternate runs without and with the plugin; report medians per step kind."""
    device = torch.device(args.device)
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    time_run(True, args, device)  # warm-up: allocator, kernels, lazy imports
    for _ in range(args.rounds):
        for with_plugin in (False, True):
            runs[with_plugin].append(time_run(with_plugin, args, device))
    dense_steps = [step for run in runs[False] for step in run["steps"]]
    sparse_steps = [step for run in runs[True] for step in run["steps"]]
    dense = median_of(dense_steps, "ordinary")
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "model": MODEL_LABELS[args.model].format(nf=args.nf),
        "batch_size": 32,
        "rounds": args.rounds,
        "dense_step_s": dense,
        "steps_measured": {"dense": len(dense_steps), "sparcl": len(sparse_steps)},
    }
    for kind in STEP_KINDS:
        seconds = median_of(sparse_steps, kind)
        result[f"sparcl_{kind_key(kind)}_step_s"] = seconds
        result[f"{kind_key(kind)}_overhead"] = None if seconds is None else seconds / dense - 1
    # Ordinary steps also compared round by round (each pair of runs saw the same machine load):
    # the median of those ratios is the headline figure, their range shows the noise.
    for kind in ("ordinary", "CWI window"):
        key = kind_key(kind)
        per_round = [
            median_of(sparse["steps"], kind) / median_of(plain["steps"], "ordinary") - 1
            for plain, sparse in zip(runs[False], runs[True], strict=True)
            if median_of(sparse["steps"], kind) is not None
        ]
        result[f"{key}_overhead_per_round"] = per_round
        result[f"{key}_overhead"] = statistics.median(per_round) if per_round else None
    if device.type == "cpu":  # the plugin's own time, timed inside its calls: no run-to-run noise
        plugin_times = [step for run in runs[True] for step in run["plugin_times"]]
        for kind in STEP_KINDS:
            seconds = median_of(plugin_times, kind)
            result[f"plugin_time_{kind_key(kind)}_s"] = seconds
            result[f"plugin_share_{kind_key(kind)}"] = None if seconds is None else seconds / dense
    sparse_run = runs[True][-1]
    result["parameter_bytes"] = sparse_run["parameter_bytes"]
    result["plugin_state_bytes"] = sparse_run["state_bytes"]
    result["state_to_parameters"] = sparse_run["state_bytes"] / sparse_run["parameter_bytes"]
    if device.type == "cuda":
        result["peak_cuda_bytes_dense"] = max(run["peak_cuda_bytes"] for run in runs[False])
        result["peak_cuda_bytes_sparcl"] = max(run["peak_cuda_bytes"] for run in runs[True])
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=sorted(MODEL_LABELS), default="resnet18")
    parser.add_argument("--nf", type=int, default=16, help="ResNet-18 width (64 = the paper's)")
    parser.add_argument("--samples", type=int, default=640, help="training images per run")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7, help="alternating dense/SparCL run pairs")
    parser.add_argument(
        "--update-every", type=float, default=0.5, help="TDM's update_every: 0.5 = one mask update mid-run"
    )
    parser.add_argument("--json", help="also write the result to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = measure(args)
    result["date"] = datetime.date.today().isoformat()
    result["command"] = "python benchmarks/overhead.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
