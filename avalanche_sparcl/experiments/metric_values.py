"""Numbers read out of Avalanche's metric dictionaries for results.json.

Avalanche names every value by a path (``Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp002``); the
report wants matrices, stream values and curves, so they are picked out here, in one place.
"""

from __future__ import annotations

import math
import os
import platform
import re
from importlib import metadata
from typing import Any

from avalanche.training.plugins import EvaluationPlugin

CLASS_IL_EXPERIENCE = re.compile(r"^Top1_Acc_Exp/eval_phase/test_stream/Task\d+/Exp(\d+)$")
TASK_IL_EXPERIENCE = re.compile(r"^TaskIL_Top1_Acc_Exp/eval_phase/test_stream/Task\d+/Exp(\d+)$")


def accuracy_row(metrics: dict[str, Any], pattern: re.Pattern, n_experiences: int) -> list[float]:
    """The per-experience accuracies of one evaluation, ordered by experience."""
    row = [math.nan] * n_experiences
    for name, value in metrics.items():
        match = pattern.match(name)
        if match:
            row[int(match.group(1))] = float(value)
    return row


def stream_value(metrics: dict[str, Any], prefix: str) -> float:
    """The value of the first metric named ``prefix/eval_phase/test_stream...``."""
    for name, value in metrics.items():
        if name.startswith(f"{prefix}/eval_phase/test_stream"):
            return float(value)
    return math.nan


def curve(evaluator: EvaluationPlugin, name: str) -> dict[str, list]:
    """A training-time metric's history: iterations and values."""
    for full_name, (positions, values) in evaluator.get_all_metrics().items():
        if full_name.startswith(f"{name}/train_phase/"):
            return {"iterations": list(positions), "values": [float(v) for v in values]}
    return {"iterations": [], "values": []}


def package_versions() -> dict[str, str]:
    """The versions results.json records, so a number can be traced to the code that measured it."""
    versions = {"python": platform.python_version()}
    for package in ("avalanche-sparcl", "avalanche-lib", "torch", "torchvision", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def machine_description(device: str) -> dict[str, Any]:
    """What ran the numbers: torch's CPU threads, the CPU and, on CUDA, the GPU (a speed figure means
    nothing without them)."""
    import torch

    gpu = None
    if str(device).startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
    }


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
