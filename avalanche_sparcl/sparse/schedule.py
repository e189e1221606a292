"""When TDM changes the mask within an experience (SparCL Sec. 4.1, task-aware dynamic masking).

Positions are measured in epochs of the current experience as a float (``epoch + iteration /
iterations_per_epoch``), and the schedule is written as fractions of the experience's epochs, so a
5-epoch CPU run and the paper's 50-epoch run share one code path: at 50 epochs the updates land on
epoch boundaries (5, 10, ..., 40), at 5 epochs on iterations inside epochs.

Paper setting at 50 epochs: expand by 1% of each layer when the experience starts, shrink back to
the target at epoch 5, swap 1% of each layer (prune by CWI, regrow at random) at epochs 10-40,
frozen from epoch 45.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from avalanche_sparcl.settings import OPTIONS


class MaskUpdateKind(str, Enum):
    """What a scheduled mask update does to each layer."""

    SHRINK = "shrink"  # prune the experience-start expansion back to the target, by importance
    MUTATE = "mutate"  # prune a further mutate_ratio by importance, regrow as many at random


@dataclass(frozen=True)
class MaskUpdate:
    """One scheduled update: where it falls (in epochs of the experience) and what it does."""

    position: float
    kind: MaskUpdateKind


def mask_updates(n_epochs: int, update_every: float, freeze_at: float) -> list[MaskUpdate]:
    """The experience's mask updates: every ``update_every`` of the epochs, none from ``freeze_at``.

    The first update shrinks the experience-start expansion; the later ones mutate. ``update_every``
    must lie in [MIN_UPDATE_EVERY, 1], so there are at most ``1 / MIN_UPDATE_EVERY`` updates.
    """
    OPTIONS["update_every"].range.check("update_every", update_every)
    updates = []
    step = 1
    while True:
        fraction = round(step * update_every, 9)
        if fraction >= freeze_at or fraction >= 1.0:
            break
        kind = MaskUpdateKind.SHRINK if step == 1 else MaskUpdateKind.MUTATE
        updates.append(MaskUpdate(round(fraction * n_epochs, 9), kind))
        step += 1
    return updates


class ExperienceSchedule:
    """Cursor over one experience's mask updates: which are due at the current iteration."""

    def __init__(self, updates: list[MaskUpdate]):
        self.updates = updates
        self.next_index = 0

    @property
    def updates_left(self) -> bool:
        """Whether a mask update is still to come in this experience (else the mask is frozen)."""
        return self.next_index < len(self.updates)

    @property
    def upcoming(self) -> MaskUpdate | None:
        """The next update of this experience (None once the mask is frozen)."""
        return self.updates[self.next_index] if self.updates_left else None

    def due(self, epoch: int, iteration: int, iterations_per_epoch: int) -> MaskUpdateKind | None:
        """The update to run before this iteration, if any.

        Several updates that fall on the same iteration (an epoch with very few iterations) are
        merged into one: a shrink if the shrink is among them, otherwise one mutation.
        """
        position = epoch + iteration / max(iterations_per_epoch, 1)
        kinds = []
        while (
            self.next_index < len(self.updates) and self.updates[self.next_index].position <= position + 1e-9
        ):
            kinds.append(self.updates[self.next_index].kind)
            self.next_index += 1
        if not kinds:
            return None
        return MaskUpdateKind.SHRINK if MaskUpdateKind.SHRINK in kinds else MaskUpdateKind.MUTATE


def update_step(update: MaskUpdate, iterations_per_epoch: int) -> int:
    """The optimizer step (0-based, from the experience start) before which ``update`` runs."""
    return math.ceil(round(update.position * iterations_per_epoch, 9))


def space_updates(updates: list[MaskUpdate], iterations_per_epoch: int, min_steps: int) -> list[MaskUpdate]:
    """The updates that lie at least ``min_steps`` optimizer steps, or a whole epoch, after the
    previous kept one.

    An update reads the importance gathered since the previous one: a whole epoch has shown it every
    example of the experience, ``min_steps`` steps are enough gradients to rank weights by. The
    experience start counts as an update (the expansion happens there), so the first kept update is
    the shrink, whichever update of the schedule it was. Short experiences thus get fewer,
    better-informed mask changes instead of one every few steps; one with no room for even the
    shrink gets none (the caller then skips the expansion too). Schedules of whole epochs (the
    paper's) and ``min_steps=0`` are returned unchanged.
    """
    kept: list[MaskUpdate] = []
    last_step, last_position = 0, 0.0
    for update in updates:
        step = update_step(update, iterations_per_epoch)
        if step - last_step < min_steps and update.position - last_position < 1 - 1e-9:
            continue
        kind = MaskUpdateKind.MUTATE if kept else MaskUpdateKind.SHRINK
        kept.append(MaskUpdate(update.position, kind))
        last_step, last_position = step, update.position
    return kept
