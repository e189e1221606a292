"""DDR's engine: dynamic data removal of the easiest training examples (SparCL Sec. 4.2).

Framework-free: a plain training loop or an Avalanche plugin drives it with three calls,
``start_experience`` (when an experience starts), ``observe`` (after each training forward pass, with
the logits that pass already computed) and ``remove_due`` (at each epoch boundary), and trains on the
``kept_positions`` it returns.

Difficulty is Toneva et al.'s forgetting-event count, as in the paper: how often an example went from
correctly to wrongly classified (``argmax`` over all logits) between two consecutive observations
within the window since the last removal. Unlike the reference code, ties - the common case in a
short window - are broken by a real signal, the example's mean training loss over the window, then
by position, never by arrival order.

An event needs two observations of an example in the window, and each example is seen once per
epoch, so every removal window spans at least ``MIN_WINDOW_EPOCHS`` (2) epochs: the first stage is
at epoch 2 or later and consecutive stages are at least 2 epochs apart. With one-epoch windows no
event could ever happen and the mean loss alone would rank the examples. An experience of fewer
than ``MIN_WINDOW_EPOCHS + 1`` epochs therefore removes nothing.

Removal also needs steps: a stage trades the removed examples' steps for the network's training, and
in an experience of few optimizer steps the network is still learning the "easy" examples when they
go. An experience of fewer than ``min_experience_steps`` optimizer steps (default 256; epochs times
minibatches per epoch when it starts) and fewer than ``FULL_SCHEDULE_EPOCHS`` (10) epochs removes
nothing (the measured effect is in docs/results.md, "Short schedules"); the paper setting (50
epochs, thousands of steps) is never affected.

DDR never removes the last example of a class: the hardest kept example of each class it has observed
(by the label seen in ``observe``) stays, so any ``removal_ratio`` in [0, 1) trains on every class of
the experience to its end, and near 1 the ratio is a ceiling (0.999 keeps one example per class).

Data-parallel training: each rank observes its shard of the experience, so before a stage the ranks
pool their statistics (``ForgettingStatistics.combine_across_ranks``) and every rank removes the same
global set, of the same size as in one process; the kept sets are checked to agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from avalanche_sparcl.distributed import (
    check_agreement,
    is_distributed,
    max_across_ranks,
    min_across_ranks,
    rank,
    sum_across_ranks,
    world_size,
)
from avalanche_sparcl.settings import (
    check_options,
    default,
    is_short_experience,
    options_of,
)

UNKNOWN_LABEL = -1
"""Label recorded for an example DDR has not observed yet."""

MIN_WINDOW_EPOCHS = 2
"""Fewest epochs a removal window spans: a forgetting event needs two observations of an example,
and each example is observed once per epoch."""

DEFAULT_MIN_EXPERIENCE_STEPS = default("min_experience_steps")
"""Fewest optimizer steps an experience needs for DDR to remove any of its data (module docstring)."""


@dataclass(frozen=True)
class DDRSettings:
    """DDR hyperparameters; defaults are the paper setting (30% removed in 4 stages by epoch 20 of 50).

    ``removal_ratio`` in [0, 1) is the share of the experience's examples removed by the cutoff, at
    most: the hardest example of each class is always kept (see the module docstring).
    """

    removal_ratio: float = default("removal_ratio")
    stages: int = default("stages")
    cutoff: float = default("cutoff")
    min_experience_steps: int = default("min_experience_steps")

    def __post_init__(self) -> None:
        names = options_of("ddr")
        for name, value in check_options({name: getattr(self, name) for name in names}).items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class RemovalStage:
    """One scheduled removal: before (0-based) ``epoch`` starts, drop the ``count`` easiest examples."""

    epoch: int
    count: int


def removal_target(n_examples: int, removal_ratio: float) -> int:
    """How many of the experience's examples are gone by the cutoff: ratio * n, rounded half up."""
    return min(n_examples, math.floor(removal_ratio * n_examples + 0.5))


