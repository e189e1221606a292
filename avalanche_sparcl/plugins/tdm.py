"""TDMPlugin: task-aware dynamic masking (SparCL Sec. 4.1) for any Avalanche SGD strategy."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch
from avalanche.core import SupervisedPlugin

from avalanche_sparcl.distributed import unwrap
from avalanche_sparcl.plugins.probe import probe_forward
from avalanche_sparcl.sparse.dynamic import DynamicSparsity, TDMSettings
from avalanche_sparcl.sparse.step_hooks import OptimizerStepHooks
from avalanche_sparcl.validation import reject_unknown_options


class TDMPlugin(SupervisedPlugin, supports_distributed=True):
    """Keeps the model sparse from the first step on, with a mask that adapts to each experience.

    Options (defaults are the paper setting): ``sparsity`` of the masked layers; ``profile`` (mapping
    or YAML file ``prune_ratios: {parameter_name: sparsity}``) to choose layers and per-layer ratios;
    ``importance_lambda`` (CWI gradient weight); ``expand_ratio`` (extra capacity at each experience
    start) and ``mutate_ratio`` (share of each layer swapped per update), both fractions of the
    layer; ``update_every`` and ``freeze_at`` as fractions of the experience's epochs; ``seed`` of
    the random regrowth; ``min_update_steps``, the fewest optimizer steps between two mask updates
    less than an epoch apart (short experiences get fewer updates, or a fixed mask with one warning;
    0 keeps every update); ``importance_window``, the optimizer steps before each mask update whose
    gradients feed CWI (0: every step since the previous update).

    Under DistributedDataParallel every rank builds the same masks from the averaged gradients and an
    identically seeded generator; the core checks that they agree after every change.
    """

    def __init__(self, sparsity: float = 0.75, **options: Any):
        super().__init__()
        accepted = {f.name for f in dataclasses.fields(TDMSettings)}
        reject_unknown_options("TDMPlugin", set(options) - accepted, accepted)
        self.settings = TDMSettings(sparsity=sparsity, **options)
        self.dynamic_sparsity: DynamicSparsity | None = None
        self.step_hooks = OptimizerStepHooks(self._mask_gradients_at_step, self._mask_weights_at_step)
        self.gradients_masked_by_dgm = False  # set by a DGMPlugin working on these masks
        self.warned_fixed_mask = False  # the fixed-mask warning is given once

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Parameter name -> bool mask (True = kept); empty until training starts."""
        return {} if self.dynamic_sparsity is None else self.dynamic_sparsity.masks

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Build the masks on first use (else follow a replaced model), then expand them for the new
        experience; enforce the masks at every step of the strategy's optimizer."""
        if self.dynamic_sparsity is None:
            self.dynamic_sparsity = DynamicSparsity.for_model(
                unwrap(strategy.model), self.settings, lambda: probe_forward(strategy)
            )
        else:
            self.dynamic_sparsity.bind(unwrap(strategy.model))
        self.step_hooks.follow(strategy.optimizer)
        iterations = minibatches_per_epoch(strategy)
        dynamic = self.dynamic_sparsity.start_experience(
            strategy.train_epochs, strategy.optimizer, iterations
        )
        if not dynamic and not self.warned_fixed_mask:
            warnings.warn(fixed_mask_warning(strategy.train_epochs, iterations, self.settings), stacklevel=2)
            self.warned_fixed_mask = True

    def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        """Zero the pruned weights: plugins may have written weights when the experience started
        (FromScratchTrainingPlugin copies the initial ones back)."""
        self.dynamic_sparsity.mask_weights()

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        """Run the mask update the schedule has due at this iteration."""
        self.dynamic_sparsity.step(
            strategy.clock.train_exp_epochs,
            strategy.clock.train_epoch_iterations,
            len(strategy.dataloader),
            strategy.optimizer,
        )

    def before_forward(self, strategy: Any, **kwargs: Any) -> None:
        """Re-zero pruned weights a state_dict load revived (early stopping restores its best state)."""
        self.dynamic_sparsity.mask_weights_if_written()

    def after_backward(self, strategy: Any, **kwargs: Any) -> None:
        """Feed CWI with this step's gradients, before anything masks them."""
        self.dynamic_sparsity.observe_gradients()

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """End at the target sparsity even if the experience was too short for its shrink, with the
        pruned weights zero whatever ran last (a final early-stopping restore)."""
        self.dynamic_sparsity.finish_experience(strategy.optimizer)
        self.dynamic_sparsity.mask_weights()

    def _mask_gradients_at_step(self) -> None:
        """Zero the gradients of pruned weights after every other plugin edited them (GEM, A-GEM),
        unless DGM masks them (its mask is a subset of the weight mask: one multiplication, not two)."""
        if not self.gradients_masked_by_dgm:
            self.dynamic_sparsity.mask_gradients()

    def _mask_weights_at_step(self) -> None:
        """Keep pruned weights at zero across the step (see ``DynamicSparsity.after_optimizer_step``)."""
        self.dynamic_sparsity.after_optimizer_step(self.step_hooks.optimizer)


def minibatches_per_epoch(strategy: Any) -> int | None:
    """Minibatches in the experience's first epoch (None for a loader without a length)."""
    try:
        return len(strategy.dataloader)
    except (AttributeError, TypeError):
        return None


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``count`` with its noun in the right number: '1 epoch', '3 epochs'."""
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


def fixed_mask_warning(epochs: int, iterations_per_epoch: int, settings: TDMSettings) -> str:
    """Why an experience keeps its mask fixed, and how to force the paper schedule."""
    steps = epochs * iterations_per_epoch
    return (
        f"TDMPlugin: an experience of {counted(steps, 'optimizer step')} ({counted(epochs, 'epoch')} "
        f"of {counted(iterations_per_epoch, 'minibatch', 'minibatches')}) has no room for a mask "
        f"update at least min_update_steps={settings.min_update_steps} steps or one epoch after its "
        "start and before "
        f"the freeze (freeze_at={settings.freeze_at:g}), so the mask stays fixed in such "
        "experiences: sparse from the first step, no expansion, shrink or mutation. "
        "min_update_steps=0 forces the scheduled updates; this warning is given once"
    )
