"""Masked head: the current experience's cross-entropy sees only its own classes (reference SparCL)."""

from __future__ import annotations

from typing import Any

import torch
from avalanche.core import SupervisedPlugin


class MaskedHeadPlugin(SupervisedPlugin):
    """Sets the logits of classes outside the current experience to -inf for current samples.

    Current samples are recognised by their label (a class of the current experience), so buffer
    samples of earlier classes keep all logits for their replay terms, whatever the strategy's
    batch layout (ER, DER++, ER-ACE).
    """

    def after_forward(self, strategy: Any, **kwargs: Any) -> None:
        """Mask the logits of the current samples (after anything that reads raw logits)."""
        current_classes = torch.as_tensor(
            list(strategy.experience.classes_in_this_experience), device=strategy.mb_output.device
        )
        outputs = strategy.mb_output
        is_current_sample = torch.isin(strategy.mb_y, current_classes)
        is_other_class = ~torch.isin(torch.arange(outputs.shape[1], device=outputs.device), current_classes)
        hidden = is_current_sample.unsqueeze(1) & is_other_class.unsqueeze(0)
        strategy.mb_output = outputs.masked_fill(hidden, float("-inf"))
