"""Dynamic gradient masking (DGM), SparCL Sec. 4.3.

Every ``refresh_every`` iterations each layer keeps the gradients of the ``1 - gradient_sparsity``
share of its *active* (unpruned) weights with the largest ``|grad|`` of the current minibatch; in
between, that gradient mask is re-applied. The share is relative to the active weights: the
reference code counts it over the whole tensor, which makes DGM a no-op at 90% or 95% weight
sparsity. Selection is a top-k on the parameters' device and hits its count exactly.

An experience of fewer than ``min_steps`` optimizer steps and fewer than 10 epochs is not masked (one
warning): at a few dozen steps every gradient is needed (docs/options.md, Short schedules).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from avalanche_sparcl.distributed import check_agreement
from avalanche_sparcl.settings import experience_length, is_short_experience
from avalanche_sparcl.sparse.masks import (
    as_mask,
    highest_positions,
    kept_count,
    lowest_positions,
    positions_of,
    top_k_mask,
)


class GradientMasking:
    """Gradient masks of selected parameters, refreshed on a fixed iteration period, in experiences of
    at least ``min_steps`` optimizer steps (``active``)."""

    active = True  # class defaults: objects pickled before the short-experience rule load as before
    min_steps = 0
    warned_short = False

    def __init__(
        self,
        params: Mapping[str, nn.Parameter],
        gradient_sparsity: float,
        refresh_every: int,
        min_steps: int = 0,
    ):
        self.params = dict(params)
        self.gradient_sparsity = gradient_sparsity
        self.refresh_every = refresh_every
        self.min_steps = min_steps
        self.masks: dict[str, Tensor] = {}
        self.iterations = 0

    def follow(self, params: Mapping[str, nn.Parameter]) -> None:
        """Mask exactly these parameters from now on (a replaced model, layers that stopped or started
        training); masks of the others are dropped."""
        self.params = dict(params)
        self.masks = {name: mask for name, mask in self.masks.items() if name in self.params}

    def start_experience(self, n_epochs: int | None = None, iterations_per_epoch: int | None = None) -> None:
        """Refresh at the first iteration of every experience: its data are new. A short experience
        (fewer than ``min_steps`` optimizer steps and fewer than ``FULL_SCHEDULE_EPOCHS`` epochs) is not
        masked; one of unknown length is."""
        self.iterations = 0
        short = n_epochs is not None and is_short_experience(n_epochs, iterations_per_epoch, self.min_steps)
        self.active = not short
        if self.active:
            return
        self.masks = {}  # nothing is masked: the metrics count every gradient of the kept weights
        if not self.warned_short:
            self.warned_short = True
            warnings.warn(
                f"DGMPlugin: {experience_length(n_epochs, iterations_per_epoch)} is shorter than "
                f"min_gradient_masking_steps={self.min_steps}: every gradient of the kept weights is needed "
                "at so few steps, so DGM masks no gradient in such experiences; "
                "min_gradient_masking_steps=0 forces DGM; this warning is given once",
                stacklevel=2,
            )

    def apply(self, weight_masks: Mapping[str, Tensor] | None = None, refresh: bool = False) -> bool:
        """Mask the current gradients; refresh the masks first when due (or asked). Returns whether it did.

        ``weight_masks`` tells which weights are active (all of them on a dense layer). Nothing is masked
        in an experience too short for DGM (see :meth:`start_experience`).
        """
        if not self.active:
            return False
        refresh = refresh or self.iterations % self.refresh_every == 0 or not self.masks
        self.iterations += 1
        names = [name for name, param in self.params.items() if param.grad is not None]
        if refresh:
            for name in names:
                active = None if weight_masks is None else weight_masks.get(name)
                self.masks[name] = self.select(self.params[name].grad, active)
            check_agreement(f"DGM's gradient masks refreshed at iteration {self.iterations - 1}", self.masks)
        if names:  # one fused multi-tensor op on a GPU
            torch._foreach_mul_([self.params[n].grad for n in names], [self.masks[n] for n in names])
        return refresh

    def select(self, gradient: Tensor, active: Tensor | None) -> Tensor:
        """The largest-|grad| ``1 - gradient_sparsity`` share of the active entries.

        The selection ranks the active entries only (a quarter of the layer at 75% weight sparsity),
        from the smaller side: at the default 0.2 it drops the lowest fifth from a copy of the weight
        mask, one top-k and one scatter.
        """
        if active is None:
            magnitude = gradient.detach().abs()
            return top_k_mask(magnitude, kept_count(magnitude.numel(), self.gradient_sparsity))
        positions = positions_of(active)
        magnitude = gradient.detach().flatten()[positions].abs()
        n_kept = kept_count(positions.numel(), self.gradient_sparsity)
        if n_kept > positions.numel() - n_kept:
            mask = active.clone(memory_format=torch.contiguous_format)
            mask.view(-1)[lowest_positions(positions, magnitude, positions.numel() - n_kept)] = False
            return mask
        return as_mask(highest_positions(positions, magnitude, n_kept), active)
