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
from avalanche_sparcl.plugins.tdm import minibatches_per_epoch
from avalanche_sparcl.settings import check_options, default, experience_length, is_short_experience


class MaskedHeadPlugin(SupervisedPlugin, supports_distributed=True):
    """Sets the logits of classes outside the current experience to -inf for current samples.

    Current samples are the rows that came from the experience's data loader (buffer rows that DER,
    ER_ACE or ReservoirReplayPlugin add before the forward pass are left out) and carry a class of
    the current experience (Avalanche's ReplayPlugin mixes old-class buffer rows into the loader's
    batches). Buffer rows keep all logits for their replay terms, also when a reservoir buffer
    replays current-experience examples, as in the reference.

    An experience of fewer than ``min_masked_head_steps`` optimizer steps and fewer than 10 epochs is
    left unmasked (one warning): there the current classes only learn to compete with the old ones
    through the buffer's few current examples, and on Split Fashion-MNIST at 96 steps per experience
    the masked head cost SparCL-DER++ 3-7 points of Class-IL (docs/results.md).
    """

    rewrites_logits = True  # see plugins.composition
    active = True  # class defaults: objects pickled before the short-experience rule load as before
    starting = False
    warned_short = False
    min_masked_head_steps = 0

    def __init__(self, min_masked_head_steps: int = default("min_masked_head_steps")) -> None:
        super().__init__()
        self.min_masked_head_steps = check_options({"min_masked_head_steps": min_masked_head_steps})[
            "min_masked_head_steps"
        ]
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

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Note that an experience begins; its length is read at its first epoch (final loader)."""
        self.starting = True

    def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        """At the experience's first epoch: mask its logits only if it has enough optimizer steps."""
        if not self.starting:
            return
        self.starting = False
        epochs, minibatches = strategy.train_epochs, minibatches_per_epoch(strategy)
        self.active = not is_short_experience(epochs, minibatches, self.min_masked_head_steps)
        if self.active or self.warned_short:
            return
        self.warned_short = True
        warnings.warn(
            f"MaskedHeadPlugin: {experience_length(epochs, minibatches)} is shorter than "
            f"min_masked_head_steps={self.min_masked_head_steps}: there the current classes need their own "
            "examples to compete with the old ones, so the head is not masked in such experiences; "
            "min_masked_head_steps=0 forces it; this warning is given once",
            stacklevel=2,
        )

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        """Count the loader's rows before any buffer rows are prepended."""
        self.loader_rows = len(strategy.mbatch[0])

    def after_forward(self, strategy: Any, **kwargs: Any) -> None:
        """Mask the logits of the current samples (after anything that reads raw logits)."""
        if not self.active:
            return
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
