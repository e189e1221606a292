"""Exact-count mask operations: deciding which positions of a weight tensor are kept.

Masks are boolean tensors shaped like their weight, ``True`` = kept. Every function here hits its
requested count exactly (top-k on scores; distinct random positions for random regrowth), so a
layer's kept count after an update equals its target to the weight, not approximately as percentile
thresholds do. The ``*_positions`` functions work on flat indices and rank only the candidates (the
kept quarter of a layer, or its pruned entries), the cheap path of a mask update.
"""

from __future__ import annotations

import math

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


def positions_of(mask: Tensor) -> Tensor:
    """Flat indices of the ``True`` entries of ``mask`` (int64)."""
    return mask.flatten().nonzero().squeeze(1)


def lowest_positions(candidates: Tensor, scores: Tensor, count: int) -> Tensor:
    """The ``count`` flat indices among ``candidates`` with the lowest ``scores`` (flat, same length).

    Top-k over the candidates alone: a mask update prunes 1% of a layer from its kept quarter, and
    gathering the quarter costs less than ranking a whole layer padded with infinities.
    """
    count = min(count, candidates.numel())
    if count == 0:
        return candidates[:0]
    return candidates[torch.topk(scores, count, largest=False, sorted=False).indices]


def highest_positions(candidates: Tensor, scores: Tensor, count: int) -> Tensor:
    """The ``count`` flat indices among ``candidates`` with the highest ``scores`` (flat, same length)."""
    count = min(count, candidates.numel())
    if count == 0:
        return candidates[:0]
    return candidates[torch.topk(scores, count, sorted=False).indices]


def grow_positions(mask: Tensor, scores: Tensor, n_grow: int, avoid: Tensor | None = None) -> Tensor:
    """Flat indices of the ``n_grow`` pruned entries with the highest ``scores``.

    Flat indices in ``avoid`` (e.g. the ones just pruned) are taken only when there are not enough
    other pruned positions, so a prune-and-regrow update really swaps weights.
    """
    if n_grow <= 0:
        return torch.zeros(0, dtype=torch.long, device=mask.device)
    free = ~mask.flatten()
    if avoid is not None and avoid.numel():
        free[avoid] = False
    flat_scores = scores.flatten()
    preferred = free.nonzero().squeeze(1)
    grown = highest_positions(preferred, flat_scores[preferred], n_grow)
    if avoid is None or grown.numel() == n_grow or not avoid.numel():
        return grown
    fallback = pruned_among(mask, avoid)
    return torch.cat([grown, highest_positions(fallback, flat_scores[fallback], n_grow - grown.numel())])


def random_grow_positions(
    mask: Tensor, n_grow: int, generator: torch.Generator, avoid: Tensor | None = None
) -> Tensor:
    """Flat indices of ``n_grow`` uniformly random pruned entries (``avoid`` as in
    :func:`grow_positions`).

    Rejection sampling: draws random indices and keeps the distinct pruned ones, about ``n_grow``
    divided by the pruned share of the layer, instead of a random score for every entry and a
    ranking of all pruned ones. The random numbers come from the CPU ``generator`` (a seed gives the
    same masks on every device); only the few drawn indices move to the mask's device.
    """
    device = mask.device
    if n_grow <= 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    blocked = mask.flatten().clone()
    if avoid is not None and avoid.numel():
        blocked[avoid] = True
    n_free = blocked.numel() - int(blocked.sum())
    if 4 * n_grow >= n_free:  # most free entries are wanted: rank them all by random scores
        free = (~blocked).nonzero().squeeze(1)
        grown = highest_positions(free, torch.rand(free.numel(), generator=generator).to(device), n_grow)
    else:
        grown = torch.zeros(0, dtype=torch.long, device=device)
        while grown.numel() < n_grow:
            need = n_grow - grown.numel()
            draws = math.ceil(1.25 * need * blocked.numel() / n_free) + 16
            candidates = torch.randint(blocked.numel(), (draws,), generator=generator).to(device)
            candidates = candidates[~blocked[candidates]].unique()  # distinct free positions
            order = torch.randperm(candidates.numel(), generator=generator).to(device)
            taken = candidates[order[:need]]  # a uniform subset of a uniform subset
            blocked[taken] = True
            n_free -= taken.numel()
            grown = torch.cat([grown, taken])
    if grown.numel() == n_grow or avoid is None:
        return grown
    fallback = pruned_among(mask, avoid)
    order = torch.randperm(fallback.numel(), generator=generator).to(device)
    return torch.cat([grown, fallback[order[: n_grow - grown.numel()]]])


def pruned_among(mask: Tensor, positions: Tensor) -> Tensor:
    """The flat ``positions`` whose entry ``mask`` prunes: the regrowth fallback among avoided ones."""
    return positions[~mask.flatten()[positions]]


def as_mask(positions: Tensor, like: Tensor) -> Tensor:
    """A bool tensor shaped like ``like``, True at the flat ``positions``."""
    mask = torch.zeros(like.numel(), dtype=torch.bool, device=like.device)
    mask[positions] = True
    return mask.view_as(like)


def prune_lowest(mask: Tensor, scores: Tensor, n_prune: int) -> Tensor:
    """Positions of the ``n_prune`` kept entries with the lowest scores (a bool tensor)."""
    kept = positions_of(mask)
    return as_mask(lowest_positions(kept, scores.flatten()[kept], n_prune), mask)


def grow_highest(mask: Tensor, scores: Tensor, n_grow: int, avoid: Tensor | None = None) -> Tensor:
    """Positions of the ``n_grow`` pruned entries with the highest scores (a bool tensor).

    Positions in ``avoid`` (a bool tensor, e.g. the ones just pruned) are taken only when there are
    not enough other pruned positions, so a prune-and-regrow update really swaps weights.
    """
    avoided = None if avoid is None else positions_of(avoid)
    return as_mask(grow_positions(mask, scores, n_grow, avoided), mask)


def grow_random(
    mask: Tensor,
    n_grow: int,
    generator: torch.Generator,
    avoid: Tensor | None = None,
) -> Tensor:
    """Positions of ``n_grow`` uniformly random pruned entries (``avoid`` as in :func:`grow_highest`)."""
    avoided = None if avoid is None else positions_of(avoid)
    return as_mask(random_grow_positions(mask, n_grow, generator, avoided), mask)


def clear_optimizer_state(optimizer: torch.optim.Optimizer, param: Tensor, positions: Tensor) -> None:
    """Zero every per-weight optimizer buffer (momentum, Adam moments) at ``positions`` (a bool
    tensor shaped like ``param``, or flat int64 indices)."""
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, Tensor) and value.shape == param.shape:
            zero_at(value, positions)


def zero_at(tensor: Tensor, positions: Tensor) -> None:
    """Zero ``tensor`` in place at ``positions`` (bool mask, or flat int64 indices)."""
    if positions.dtype == torch.bool:
        tensor[positions] = 0
    elif tensor.is_contiguous():
        tensor.view(-1).index_fill_(0, positions, 0)
    else:
        tensor[as_mask(positions, tensor)] = 0
