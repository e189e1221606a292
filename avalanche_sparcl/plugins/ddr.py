"""DDRPlugin: dynamic data removal (SparCL Sec. 4.2) for Avalanche strategies, replay ones included.

Three Avalanche details are handled here, the algorithm lives in ``avalanche_sparcl.data_removal``:

- Which rows of a minibatch are which examples: the experience's training data gets a position data
  attribute while the loaders are built (replay plugins build theirs from ``adapted_dataset`` in
  ``before_training_exp``); a collate function gives replay samples, which lack it, position -1
  (never scored). The train loader is then wrapped so that the positions are taken off each minibatch
  before the strategy sees it: the minibatch every plugin reads is Avalanche's own. From the first
  epoch on ``adapted_dataset`` is the untagged data again.
- Removal between epochs: the train loader, whoever built it (the strategy, ReplayPlugin, GSS, ...),
  is edited in place: each of its datasets that carries positions is cut to the kept examples, the
  others (replay memory) stay, and the epoch length is recomputed as Avalanche's
  ``MultiDatasetDataLoader`` computes it. ``adapted_dataset`` becomes the untagged kept examples.
- The replay buffer reads only the kept examples: from the first stage on, ``strategy.experience`` is
  a view of the experience whose dataset holds the kept examples, which is what every buffer reads
  when the experience ends (DER, ReplayPlugin, ...). ER_ACE fills its buffer when the experience
  starts, with all data; at every stage that update is redone from the state before it, with the
  kept examples, and ER_ACE's replay loader rebuilt.

An experience too short for any removal (2 epochs or fewer, or fewer than ``min_experience_steps``
optimizer steps) is left alone: no positions, no statistics, any train loader. Strategies that train
on other data than the experience being trained (Cumulative, JointTraining, GDumb, iCaRL) are refused
with a ValueError before training starts; a train loader that is not a ``MultiDatasetDataLoader`` is
refused at the first epoch of an experience DDR would cut, before its first step.
"""

from __future__ import annotations

import warnings
from typing import Any

from avalanche.benchmarks.utils.data_loader import MultiDatasetDataLoader
from avalanche.core import SupervisedPlugin
from avalanche.training import Cumulative, GDumb, ICaRL, JointTraining
from avalanche.training.plugins import GDumbPlugin
from torch import Tensor

from avalanche_sparcl.data_removal import (
    MIN_WINDOW_EPOCHS,
    DDRSettings,
    DynamicDataRemoval,
    ExperienceRemoval,
    too_few_steps,
)
from avalanche_sparcl.plugins.ddr_buffers import (
    BufferRefill,
    KeptExamplesUpdate,
    experience_of_kept_examples,
    storage_policies,
)
from avalanche_sparcl.plugins.ddr_positions import (
    POSITION_ATTRIBUTE,
    MinibatchPositions,
    carries_positions,
    keep_only_positions,
    with_positions,
)
from avalanche_sparcl.plugins.tdm import minibatches_per_epoch
from avalanche_sparcl.settings import default, experience_length
from avalanche_sparcl.validation import reject_unknown_options

OTHER_TRAINING_DATA: dict[type, str] = {
    Cumulative: "the data of every experience seen so far",
    JointTraining: "the data of all experiences at once",
    GDumb: "its own class-balanced buffer of examples from every experience seen so far",
    GDumbPlugin: "its own class-balanced buffer of examples from every experience seen so far",
    ICaRL: "the experience's data joined with its exemplars, which loses DDR's example positions",
}
"""Strategies known to train on more than the experience's data, with what they train on."""


