"""Masked head: the current experience's cross-entropy sees only its own classes (reference SparCL)."""

from __future__ import annotations

from typing import Any

import torch
from avalanche.core import SupervisedPlugin

from avalanche_sparcl.logits import mask_other_classes


class MaskedHeadPlugin(SupervisedPlugin):
    """Sets the logits of classes outside the current experience to -inf for current samples.

    Current samples are recognised by their label (a class of the current experience), so buffer
    samples of earlier classes keep all logits for their replay terms, whatever the strategy's
    batch layout (ER, DER++, ER-ACE).
    """

    def after_forward(self, strategy: Any, **kwargs: Any) -> None:
        """Mask the logits of the current samples (after anything that reads raw logits)."""
        classes = list(strategy.experience.classes_in_this_experience)
        outputs = strategy.mb_output
        is_current_sample = torch.isin(strategy.mb_y, torch.as_tensor(classes, device=outputs.device))
        masked = mask_other_classes(outputs, classes)
        strategy.mb_output = torch.where(is_current_sample.unsqueeze(1), masked, outputs)
