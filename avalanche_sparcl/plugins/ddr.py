"""DDRPlugin: dynamic data removal (SparCL Sec. 4.2) for Avalanche strategies, replay ones included.

Three Avalanche details are handled here, the algorithm lives in ``avalanche_sparcl.data_removal``:

- Which rows of a minibatch are which examples: the experience's training data gets a position data
  attribute; a collate function gives replay samples, which lack it, position -1 (never scored).
  ``adapted_dataset`` is tagged only while the loaders are built (replay plugins build theirs from it
  in ``before_training_exp``); from the first epoch on it is the untagged data again, so code reading
  it (a user's buffer, metrics) never sees positions.
- Removal between epochs: the train loader, whoever built it (the strategy, ReplayPlugin, GSS, ...),
  is edited in place: each of its datasets that carries positions is cut to the kept examples, the
  others (replay memory) stay, and the epoch length is recomputed as Avalanche's
  ``MultiDatasetDataLoader`` computes it. ``adapted_dataset`` becomes the untagged kept examples.
- The replay buffer reads only the kept examples: each storage policy's ``update`` is given a view of
  the experience with the removed examples left out (DER and ER fill it at the end of the
  experience). ER_ACE fills it when the experience starts, with all data; at every stage that update
  is redone from the state before it, with the kept examples, and ER_ACE's replay loader rebuilt.

Strategies that train on other data than the experience being trained (Cumulative, JointTraining,
GDumb, iCaRL), and train loaders that are not a ``MultiDatasetDataLoader``, are refused with a
ValueError at the first experience, before it trains.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from avalanche.benchmarks.utils.data_attribute import DataAttribute
from avalanche.benchmarks.utils.data_loader import MultiDatasetDataLoader, _make_data_loader
from avalanche.core import SupervisedPlugin
from avalanche.training import Cumulative, ICaRL, JointTraining
from avalanche.training.utils import cycle
from torch import Tensor

from avalanche_sparcl.data_removal import (
    DEFAULT_MIN_EXPERIENCE_STEPS,
    MIN_WINDOW_EPOCHS,
    DDRSettings,
    DynamicDataRemoval,
    ExperienceRemoval,
    too_few_steps,
)
from avalanche_sparcl.plugins.tdm import counted, minibatches_per_epoch
from avalanche_sparcl.validation import reject_unknown_options

POSITION_ATTRIBUTE = "ddr_position"
"""Data attribute holding each training example's position in its experience's dataset."""

NOT_FROM_EXPERIENCE = -1
"""Position given to minibatch rows that come from a replay buffer."""

OTHER_TRAINING_DATA: dict[type, str] = {
    Cumulative: "the data of every experience seen so far",
    JointTraining: "the data of all experiences at once",
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
        removal_ratio: float = 0.3,
        stages: int = 4,
        cutoff: float = 0.4,
        min_experience_steps: int = DEFAULT_MIN_EXPERIENCE_STEPS,
        **options: Any,
    ):
        super().__init__()
        accepted = {"removal_ratio", "stages", "cutoff", "min_experience_steps"}
        reject_unknown_options("DDRPlugin", set(options), accepted)
        self.removal = DynamicDataRemoval(DDRSettings(removal_ratio, stages, cutoff, min_experience_steps))
        self.full_dataset: Any = None  # the experience's (untagged) training data, before any removal
        self.loader_unchecked = False  # the experience's train loader is not checked yet
        self.minibatch_positions: Tensor | None = None
        self.experience_counter: int | None = None  # strategy.clock.train_exp_counter of the experience
        self.updated_at_start: list[BufferRefill] = []
        self.warned_short = False  # the too-short-experience warning is given once

    @property
    def settings(self) -> DDRSettings:
        """The validated hyperparameters."""
        return self.removal.settings

    @property
    def stage_counts(self) -> list[ExperienceRemoval]:
        """Per trained experience, in order: its size and each stage's epoch, removed and kept counts."""
        return self.removal.history

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        """Refuse strategies known to train on other data; route every replay buffer's update through
        the kept examples."""
        for strategy_type, other_data in OTHER_TRAINING_DATA.items():
            if isinstance(strategy, strategy_type):
                raise incompatible_strategy(strategy, other_data)
        for policy in storage_policies(strategy):
            if not isinstance(policy.update, KeptExamplesUpdate):
                policy.update = KeptExamplesUpdate(policy, policy.update, self)

    def after_train_dataset_adaptation(self, strategy: Any, **kwargs: Any) -> None:
        """Tag the experience's training examples with their positions (all data is back), for the
        loaders built next."""
        n_examples, n_adapted = len(strategy.experience.dataset), len(strategy.adapted_dataset)
        if n_adapted != n_examples:
            raise incompatible_strategy(
                strategy, f"other data ({n_adapted} examples for an experience of {n_examples})"
            )
        self.full_dataset = strategy.adapted_dataset
        strategy.adapted_dataset = with_positions(self.full_dataset)
        self.loader_unchecked = True

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Schedule this experience's stages and restart the statistics."""
        self.experience_counter = strategy.clock.train_exp_counter
        self.updated_at_start = [
            refill for refill in self.updated_at_start if refill.counter == self.experience_counter
        ]
        epochs, minibatches = strategy.train_epochs, minibatches_per_epoch(strategy)
        schedule = self.removal.start_experience(
            strategy.experience.current_experience, len(self.full_dataset), epochs, minibatches
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
                f"an experience of {epochs * minibatches} optimizer steps ({epochs} epochs of "
                f"{counted(minibatches, 'minibatch', 'minibatches')}) is shorter than min_experience_steps="
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
        """At the first epoch, check the final loader and untag ``adapted_dataset``; at a stage
        boundary, drop the easiest examples from the loader and the buffers."""
        if self.loader_unchecked:
            check_train_loader(strategy)
            strategy.adapted_dataset = self.full_dataset
            self.loader_unchecked = False
        kept = self.removal.remove_due(strategy.clock.train_exp_epochs)
        if kept is None:
            return
        strategy.adapted_dataset = self.full_dataset.subset(kept.tolist())
        keep_only_positions(strategy.dataloader, kept)
        for refill in self.updated_at_start:
            refill.redo_with_kept_examples(strategy)

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        """Take the position field off the minibatch, so ``mb_task_id`` is the task label again."""
        self.minibatch_positions = strategy.mbatch.pop()

    def after_forward(self, strategy: Any, **kwargs: Any) -> None:
        """Score the examples from this training forward pass itself (no extra forward).

        The minibatch's current examples are its last rows: DER prepends its buffer samples.
        """
        positions = self.minibatch_positions
        outputs, labels = strategy.mb_output, strategy.mb_y
        if len(outputs) < len(positions):
            raise RuntimeError(f"DDRPlugin: {len(outputs)} outputs for {len(positions)} examples")
        self.removal.observe(positions, outputs[-len(positions) :], labels[-len(positions) :])

    def kept_positions_now(self, strategy: Any) -> Tensor | None:
        """Kept positions if a buffer updating now reads the experience being trained and some of its
        examples were removed, else None."""
        record = self.removal.current
        if self.experience_counter != strategy.clock.train_exp_counter or record is None:
            return None
        return self.removal.kept_positions if record.stages else None


class PositionCollate:
    """Collates training minibatches; samples without the position field (replay) get position -1."""

    def __init__(self, base_collate: Any):
        self.base_collate = base_collate

    def __call__(self, samples: list[Any]) -> Any:
        width = max(len(sample) for sample in samples)
        if any(len(sample) != width for sample in samples):
            samples = [
                [*sample, NOT_FROM_EXPERIENCE] if len(sample) == width - 1 else sample for sample in samples
            ]
        return self.base_collate(samples)


def with_positions(dataset: Any) -> Any:
    """``dataset`` with each example's position appended to its fields (kept by ``subset``)."""
    positions = DataAttribute(range(len(dataset)), POSITION_ATTRIBUTE, use_in_getitem=True)
    tagged = dataset.update_data_attribute(POSITION_ATTRIBUTE, positions)
    if not isinstance(tagged.collate_fn, PositionCollate):
        tagged.collate_fn = PositionCollate(tagged.collate_fn)
    return tagged


def carries_positions(dataset: Any) -> bool:
    """Whether ``dataset`` holds examples of the experience being trained, tagged by DDR."""
    return isinstance(getattr(dataset, POSITION_ATTRIBUTE, None), DataAttribute)


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


def keep_only_positions(loader: MultiDatasetDataLoader, kept_positions: Tensor) -> None:
    """Cut each of the loader's tagged datasets to the kept examples, leaving the others (replay
    memory) as they are, and recompute the epoch length as ``MultiDatasetDataLoader`` does: from the
    longest of the experience's datasets (the termination dataset ReplayDataLoader picks)."""
    experience_parts: list[int] = []
    datasets, batch_sizes = [], []
    for dataset, batch_size in zip(loader.datasets, loader.batch_sizes, strict=True):
        if carries_positions(dataset):
            positions = torch.as_tensor(list(getattr(dataset, POSITION_ATTRIBUTE)))
            rows = torch.isin(positions, kept_positions).nonzero().flatten().tolist()
            if not rows:
                continue  # a task all of whose examples are removed: an empty sampler cannot be built
            dataset = dataset.subset(rows)
            experience_parts.append(len(datasets))
        datasets.append(dataset)
        batch_sizes.append(batch_size)
    loader.datasets, loader.batch_sizes = datasets, batch_sizes
    loader._persistent_loader = None  # its workers iterate the old datasets
    if loader.never_ending:
        return
    iterations = [
        len(
            _make_data_loader(
                datasets[part],
                loader.distributed_sampling,
                loader.loader_kwargs,
                batch_sizes[part],
                force_no_workers=True,
            )[0]
        )
        for part in experience_parts
    ]
    longest = max(range(len(iterations)), key=iterations.__getitem__)
    loader.termination_dataset = experience_parts[longest]
    loader.n_iterations = iterations[longest]


def storage_policies(strategy: Any) -> list[Any]:
    """The experience-boundary replay buffers of the strategy (DER, ER_ACE) and of its plugins
    (ReplayPlugin). A buffer filled at every step (ReservoirReplayPlugin) is left out: it only ever
    sees the minibatches trained on, so removed examples cannot enter it after their removal."""
    owners = [strategy, *strategy.plugins]
    policies = [getattr(owner, "storage_policy", None) for owner in owners]
    unique = {
        id(policy): policy
        for policy in policies
        if policy is not None and hasattr(policy, "update") and not getattr(policy, "fills_every_step", False)
    }
    return list(unique.values())


@contextmanager
def experience_of_kept_examples(strategy: Any, kept_positions: Tensor) -> Iterator[None]:
    """Within the block, ``strategy.experience.dataset`` holds only the kept examples."""
    experience = strategy.experience
    kept_view = copy.copy(experience)
    kept_view._dataset = experience.dataset.subset(kept_positions.tolist())
    strategy.experience = kept_view
    try:
        yield
    finally:
        strategy.experience = experience


class KeptExamplesUpdate:
    """Replaces a storage policy's ``update``: the buffer reads only the examples DDR kept.

    An update for an experience DDR has not started yet (ER_ACE fills its buffer before training)
    still sees all data; the policy's state before it is remembered, so every removal stage can redo it
    with the kept examples.
    """

    def __init__(self, policy: Any, original_update: Any, plugin: DDRPlugin):
        self.policy = policy
        self.original_update = original_update
        self.plugin = plugin

    def __call__(self, strategy: Any, **kwargs: Any) -> Any:
        kept_positions = self.plugin.kept_positions_now(strategy)
        if kept_positions is not None:
            with experience_of_kept_examples(strategy, kept_positions):
                return self.original_update(strategy, **kwargs)
        if self.plugin.experience_counter != strategy.clock.train_exp_counter:
            self.plugin.updated_at_start.append(
                BufferRefill(self, strategy.clock.train_exp_counter, policy_state(self.policy), kwargs)
            )
        return self.original_update(strategy, **kwargs)


class BufferRefill:
    """An experience-start buffer update (ER_ACE) to redo with the kept examples after each stage."""

    def __init__(self, update: KeptExamplesUpdate, counter: int, state_before: dict, kwargs: dict):
        self.update = update
        self.counter = counter
        self.state_before = state_before
        self.kwargs = kwargs

    def redo_with_kept_examples(self, strategy: Any) -> None:
        """Restore the buffer as it was before the update, update it from the kept examples, and give
        the strategy a replay loader over the new buffer (ER_ACE draws from its own)."""
        policy = self.update.policy
        vars(policy).clear()
        vars(policy).update(policy_state_copy(self.state_before))
        self.update(strategy, **self.kwargs)
        if policy is getattr(strategy, "storage_policy", None) and getattr(strategy, "replay_loader", None):
            rebuild_strategy_replay_loader(strategy)


def policy_state(policy: Any) -> dict:
    """A copy of a storage policy's state, deep enough that later updates do not change it.

    Buffers replace their datasets and weight tensors rather than mutating them, so copying the
    containers and the per-group buffer objects suffices (no example data is copied).
    """
    return policy_state_copy(vars(policy))


def policy_state_copy(state: dict) -> dict:
    """Copy of a state dict: containers and group buffers copied, datasets and tensors shared."""
    copied = {}
    for name, value in state.items():
        if isinstance(value, dict):
            copied[name] = {key: copy.copy(item) for key, item in value.items()}
        elif isinstance(value, (set, list)):
            copied[name] = copy.copy(value)
        else:
            copied[name] = value
    return copied


def rebuild_strategy_replay_loader(strategy: Any) -> None:
    """A replay loader over the strategy's current buffer, as ER_ACE builds it at experience start."""
    buffer = strategy.storage_policy.buffer
    if len(buffer) < strategy.batch_size_mem:
        strategy.replay_loader = None
        return
    strategy.replay_loader = cycle(
        torch.utils.data.DataLoader(buffer, batch_size=strategy.batch_size_mem, shuffle=True, drop_last=True)
    )
