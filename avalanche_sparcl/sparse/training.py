"""The one owner of what is masked at the optimizer step: TDM's weight masks, DGM's gradient masks
and the optimizer step hooks that enforce both (as rigl-torch's ``RigLScheduler`` owns its step).

Torch only. The Avalanche plugins drive it from their hooks; a plain PyTorch loop drives it directly::

    sparse = SparseTraining.for_model(model, optimizer, example_input, sparsity=0.75, gradient_sparsity=0.2)
    for experience in experiences:
        sparse.start_experience(n_epochs, len(loader))
        for epoch in range(n_epochs):
            for iteration, (x, y) in enumerate(loader):
                sparse.before_iteration(epoch, iteration, len(loader))
                loss = criterion(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                sparse.after_backward()
                optimizer.step()          # the masks are enforced inside the step
        sparse.finish_experience()
    sparse.close()
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from avalanche_sparcl.settings import check_options, default
from avalanche_sparcl.sparse.dynamic import DynamicSparsity, TDMSettings
from avalanche_sparcl.sparse.gradient_masks import GradientMasking
from avalanche_sparcl.sparse.layers import default_sparse_weights, parameters_named
from avalanche_sparcl.sparse.step_hooks import OptimizerStepHooks


class SparseTraining:
    """Weight masks (optional: ``dynamic_sparsity``), gradient masks (optional: ``gradient_masking``)
    and the optimizer step hooks that apply them right before and after every step.

    Before the step the gradients of pruned weights are zeroed, by DGM's mask when there is one (it
    lies within the weight mask: one multiplication), refreshed right after every weight-mask change;
    after the step pruned weights are kept at zero.
    """

    def __init__(
        self,
        dynamic_sparsity: DynamicSparsity | None = None,
        gradient_masking: GradientMasking | None = None,
    ):
        self.dynamic_sparsity = dynamic_sparsity
        self.gradient_masking = gradient_masking
        self.step_hooks = OptimizerStepHooks(self._before_step, self._after_step)
        self.seen_mask_updates = 0

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        example_input: Any,
        sparsity: float = 0.75,
        gradient_sparsity: float = 0.2,
        refresh_every: int = 30,
        min_gradient_masking_steps: int = default("min_gradient_masking_steps"),
        **tdm_options: Any,
    ) -> SparseTraining:
        """SparCL's TDM and DGM on ``model`` for a plain training loop: the layers are chosen by the
        default rule from one forward pass of ``example_input`` (or by ``profile=`` in
        ``tdm_options``); ``gradient_sparsity=0`` leaves the gradients of the kept weights alone, as
        does an experience of fewer than ``min_gradient_masking_steps`` steps (its length is known when
        ``start_experience`` is given the minibatches per epoch)."""
        settings = TDMSettings(sparsity=sparsity, **tdm_options)
        if settings.profile:
            sparsities = dict(settings.profile)
        else:
            names = default_sparse_weights(model, lambda: model(example_input))
            sparsities = settings.sparsities_of(parameters_named(model, names))
        dynamic = DynamicSparsity(parameters_named(model, sparsities), sparsities, settings)
        checked = check_options(
            {
                "gradient_sparsity": gradient_sparsity,
                "refresh_every": refresh_every,
                "min_gradient_masking_steps": min_gradient_masking_steps,
            }
        )
        gradient = None
        if checked["gradient_sparsity"] != 0:
            gradient = GradientMasking(
                {}, gradient_sparsity, refresh_every, checked["min_gradient_masking_steps"]
            )
        engine = cls(dynamic, gradient)
        engine.follow(optimizer)
        return engine

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Parameter name -> bool weight mask (True = kept), frozen layers' included."""
        return {} if self.dynamic_sparsity is None else self.dynamic_sparsity.all_masks

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer whose steps are masked."""
        return self.step_hooks.optimizer

    def follow(self, optimizer: torch.optim.Optimizer) -> bool:
        """Mask the steps of ``optimizer`` (idempotent); a newly followed optimizer has the state of
        pruned weights cleared. Returns whether it was newly followed."""
        if not self.step_hooks.follow(optimizer):
            return False
        if self.dynamic_sparsity is not None:
            self.dynamic_sparsity.clear_pruned_optimizer_state(optimizer)
        return True

    def start_experience(self, n_epochs: int, iterations_per_epoch: int | None = None) -> bool:
        """Restart the schedules for a new experience (see ``DynamicSparsity.start_experience``);
        the gradient masks follow the masked layers and refresh at the first step. Returns whether
        the weight mask may change during the experience."""
        dynamic = True
        if self.dynamic_sparsity is not None:
            dynamic = self.dynamic_sparsity.start_experience(n_epochs, self.optimizer, iterations_per_epoch)
            self.seen_mask_updates = len(self.dynamic_sparsity.history)
        if self.gradient_masking is not None:
            if self.dynamic_sparsity is not None:
                self.gradient_masking.follow(self.dynamic_sparsity.params)
            self.gradient_masking.start_experience(n_epochs, iterations_per_epoch)
        return dynamic

    def before_iteration(self, epoch: int, iteration: int, iterations_per_epoch: int) -> None:
        """Run the weight-mask update the schedule has due before this iteration."""
        if self.dynamic_sparsity is not None:
            self.dynamic_sparsity.step(epoch, iteration, iterations_per_epoch, self.optimizer)

    def after_backward(self) -> None:
        """Feed CWI with this step's gradients, before anything masks them."""
        if self.dynamic_sparsity is not None:
            self.dynamic_sparsity.observe_gradients()

    def finish_experience(self) -> None:
        """End the experience at the target sparsity, with every pruned weight zero."""
        if self.dynamic_sparsity is not None:
            self.dynamic_sparsity.finish_experience(self.optimizer)
            self.dynamic_sparsity.mask_weights()

    def close(self) -> None:
        """Remove the step hooks: nothing outlives the training that needed it."""
        self.step_hooks.remove()

    def _before_step(self) -> None:
        """Zero the gradients the optimizer must not apply, after every other code edited them."""
        dynamic = self.dynamic_sparsity
        if self.gradient_masking is None or not self.gradient_masking.active:
            if dynamic is not None:
                dynamic.mask_gradients()
            return
        weight_masks, changed = None, False
        if dynamic is not None:
            weight_masks = dynamic.masks
            changed = len(dynamic.history) != self.seen_mask_updates
            self.seen_mask_updates = len(dynamic.history)
        self.gradient_masking.apply(weight_masks, refresh=changed)

    def _after_step(self) -> None:
        """Keep pruned weights at zero across the step (see ``DynamicSparsity.after_optimizer_step``)."""
        if self.dynamic_sparsity is not None:
            self.dynamic_sparsity.after_optimizer_step(self.optimizer)
