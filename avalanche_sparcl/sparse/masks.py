"""Exact-count mask operations: deciding which positions of a weight tensor are kept.

Masks are boolean tensors shaped like their weight, ``True`` = kept. Every function here hits its
requested count exactly (top-k on scores, random permutations for regrowth), so a layer's kept count
after an update equals its target to the weight, not approximately as percentile thresholds do.
"""

from __future__ import annotations

import torch
from torch import Tensor


def kept_count(numel: int, sparsity: float) -> int:
    """Number of weights a layer of ``numel`` entries keeps at ``sparsity`` (fraction of zeros)."""
    return numel - round(numel * sparsity)


def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """Mask keeping the ``k`` largest entries of ``scores``.

    Selects from the smaller side: above half of the entries it drops the ``numel - k`` smallest
    instead, a cheaper top-k (DGM keeps 80% of the active gradients).
    """
    flat = scores.flatten()
    n_drop = flat.numel() - k
    if k <= n_drop:
        mask = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
        if k > 0:
            mask[torch.topk(flat, k, sorted=False).indices] = True
    else:
        mask = torch.ones(flat.numel(), dtype=torch.bool, device=scores.device)
        if n_drop > 0:
            mask[torch.topk(flat, n_drop, largest=False, sorted=False).indices] = False
    return mask.view_as(scores)


def prune_lowest(mask: Tensor, scores: Tensor, n_prune: int) -> Tensor:
    """Positions of the ``n_prune`` kept entries with the lowest scores (a bool tensor)."""
    pruned = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    n_prune = min(n_prune, int(mask.sum()))
    if n_prune > 0:
        candidates = scores.flatten().masked_fill(~mask.flatten(), float("inf"))
        pruned[torch.topk(candidates, n_prune, largest=False, sorted=False).indices] = True
    return pruned.view_as(mask)


def grow_highest(mask: Tensor, scores: Tensor, n_grow: int, avoid: Tensor | None = None) -> Tensor:
    """Positions of the ``n_grow`` pruned entries with the highest scores (a bool tensor).

    Positions in ``avoid`` (e.g. the ones just pruned) are taken only when there are not enough
    other pruned positions, so a prune-and-regrow update really swaps weights.
    """
    grown = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    flat_scores = scores.flatten()
    free = ~mask.flatten()
    preferred = free if avoid is None else free & ~avoid.flatten()
    for pool in (preferred, free):
        candidates = pool & ~grown
        n_take = min(n_grow - int(grown.sum()), int(candidates.sum()))
        if n_take > 0:
            ranked = flat_scores.masked_fill(~candidates, float("-inf"))
            grown[torch.topk(ranked, n_take, sorted=False).indices] = True
    return grown.view_as(mask)


def grow_random(
    mask: Tensor,
    n_grow: int,
    generator: torch.Generator,
    avoid: Tensor | None = None,
) -> Tensor:
    """Positions of ``n_grow`` uniformly random pruned entries (``avoid`` as in :func:`grow_highest`)."""
    scores = torch.rand(mask.shape, generator=generator).to(mask.device)
    return grow_highest(mask, scores, n_grow, avoid)


def clear_optimizer_state(optimizer: torch.optim.Optimizer, param: Tensor, positions: Tensor) -> None:
    """Zero every per-weight optimizer buffer (momentum, Adam moments) at ``positions``."""
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, Tensor) and value.shape == param.shape:
            value[positions] = 0
