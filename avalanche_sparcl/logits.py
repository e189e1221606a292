"""Restricting class scores to one experience's classes: Task-IL evaluation and the masked head."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def mask_other_classes(scores: Tensor, classes: Iterable[int]) -> Tensor:
    """``scores`` with every column outside ``classes`` set to -inf (columns beyond the head ignored)."""
    columns = scores.shape[-1]
    keep = torch.zeros(columns, dtype=torch.bool, device=scores.device)
    keep[[c for c in classes if 0 <= c < columns]] = True
    return scores.masked_fill(~keep, float("-inf"))
