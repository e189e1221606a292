"""A tiny SparCL run that checkpoints after every experience and resumes from its checkpoint.

DER with SparCLPlugin (TDM, DDR and DGM), the finite-value guard and every metric of the package,
on the first experiences of Split Digits. The resume tests run it in new processes:

    python tests/checkpoint_driver.py --checkpoint RUN/checkpoint.pkl --result RUN/result.pt

and simulate kills with environment variables naming a 0-based experience index:
``KILL_AFTER_SAVING=k`` (SIGKILL right after the checkpoint of experience k is on disk) and
``KILL_WHILE_SAVING=k`` (SIGKILL when half of that checkpoint is written).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.training import DER
from avalanche.training.plugins import EvaluationPlugin
from conftest import RULES_OFF

from avalanche_sparcl.benchmarks import split_digits
from avalanche_sparcl.checkpointing import maybe_resume, save_checkpoint
from avalanche_sparcl.metrics import (
    TrainFlops,
    data_metrics,
    flops_metrics,
    sparsity_metrics,
    task_il_accuracy_metrics,
)
from avalanche_sparcl.models import SmallCNN
from avalanche_sparcl.plugins import NonFiniteGuardPlugin, SparCLPlugin
from avalanche_sparcl.reproducibility import seed_everything

TRAINED_EXPERIENCES = 3
EPOCHS = 3  # DDR's first removal window needs two epochs: one stage, at epoch 2
KILL_AFTER_SAVING = "KILL_AFTER_SAVING"
KILL_WHILE_SAVING = "KILL_WHILE_SAVING"


def build_strategy(seed: int = 0, extra_plugins: list[Any] | None = None) -> tuple[Any, DER]:
    """The benchmark and a fresh strategy, everything drawn from ``seed``."""
    seed_everything(seed)
    benchmark = split_digits(n_experiences=5, seed=seed)
    model = SmallCNN(width=16)
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        loss_metrics(epoch=True),
        *flops_metrics(),
        *sparsity_metrics(),
        *data_metrics(),
        *task_il_accuracy_metrics(),
        loggers=[],
    )
    plugins = [
        SparCLPlugin(
            sparsity=0.75, removal_ratio=0.3, gradient_sparsity=0.2, refresh_every=4, seed=seed, **RULES_OFF
        ),
        *(extra_plugins or []),
        NonFiniteGuardPlugin(check_every=5),
    ]
    strategy = DER(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        mem_size=60,
        train_mb_size=32,
        train_epochs=EPOCHS,
        eval_mb_size=256,
        evaluator=evaluator,
        plugins=plugins,
    )
    return benchmark, strategy


def run(checkpoint: Path, seed: int = 0, experiences: int = TRAINED_EXPERIENCES) -> dict[str, Any]:
    """Train the first ``experiences`` experiences, resuming from ``checkpoint`` if it exists and
    saving it after each one; returns :func:`final_state`. Run it under :func:`one_thread`."""
    benchmark, strategy = build_strategy(seed)
    strategy, next_experience = maybe_resume(strategy, checkpoint)
    for index in range(next_experience, experiences):
        strategy.train(benchmark.train_stream[index])
        strategy.eval(benchmark.test_stream[:experiences])
        kill_while_saving = os.environ.get(KILL_WHILE_SAVING) == str(index)
        with killed_halfway_through_writing() if kill_while_saving else no_effect():
            save_checkpoint(strategy, checkpoint)
        if os.environ.get(KILL_AFTER_SAVING) == str(index):
            os.kill(os.getpid(), signal.SIGKILL)
    return final_state(strategy)


def sparcl_plugin(strategy: Any) -> SparCLPlugin:
    """The strategy's SparCLPlugin (after a resume it is the unpickled one, not the one built)."""
    return next(plugin for plugin in strategy.plugins if isinstance(plugin, SparCLPlugin))


def flops_metric(strategy: Any) -> TrainFlops:
    return next(metric for metric in strategy.evaluator.metrics if isinstance(metric, TrainFlops))


def final_state(strategy: Any) -> dict[str, Any]:
    """Everything a resumed run must reproduce exactly: weights, optimizer, masks, plugin state,
    random generators and every metric value collected."""
    sparcl = sparcl_plugin(strategy)
    engine = sparcl.tdm.dynamic_sparsity
    return {
        "weights": strategy.model.state_dict(),
        "optimizer": strategy.optimizer.state_dict(),
        "masks": sparcl.masks,
        "gradient_masks": sparcl.gradient_masks,
        "importance_sums": engine.importance.gradient_sums,
        "importance_window": engine.importance.window_iterations,
        "mask_history": [repr(record) for record in engine.history],  # repr: NaN positions compare equal
        "regrowth_generator": engine.generator.get_state(),
        "ddr_history": [dataclasses.asdict(record) for record in sparcl.ddr.stage_counts],
        "ddr_kept_positions": sparcl.ddr.removal.kept_positions,
        "ddr_statistics": dict(vars(sparcl.ddr.removal.statistics)),
        "dgm_iterations": (sparcl.dgm.gradient_masking.iterations, sparcl.tdm.engine.seen_mask_updates),
        "flops": dataclasses.asdict(flops_metric(strategy).breakdown()),
        "buffer_logits": torch.stack(list(strategy.storage_policy.buffer.logits)),
        "buffer_targets": list(strategy.storage_policy.buffer.targets),
        "torch_rng": torch.get_rng_state(),
        "metrics": strategy.evaluator.get_all_metrics(),
    }


def differences(expected: Any, actual: Any, where: str = "") -> list[str]:
    """Paths (``/key[index]``) at which two nested results differ; tensors must be exactly equal."""
    if isinstance(expected, torch.Tensor):
        same = isinstance(actual, torch.Tensor) and expected.dtype == actual.dtype
        return [] if same and torch.equal(expected, actual) else [where]
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(expected) != set(actual):
            return [where + " (keys)"]
        return [
            path for key in expected for path in differences(expected[key], actual[key], f"{where}/{key}")
        ]
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)) or len(expected) != len(actual):
            return [where + " (length)"]
        pairs = enumerate(zip(expected, actual, strict=True))
        return [path for i, (a, b) in pairs for path in differences(a, b, f"{where}[{i}]")]
    return [] if expected == actual else [where]


@contextmanager
def killed_halfway_through_writing() -> Iterator[None]:
    """Within the block, the next ``torch.save`` writes half of its bytes, then the process is killed
    (what was written reaches the file: a SIGKILL loses nothing the process had handed to the OS)."""
    original_save = torch.save

    def write_half_then_die(obj: Any, stream: Any, **kwargs: Any) -> None:
        buffer = io.BytesIO()
        original_save(obj, buffer, **kwargs)
        data = buffer.getvalue()
        stream.write(data[: len(data) // 2])
        stream.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = write_half_then_die
    try:
        yield
    finally:
        torch.save = original_save


@contextmanager
def one_thread() -> Iterator[None]:
    """CPU kernels may sum in an order that depends on the thread count: runs to compare use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def no_effect() -> Iterator[None]:
    yield


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with one_thread():
        result = run(args.checkpoint, args.seed)
    torch.save(result, args.result)


if __name__ == "__main__":
    sys.exit(main())
