"""Restricting class scores to one experience's classes: Task-IL evaluation and the masked head."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def mask_other_classes(scores: Tensor, classes: Iterable[int]) -> Tensor:
    """``scores`` with every column outside ``classes`` set to -inf (columns beyond the head ignored)."""
    return scores.masked_fill(~kept_columns(scores.shape[-1], classes, scores.device), float("-inf"))


def kept_columns(columns: int, classes: Iterable[int], device: torch.device) -> Tensor:
    """Bool row of ``columns`` entries, True at ``classes`` (those beyond the head ignored)."""
    keep = torch.zeros(columns, dtype=torch.bool)
    keep[[c for c in classes if 0 <= c < columns]] = True
    return keep.to(device)
