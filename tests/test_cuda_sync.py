"""SparCL's ordinary training steps never make the host wait for the GPU.

An ordinary step (no TDM mask update, no DGM gradient-mask refresh) runs every SparCL hook under
``torch.cuda.set_sync_debug_mode("error")``, so any host-device synchronisation in them raises. The
CUDA test is skipped without a GPU; the CPU test checks that the harness classifies steps and wraps
every per-step hook as intended, with a recording stand-in for the sync mode.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training import DER
from avalanche.training.plugins import EvaluationPlugin

from avalanche_sparcl import SparCLPlugin
from avalanche_sparcl.benchmarks import tensor_benchmark
from avalanche_sparcl.models import ResNet18

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from plugin_profile import wrap_per_step_calls  # noqa: E402


class OrdinaryStepGuard(SupervisedPlugin):
    """Listed before SparCLPlugin: decides whether the coming step is ordinary and runs each SparCL
    per-step hook and optimizer step hook of an ordinary step under ``set_mode("error")``."""

    def __init__(self, sparcl: SparCLPlugin, set_mode: Callable[[str], None]):
        super().__init__()
        self.sparcl = sparcl
        self.set_mode = set_mode
        self.ordinary = False
        self.steps = 0
        self.ordinary_steps = 0
        self.wrapped: list[str] = []
        wrap_per_step_calls(sparcl, self.guarded)

    def guarded(self, function: Callable, part: SupervisedPlugin, hook: str) -> Callable:
        label = type(part).__name__
        self.wrapped.append(f"{label} {hook}" if " " in hook else f"{label}.{hook}")

        def run(*args: Any, **kwargs: Any) -> Any:
            if not self.ordinary:
                return function(*args, **kwargs)
            self.set_mode("error")
            try:
                return function(*args, **kwargs)
            finally:
                self.set_mode("default")

        return run

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        clock = strategy.clock
        position = clock.train_exp_epochs + clock.train_epoch_iterations / len(strategy.dataloader)
        upcoming = self.sparcl.tdm.dynamic_sparsity.schedule.upcoming
        update_due = upcoming is not None and upcoming.position <= position + 1e-9
        masking = self.sparcl.dgm.gradient_masking
        refresh_due = masking.iterations % masking.refresh_every == 0
        self.ordinary = not update_due and not refresh_due
        self.steps += 1
        self.ordinary_steps += self.ordinary

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self.ordinary = False


def train_guarded(device: str, set_mode: Callable[[str], None]) -> tuple[OrdinaryStepGuard, SparCLPlugin]:
    """DER++ with the whole SparCLPlugin (TDM, DDR, DGM, masked head) on two small experiences."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(640, 3, 32, 32, generator=generator)
    labels = torch.arange(10).repeat(64)
    benchmark = tensor_benchmark((images, labels), (images[:64], labels[:64]), 2, 0)
    model = ResNet18(num_classes=10, nf=8)
    sparcl = SparCLPlugin(
        0.75, removal_ratio=0.3, gradient_sparsity=0.2, masked_head=True, refresh_every=8,
        min_update_steps=0, min_experience_steps=0, min_gradient_masking_steps=0, min_masked_head_steps=0,
        update_every=0.5,
    )  # fmt: skip
    guard = OrdinaryStepGuard(sparcl, set_mode)
    strategy = DER(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9),
        mem_size=64,
        train_mb_size=32,
        train_epochs=3,
        device=device,
        plugins=[guard, sparcl],
        evaluator=EvaluationPlugin(loggers=[]),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the masked head's note about replay buffers
        for experience in benchmark.train_stream:
            strategy.train(experience)
    return guard, sparcl


def test_harness_runs_every_sparcl_hook_of_ordinary_steps_under_the_error_mode():
    modes: list[str] = []
    guard, sparcl = train_guarded("cpu", modes.append)
    # per experience: 10, 10 and 7 minibatches (DDR removes 96 of 320 examples before epoch 2); the
    # shrink at 1.5 epochs (step 15) and the refreshes at DGM iterations 0, 8, 16 and 24 are not ordinary
    assert guard.steps == 2 * 27
    updates = [(r.experience, r.position, r.kind) for r in sparcl.tdm.dynamic_sparsity.history]
    assert updates == [(0, 0.0, "expand"), (0, 1.5, "shrink"), (1, 0.0, "expand"), (1, 1.5, "shrink")]
    assert [stage.kept for record in sparcl.ddr.stage_counts for stage in record.stages] == [224, 224]
    assert guard.ordinary_steps == 2 * (27 - 5)
    assert guard.wrapped == [
        "DDRPlugin.after_forward",
        "MaskedHeadPlugin.before_training_iteration",
        "MaskedHeadPlugin.after_forward",
        "TDMPlugin.before_training_iteration",
        "TDMPlugin.before_forward",
        "TDMPlugin.after_backward",
        "TDMPlugin before step",
        "TDMPlugin after step",
    ]
    assert modes == ["error", "default"] * (guard.ordinary_steps * len(guard.wrapped))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_ordinary_sparcl_steps_do_not_synchronise_with_the_gpu():
    guard, _ = train_guarded("cuda", torch.cuda.set_sync_debug_mode)
    assert guard.ordinary_steps == 44