class DDRPlugin(SupervisedPlugin, supports_distributed=True):
    """Removes the easiest examples of each experience in stages, so later epochs cost less and the
    replay buffer is filled with the harder, kept examples (SparCL Sec. 4.2).

    ``removal_ratio`` of the experience's examples (in [0, 1)) are gone by ``cutoff`` (fraction of the
    experience's epochs, in (0, 1]), removed in ``stages`` equal stages at epoch boundaries, each
    window at least 2 epochs long so forgetting events can show (fewer stages when the experience is
    short, none below 3 epochs); the last (hardest) example of a class is never removed. An
    experience of fewer than ``min_experience_steps`` optimizer steps keeps all its data (one
    warning). Defaults are the paper setting: 30% in 4 stages at epochs 5, 10, 15, 20 of 50; at 10
    epochs 15% at each of epochs 2 and 4. ``stage_counts`` holds one
    :class:`ExperienceRemoval` per trained experience with the kept/removed counts of each stage.
    """

    def __init__(
        self,
        removal_ratio: float = default("removal_ratio"),
        stages: int = default("stages"),
        cutoff: float = default("cutoff"),
        min_experience_steps: int = default("min_experience_steps"),
        **options: Any,
    ):
        super().__init__()
        accepted = {"removal_ratio", "stages", "cutoff", "min_experience_steps"}
        reject_unknown_options("DDRPlugin", set(options), accepted)
        self.removal = DynamicDataRemoval(DDRSettings(removal_ratio, stages, cutoff, min_experience_steps))
        self.full_dataset: Any = None  # the experience's (untagged) training data, before any removal
        self.full_experience: Any = None  # the experience being trained, before any removal
        self.tagged = False  # the experience's data carry positions (DDR may remove some)
        self.loader_unchecked = False  # the experience's train loader is not checked yet
        self.positions_loader: MinibatchPositions | None = None
        self.minibatch_positions: Tensor | None = None
        self.experience_counter: int | None = None  # strategy.clock.train_exp_counter of the experience
        self.updated_at_start: list[BufferRefill] = []
        self.warned_short = False  # the too-short-experience warning is given once

    def __setstate__(self, state: dict) -> None:
        """Checkpoints are taken between experiences: the next one starts afresh."""
        self.__dict__.update({"full_experience": None, "tagged": False, "positions_loader": None, **state})

    @property
    def settings(self) -> DDRSettings:
        """The validated hyperparameters."""
        return self.removal.settings

    @property
    def stage_counts(self) -> list[ExperienceRemoval]:
        """Per trained experience, in order: its size and each stage's epoch, removed and kept counts."""
        return self.removal.history

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        """Refuse strategies known to train on other data, before anything is changed; note every
        experience-start buffer update (ER_ACE's), to redo it with the kept examples."""
        if self.settings.removal_ratio == 0:
            return
        for owner in [strategy, *strategy.plugins]:
            for owner_type, other_data in OTHER_TRAINING_DATA.items():
                if isinstance(owner, owner_type):
                    raise incompatible_strategy(strategy, other_data)
        for policy in storage_policies(strategy):
            if not isinstance(policy.update, KeptExamplesUpdate):
                policy.update = KeptExamplesUpdate(policy, policy.update, self)

    def after_train_dataset_adaptation(self, strategy: Any, **kwargs: Any) -> None:
        """Tag the experience's training examples with their positions (all data is back), for the
        loaders built next; not when the experience is too short for any removal."""
        self.tagged = self.settings.removal_ratio != 0 and strategy.train_epochs > MIN_WINDOW_EPOCHS
        self.positions_loader = self.minibatch_positions = None
        if not self.tagged:
            return
        n_examples, n_adapted = len(strategy.experience.dataset), len(strategy.adapted_dataset)
        if n_adapted != n_examples:
            raise incompatible_strategy(
                strategy, f"other data ({n_adapted} examples for an experience of {n_examples})"
            )
        self.full_dataset = strategy.adapted_dataset
        self.full_experience = strategy.experience
        strategy.adapted_dataset = with_positions(self.full_dataset)
        self.loader_unchecked = True

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Schedule this experience's stages and restart the statistics."""
        self.experience_counter = strategy.clock.train_exp_counter
        self.updated_at_start = [
            refill for refill in self.updated_at_start if refill.counter == self.experience_counter
        ]
        epochs, minibatches = strategy.train_epochs, minibatches_per_epoch(strategy)
        n_examples = len(self.full_dataset) if self.tagged else len(strategy.experience.dataset)
        schedule = self.removal.start_experience(
            strategy.experience.current_experience, n_examples, epochs, minibatches
        )
        if schedule or self.settings.removal_ratio == 0 or self.warned_short:
            return
        if epochs <= MIN_WINDOW_EPOCHS:
            reason = (
                f"DDR needs at least {MIN_WINDOW_EPOCHS + 1} epochs per experience to observe each "
                "example twice before removing any, so no data is removed from an experience of "
                f"{epochs} epoch{'' if epochs == 1 else 's'}"
            )
        elif too_few_steps(epochs, minibatches, self.settings):
            reason = (
                f"{experience_length(epochs, minibatches)} is shorter than min_experience_steps="
                f"{self.settings.min_experience_steps}: the network still needs every example, so "
                "no data is removed from such experiences; min_experience_steps=0 forces removal"
            )
        else:
            return
        warnings.warn(
            f"DDRPlugin: {reason}; removal_ratio=0 turns DDR off; this warning is given once",
            stacklevel=2,
        )
        self.warned_short = True

    def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        """At the first epoch, check the final loader, take the positions off its minibatches and
        untag ``adapted_dataset``; at a stage boundary, drop the easiest examples from the loader and
        from what the buffers will read."""
        if self.loader_unchecked:
            self.loader_unchecked = False
            removes = bool(self.removal.schedule)
            if removes:
                check_train_loader(strategy)
            strategy.adapted_dataset = self.full_dataset
            self.positions_loader = MinibatchPositions(strategy.dataloader, self)
            strategy.dataloader = self.positions_loader
        if not self.tagged:
            return
        kept = self.removal.remove_due(strategy.clock.train_exp_epochs)
        if kept is None:
            return
        strategy.adapted_dataset = self.full_dataset.subset(kept.tolist())
        strategy.experience = experience_of_kept_examples(self.full_experience, kept)
        keep_only_positions(self.positions_loader.loader, kept)
        for refill in self.updated_at_start:
            refill.redo_with_kept_examples(strategy)

    def after_forward(self, strategy: Any, **kwargs: Any) -> None:
        """Score the examples from this training forward pass itself (no extra forward).

        The minibatch's current examples are its last rows: DER prepends its buffer samples.
        """
        positions = self.minibatch_positions
        if positions is None:  # no positions: the experience is not tagged (DDR leaves it alone)
            return
        outputs, labels = strategy.mb_output, strategy.mb_y
        if len(outputs) < len(positions):
            raise RuntimeError(f"DDRPlugin: {len(outputs)} outputs for {len(positions)} examples")
        self.removal.observe(positions, outputs[-len(positions) :], labels[-len(positions) :])

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """The experience is over: nothing is tagged or observed until the next one starts."""
        self.tagged = self.loader_unchecked = False
        self.positions_loader = self.minibatch_positions = None
        self.full_experience = None