def last_removal_epoch(n_epochs: int, cutoff: float) -> int:
    """The last epoch boundary a stage may use: ``cutoff * n_epochs`` rounded down, kept inside
    ``MIN_WINDOW_EPOCHS..n_epochs - 1``.

    A boundary before ``MIN_WINDOW_EPOCHS`` has seen each example only once, so no forgetting event,
    and one at ``n_epochs`` has nothing left to save; a short experience (3 epochs) still removes
    once, at epoch 2, rather than not at all.
    """
    return min(n_epochs - 1, max(MIN_WINDOW_EPOCHS, math.floor(round(cutoff * n_epochs, 9))))


def removal_schedule(n_examples: int, n_epochs: int, settings: DDRSettings) -> list[RemovalStage]:
    """The experience's removal stages: equal counts at evenly spread epoch boundaries up to the cutoff.

    Every window (from epoch 0 or the previous stage to the next stage) spans at least
    ``MIN_WINDOW_EPOCHS`` epochs, so every kept example is observed at least twice before it can be
    removed: there are ``min(stages, last_epoch // MIN_WINDOW_EPOCHS, total)`` stages, at epochs
    ``ceil(last_epoch * k / n_stages)``. Paper setting (50 epochs, 10000 examples): 750 examples at
    each of epochs 5, 10, 15 and 20; 10 epochs: 15% at each of epochs 2 and 4. With too few epochs
    (or examples) for ``stages`` stages there are fewer, larger ones; with fewer than
    ``MIN_WINDOW_EPOCHS + 1`` epochs no window fits before training ends, so the schedule is empty.
    """
    total = removal_target(n_examples, settings.removal_ratio)
    if n_epochs <= MIN_WINDOW_EPOCHS or total == 0:
        return []
    last_epoch = last_removal_epoch(n_epochs, settings.cutoff)
    n_stages = min(settings.stages, last_epoch // MIN_WINDOW_EPOCHS, total)
    removed_by_stage = [total * stage // n_stages for stage in range(n_stages + 1)]
    return [
        RemovalStage(
            epoch=math.ceil(round(last_epoch * stage / n_stages, 9)),
            count=removed_by_stage[stage] - removed_by_stage[stage - 1],
        )
        for stage in range(1, n_stages + 1)
    ]


def too_few_steps(n_epochs: int, iterations_per_epoch: int | None, settings: DDRSettings) -> bool:
    """Whether an experience of ``n_epochs`` epochs of ``iterations_per_epoch`` minibatches is too
    short for DDR: fewer than ``min_experience_steps`` optimizer steps and fewer than
    ``FULL_SCHEDULE_EPOCHS`` epochs (unknown length: not too short)."""
    return is_short_experience(n_epochs, iterations_per_epoch, settings.min_experience_steps)


class ForgettingStatistics:
    """Per-example forgetting events and mean loss over one window of training (SparCL Sec. 4.2).

    All updates are vectorised scatters over the minibatch's positions, on the logits' device.
    ``labels`` holds each example's label as last observed (-1: never observed); unlike the window's
    statistics it outlives ``reset``.
    """

    def __init__(self, n_examples: int, device: torch.device | str = "cpu"):
        self.n_examples = n_examples
        self.device = torch.device(device)
        self.labels = torch.full((n_examples + 1,), UNKNOWN_LABEL, dtype=torch.long, device=self.device)
        self.reset()

    def reset(self) -> None:
        """Start a new window: the paper restarts the statistics after each removal stage.

        One slot past the examples collects the rows that belong to no example (replay samples,
        position -1), so an update never has to filter rows, which would synchronise with the GPU.
        """
        n, device = self.n_examples + 1, self.device
        self.forgetting_events = torch.zeros(n, dtype=torch.long, device=device)
        self.correct_count = torch.zeros(n, dtype=torch.long, device=device)
        self.observations = torch.zeros(n, dtype=torch.long, device=device)
        self.loss_sum = torch.zeros(n, dtype=torch.float64, device=device)
        self.last_correct = torch.zeros(n, dtype=torch.bool, device=device)

    @torch.no_grad()
    def observe(self, positions: Tensor, logits: Tensor, labels: Tensor) -> None:
        """Record one forward pass: rows of ``logits`` belong to the examples at ``positions``."""
        if logits.device != self.device:
            self._move_to(logits.device)
        positions = positions.to(self.device, torch.long, non_blocking=True)  # no host wait
        positions = torch.where(positions >= 0, positions, self.n_examples)
        logits, labels = logits.detach(), labels.to(self.device)
        correct = logits.argmax(dim=1) == labels
        losses = F.cross_entropy(logits.float(), labels, reduction="none").to(torch.float64)
        # last_correct is only ever True where an observation was made: no need to read observations
        forgotten = self.last_correct[positions] & ~correct
        self.forgetting_events.index_add_(0, positions, forgotten.long())
        self.correct_count.index_add_(0, positions, correct.long())
        self.observations.index_add_(0, positions, torch.ones_like(positions))
        self.loss_sum.index_add_(0, positions, losses)
        self.last_correct[positions] = correct
        self.labels[positions] = labels.long()

    def combine_across_ranks(self) -> None:
        """Replace this rank's window by the whole job's, identical on every rank.

        Each example counts with the observations of one rank only, the lowest that observed it:
        a distributed sampler pads its shards with repeats of a few examples, seen by two ranks at
        different steps, and adding their sequences would count forgetting events twice.
        """
        if not is_distributed():
            return
        observed = self.observations > 0
        owner = torch.where(observed, rank(), world_size())
        mine = (min_across_ranks(owner) == rank()) & observed
        for name in ("forgetting_events", "correct_count", "observations", "loss_sum", "last_correct"):
            setattr(self, name, sum_across_ranks(getattr(self, name) * mine))
        self.last_correct = self.last_correct.bool()
        self.labels = max_across_ranks(self.labels)

    def difficulty_keys(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """(forgetting score, mean loss) of each position; never correct in the window scores +inf."""
        positions = positions.to(self.device, torch.long, non_blocking=True)  # no host wait
        never_correct = self.correct_count[positions] == 0
        score = self.forgetting_events[positions].to(torch.float64).masked_fill(never_correct, math.inf)
        observations = self.observations[positions]
        mean_loss = torch.where(
            observations > 0,
            self.loss_sum[positions] / observations.clamp(min=1),
            torch.full_like(score, math.inf),
        )
        return score, mean_loss

    def easiest_first(self, positions: Tensor) -> Tensor:
        """``positions`` ordered easiest first: fewest forgetting events, then lowest mean loss, then
        lowest position (a deterministic last resort)."""
        positions = torch.sort(positions.to(self.device, torch.long)).values
        score, mean_loss = self.difficulty_keys(positions)
        order = torch.sort(mean_loss, stable=True).indices
        order = order[torch.sort(score[order], stable=True).indices]
        return positions[order]

    def _move_to(self, device: torch.device) -> None:
        self.device = device
        kept_on_device = ("forgetting_events", "correct_count", "observations", "loss_sum", "last_correct")
        for name in (*kept_on_device, "labels"):
            setattr(self, name, getattr(self, name).to(device))


def select_easiest(statistics: ForgettingStatistics, candidates: Tensor, count: int) -> Tensor:
    """Exactly ``count`` of ``candidates`` (distinct positions), the easiest ones, sorted by position."""
    if not 0 <= count <= len(candidates):
        raise ValueError(f"count must be in [0, {len(candidates)}], got {count}")
    return torch.sort(statistics.easiest_first(candidates)[:count]).values


def select_removable(statistics: ForgettingStatistics, candidates: Tensor, count: int) -> Tensor:
    """Up to ``count`` of ``candidates``, the easiest ones, sparing the hardest candidate of each
    label (examples never observed share one label); sorted by position.

    Fewer than ``count`` come back when the rest are the last of their class.
    """
    ordered = statistics.easiest_first(candidates)
    removable = ordered[~last_of_each_label(statistics.labels[ordered])]
    return torch.sort(removable[:count]).values


def last_of_each_label(labels: Tensor) -> Tensor:
    """Bool mask of the last occurrence of each distinct value of ``labels``."""
    _, group = torch.unique(labels, return_inverse=True)
    order = torch.arange(len(labels), device=labels.device)
    last = torch.full((len(labels),), -1, dtype=torch.long, device=labels.device)
    last = last.scatter_reduce(0, group, order, reduce="amax")
    is_last = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
    is_last[last[last >= 0]] = True
    return is_last


@dataclass(frozen=True)
class StageRecord:
    """What one removal stage did: before ``epoch`` it removed ``removed`` examples, ``kept`` remain."""

    epoch: int
    removed: int
    kept: int
    removed_positions: tuple[int, ...] = field(repr=False)


@dataclass
class ExperienceRemoval:
    """One experience's removal history (for metrics and users); positions index its dataset."""

    experience: int
    n_examples: int
    n_epochs: int
    stages: list[StageRecord] = field(default_factory=list)

    @property
    def kept(self) -> int:
        """Examples still trained on after the last stage so far."""
        return self.stages[-1].kept if self.stages else self.n_examples

    @property
    def removed_positions(self) -> list[int]:
        """Every position removed in this experience, in stage order."""
        return [position for stage in self.stages for position in stage.removed_positions]


class DynamicDataRemoval:
    """Owns one experience's kept set, its forgetting statistics and its removal schedule."""

    def __init__(self, settings: DDRSettings | None = None):
        self.settings = settings or DDRSettings()
        self.history: list[ExperienceRemoval] = []
        self.schedule: list[RemovalStage] = []
        self.statistics = ForgettingStatistics(0)
        self.kept_positions = torch.zeros(0, dtype=torch.long)

    @property
    def current(self) -> ExperienceRemoval | None:
        """The record of the experience in progress (or the last one trained)."""
        return self.history[-1] if self.history else None

    def start_experience(
        self, experience: int, n_examples: int, n_epochs: int, iterations_per_epoch: int | None = None
    ) -> list[RemovalStage]:
        """All data back, fresh statistics, a schedule for this experience; returns the schedule,
        empty when the experience has fewer than ``min_experience_steps`` optimizer steps (given
        ``iterations_per_epoch``)."""
        self.schedule = removal_schedule(n_examples, n_epochs, self.settings)
        if too_few_steps(n_epochs, iterations_per_epoch, self.settings):
            self.schedule = []
        device = self.statistics.device
        self.statistics = ForgettingStatistics(n_examples, device)
        self.kept_positions = torch.arange(n_examples)
        self.history.append(ExperienceRemoval(experience, n_examples, n_epochs))
        return self.schedule

    def observe(self, positions: Tensor, logits: Tensor, labels: Tensor) -> None:
        """Feed one training forward pass; rows whose position is negative (replay) are ignored."""
        self.statistics.observe(positions, logits, labels)

    def remove_due(self, epoch: int) -> Tensor | None:
        """Run the stage scheduled before ``epoch``, if any: drop the easiest kept examples, but never
        the last of a class, restart the statistics, and return the new kept positions (sorted); None
        when no stage is due."""
        due = [stage for stage in self.schedule if stage.epoch == epoch]
        if not due:
            return None
        count = sum(stage.count for stage in due)
        self.statistics.combine_across_ranks()
        removed = select_removable(self.statistics, self.kept_positions, count).cpu()
        self.kept_positions = self.kept_positions[~torch.isin(self.kept_positions, removed)]
        check_agreement(f"DDR's kept examples before epoch {epoch}", {"kept_positions": self.kept_positions})
        self.statistics.reset()
        self.current.stages.append(
            StageRecord(epoch, len(removed), len(self.kept_positions), tuple(removed.tolist()))
        )
        return self.kept_positions
