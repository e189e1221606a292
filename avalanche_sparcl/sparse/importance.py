"""Continual weight importance (CWI), SparCL Sec. 4.1.

CWI of a weight is ``|w| + lambda * g`` where ``g`` is the mean absolute gradient of the training
loss over a window of iterations before the mask update that reads it (TDM's ``importance_window``:
the last 32 optimizer steps by default, or all since the previous update). The paper writes separate
terms for current and buffer data; with rehearsal strategies the training loss already holds both
(the merged form the reference code ships), so one accumulator serves ER, DER++ and ER-ACE alike.
Without a replay buffer ``g`` only reflects the current experience.

Unlike the reference code, ``g`` is averaged over a window (not one minibatch), is read before any
gradient masking, and restarts with every experience, so pruned or never-updated weights are not
scored zero by accident and no experience is judged by the previous one's data.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ContinualWeightImportance:
    """Accumulates ``|grad|`` of selected parameters and scores them by CWI."""

    def __init__(self, params: dict[str, torch.nn.Parameter], gradient_weight: float = 0.5):
        self.params = params
        self.gradient_weight = gradient_weight
        self.gradient_sums: dict[str, Tensor] = {}
        self.window_iterations = 0

    def accumulate(self) -> None:
        """Add the current ``|grad|`` of every parameter to the window (call after backward).

        Fused multi-tensor ops over groups of layers no larger together than the largest one: few
        kernel launches on a GPU, and a temporary ``|grad|`` of one layer's size, not the model's
        (peak memory stays within the state budget).
        """
        names = [name for name, param in self.params.items() if param.grad is not None]
        for name in names:
            total = self.gradient_sums.get(name)
            if total is None or total.device != self.params[name].device:
                self.gradient_sums[name] = torch.zeros_like(
                    self.params[name], memory_format=torch.preserve_format
                )
        for group in layer_groups(names, {name: self.params[name].numel() for name in names}):
            gradients = [self.params[name].grad.detach() for name in group]
            torch._foreach_add_([self.gradient_sums[name] for name in group], torch._foreach_abs(gradients))
        self.window_iterations += 1

    def scores(self, name: str) -> Tensor:
        """CWI of every entry of parameter ``name`` over the current window."""
        weight_term = self.params[name].detach().abs()
        if self.gradient_weight == 0:
            return weight_term
        return weight_term + self.gradient_weight * self.mean_gradient(name)

    def scores_at(self, name: str, positions: Tensor) -> Tensor:
        """CWI of the entries at flat ``positions`` of parameter ``name`` (a mask update ranks the
        kept entries only)."""
        weight_term = self.params[name].detach().flatten()[positions].abs()
        if self.gradient_weight == 0:
            return weight_term
        return weight_term + self.gradient_weight * self.mean_gradient_at(name, positions)

    def mean_gradient(self, name: str) -> Tensor:
        """Mean ``|grad|`` of parameter ``name`` over the window (zeros before any gradient)."""
        total = self.gradient_sums.get(name)
        if total is None or self.window_iterations == 0:
            return torch.zeros_like(self.params[name], memory_format=torch.preserve_format).detach()
        return total / self.window_iterations

    def mean_gradient_at(self, name: str, positions: Tensor) -> Tensor:
        """Mean ``|grad|`` at flat ``positions`` of parameter ``name`` (zeros before any gradient)."""
        total = self.gradient_sums.get(name)
        if total is None or self.window_iterations == 0:
            return torch.zeros(positions.numel(), dtype=self.params[name].dtype, device=positions.device)
        return total.flatten()[positions] / self.window_iterations

    def reset(self) -> None:
        """Start a new window (after a mask update, or at a new experience)."""
        for total in self.gradient_sums.values():
            total.zero_()
        self.window_iterations = 0


def layer_groups(names: list[str], sizes: dict[str, int]) -> list[list[str]]:
    """Consecutive ``names`` grouped so that no group holds more entries than the largest layer."""
    if not names:
        return []
    limit = max(sizes.values())
    groups: list[list[str]] = [[]]
    filled = 0
    for name in names:
        if groups[-1] and filled + sizes[name] > limit:
            groups.append([])
            filled = 0
        groups[-1].append(name)
        filled += sizes[name]
    return groups