def incompatible_strategy(strategy: Any, other_data: str) -> ValueError:
    """The refusal for a strategy that trains on other data than the examples DDR removes from."""
    name = type(strategy).__name__
    return ValueError(
        f"DDRPlugin cannot be used with {name}: DDR removes examples of the experience being trained, "
        f"while {name} trains on {other_data}. Set removal_ratio=0 in SparCLPlugin or drop DDRPlugin "
        f"to train {name} without data removal."
    )


def check_train_loader(strategy: Any) -> None:
    """The experience's final train loader must be one DDR can cut down and must read its tagged data."""
    loader = strategy.dataloader
    if not isinstance(loader, MultiDatasetDataLoader):
        raise ValueError(
            "DDRPlugin removes examples from the train loader between epochs, which needs an Avalanche "
            "MultiDatasetDataLoader (TaskBalancedDataLoader, ReplayDataLoader, ...); "
            f"{type(strategy).__name__} trains from a {type(loader).__name__}. Set removal_ratio=0 in "
            "SparCLPlugin or drop DDRPlugin to train it without data removal."
        )
    if not any(carries_positions(dataset) for dataset in loader.datasets):
        raise incompatible_strategy(strategy, "other data (its buffer)")


__all__ = [  # imported from here by tests and older checkpoints
    "POSITION_ATTRIBUTE",
    "BufferRefill",
    "DDRPlugin",
    "KeptExamplesUpdate",
    "keep_only_positions",
    "with_positions",
]
