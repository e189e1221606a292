"""Dynamic gradient masking (DGM), SparCL Sec. 4.3.

Every ``refresh_every`` iterations each layer keeps the gradients of the ``1 - gradient_sparsity``
share of its *active* (unpruned) weights with the largest ``|grad|`` of the current minibatch; in
between, that gradient mask is re-applied. The share is relative to the active weights: the
reference code counts it over the whole tensor, which makes DGM a no-op at 90% or 95% weight
sparsity. Selection is a top-k on the parameters' device and hits its count exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from avalanche_sparcl.distributed import check_agreement
from avalanche_sparcl.sparse.masks import kept_count, top_k_mask


class GradientMasking:
    """Gradient masks of selected parameters, refreshed on a fixed iteration period."""

    def __init__(self, params: Mapping[str, nn.Parameter], gradient_sparsity: float, refresh_every: int):
        self.params = dict(params)
        self.gradient_sparsity = gradient_sparsity
        self.refresh_every = refresh_every
        self.masks: dict[str, Tensor] = {}
        self.iterations = 0

    def start_experience(self) -> None:
        """Refresh at the first iteration of every experience: its data are new."""
        self.iterations = 0

    def apply(self, weight_masks: Mapping[str, Tensor] | None = None, refresh: bool = False) -> bool:
        """Mask the current gradients; refresh the masks first when due (or asked). Returns whether it did.

        ``weight_masks`` tells which weights are active (all of them on a dense layer).
        """
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

        The selection runs on the active entries only (a quarter of the layer at 75% weight
        sparsity), not on the whole tensor.
        """
        magnitude = gradient.detach().abs()
        if active is None:
            return top_k_mask(magnitude, kept_count(magnitude.numel(), self.gradient_sparsity))
        positions = active.flatten().nonzero().squeeze(1)
        n_kept = kept_count(len(positions), self.gradient_sparsity)
        selected = top_k_mask(magnitude.flatten()[positions], n_kept)
        mask = torch.zeros(magnitude.numel(), dtype=torch.bool, device=magnitude.device)
        mask[positions[selected]] = True
        return mask.view_as(gradient)
