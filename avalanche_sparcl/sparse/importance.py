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

from collections.abc import Mapping

import torch
from torch import Tensor


class ContinualWeightImportance:
    """Accumulates ``|grad|`` of selected parameters and scores them by CWI.

    ``track`` narrows the accumulation to given flat positions per parameter (the kept weights: a
    prune ranks only those), so the window's sums take a quarter of the parameters' memory at 75%
    sparsity instead of all of it.
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], gradient_weight: float = 0.5):
        self.params = params
        self.gradient_weight = gradient_weight
        self.gradient_sums: dict[str, Tensor] = {}
        self.tracked: dict[str, Tensor] = {}  # name -> sorted flat positions summed (absent: all)
        self.window_iterations = 0

    def __setstate__(self, state: dict) -> None:
        """Checkpoints written before ``tracked`` existed sum every position."""
        self.__dict__.update({"tracked": {}, **state})

    def track(self, positions: Mapping[str, Tensor]) -> None:
        """Start a new window that sums gradients only at these sorted flat positions of each named
        parameter (the others everywhere)."""
        self.tracked = {
            name: compact_index(index, self.params[name].numel()) for name, index in positions.items()
        }
        self.reset()

    def accumulate(self) -> None:
        """Add the current ``|grad|`` of every parameter to the window (call after backward).

        Fused multi-tensor ops over groups of layers no larger together than the largest one: few
        kernel launches on a GPU, and a temporary ``|grad|`` of one layer's size, not the model's
        (peak memory stays within the state budget).
        """
        names = [name for name, param in self.params.items() if param.grad is not None]
        sizes = {}
        for name in names:
            param, positions = self.params[name], self.tracked.get(name)
            if positions is not None and positions.device != param.device:
                positions = self.tracked[name] = positions.to(param.device)
            sizes[name] = param.numel() if positions is None else positions.numel()
            total = self.gradient_sums.get(name)
            if total is None or total.device != param.device:
                self.gradient_sums[name] = (
                    torch.zeros_like(param, memory_format=torch.preserve_format)
                    if positions is None
                    else torch.zeros(sizes[name], dtype=param.dtype, device=param.device)
                )
        for group in layer_groups(names, sizes):
            gradients = [self.gradient_at_tracked(name) for name in group]
            torch._foreach_add_([self.gradient_sums[name] for name in group], torch._foreach_abs(gradients))
        self.window_iterations += 1

    def gradient_at_tracked(self, name: str) -> Tensor:
        gradient = self.params[name].grad.detach()
        positions = self.tracked.get(name)
        return gradient if positions is None else gradient.reshape(-1).index_select(0, positions)

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
        """Mean ``|grad|`` of parameter ``name`` over the window (zeros before any gradient and at
        untracked positions)."""
        param = self.params[name]
        if name not in self.tracked:
            total = self.gradient_sums.get(name)
            if total is None or self.window_iterations == 0:
                return torch.zeros_like(param, memory_format=torch.preserve_format).detach()
            return total / self.window_iterations
        every = torch.arange(param.numel(), device=param.device)
        return self.mean_gradient_at(name, every).view_as(param)

    def mean_gradient_at(self, name: str, positions: Tensor) -> Tensor:
        """Mean ``|grad|`` at flat ``positions`` of parameter ``name`` (zeros before any gradient and
        at untracked positions)."""
        total = self.gradient_sums.get(name)
        tracked = self.tracked.get(name)
        if total is None or self.window_iterations == 0 or (tracked is not None and not tracked.numel()):
            return torch.zeros(positions.numel(), dtype=self.params[name].dtype, device=positions.device)
        if tracked is None:
            return total.flatten()[positions] / self.window_iterations
        slots = torch.searchsorted(tracked, positions.to(tracked.dtype)).clamp_(max=tracked.numel() - 1)
        found = tracked[slots] == positions
        return torch.where(found, total[slots], 0.0) / self.window_iterations

    def forget(self, name: str) -> None:
        """Drop what is held for a parameter that is no longer scored (it stopped training)."""
        self.gradient_sums.pop(name, None)
        self.tracked.pop(name, None)

    def reset(self) -> None:
        """Start a new window on the same positions; the sums are freed until the next accumulate
        allocates them (sized for the tracked positions)."""
        self.gradient_sums = {}
        self.window_iterations = 0


def compact_index(positions: Tensor, numel: int) -> Tensor:
    """Flat positions as int32 where they fit: half the memory of int64 for the same gather."""
    return positions.to(torch.int32) if numel < 2**31 else positions.to(torch.long)


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
