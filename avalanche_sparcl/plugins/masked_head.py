"""Masked head: the current experience's cross-entropy sees only its own classes (reference SparCL)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor

from avalanche_sparcl.logits import kept_columns
from avalanche_sparcl.plugins.composition import replays_current_examples


class MaskedHeadPlugin(SupervisedPlugin, supports_distributed=True):
    """Sets the logits of classes outside the current experience to -inf for current samples.

    Current samples are the rows that came from the experience's data loader (buffer rows that DER,
    ER_ACE or ReservoirReplayPlugin add before the forward pass are left out) and carry a class of
    the current experience (Avalanche's ReplayPlugin mixes old-class buffer rows into the loader's
    batches). Buffer rows keep all logits for their replay terms, also when a reservoir buffer
    replays current-experience examples, as in the reference.
    """

    rewrites_logits = True  # see plugins.composition

    def __init__(self) -> None:
        super().__init__()
        self.loader_rows = 0
        self.columns_key: tuple | None = None
        self.columns: tuple[Tensor, Tensor] | None = None

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        """Warn when no buffer replays current examples: the newest classes would never compete."""
        if not replays_current_examples(strategy.plugins):
            warnings.warn(
                "masked head without ReservoirReplayPlugin: Avalanche's own buffers hold only earlier "
                "experiences, so the current classes never compete with the old ones in any loss term "
                "and the newest experience is mostly lost in Class-IL; add ReservoirReplayPlugin(mem_size) "
                "before SparCLPlugin, as the SparCL reference does",
                stacklevel=2,
            )

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        """Count the loader's rows before any buffer rows are prepended."""
        self.loader_rows = len(strategy.mbatch[0])

    def after_forward(self, strategy: Any, **kwargs: Any) -> None:
        """Mask the logits of the current samples (after anything that reads raw logits)."""
        outputs = strategy.mb_output
        classes, kept = self.experience_columns(strategy.experience.classes_in_this_experience, outputs)
        is_current_sample = torch.isin(strategy.mb_y, classes)
        from_loader = torch.arange(len(outputs), device=outputs.device) >= len(outputs) - self.loader_rows
        masked = outputs.masked_fill(~kept, float("-inf"))
        strategy.mb_output = torch.where((is_current_sample & from_loader).unsqueeze(1), masked, outputs)

    def experience_columns(self, classes: Iterable[int], outputs: Tensor) -> tuple[Tensor, Tensor]:
        """The experience's classes and its kept logit columns on the outputs' device.

        Built once per experience: moving them to a GPU waits for it, which no ordinary step should.
        """
        key = (tuple(classes), outputs.device, outputs.shape[-1])
        if self.columns_key != key:
            self.columns = (
                torch.as_tensor(key[0], dtype=torch.long, device=outputs.device),
                kept_columns(outputs.shape[-1], key[0], outputs.device),
            )
            self.columns_key = key
        return self.columns
