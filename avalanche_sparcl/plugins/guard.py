"""NonFiniteGuardPlugin: stop training at the first non-finite loss or weight, saying where.

A NaN or inf loss silently turns every weight into NaN and the rest of a long run into noise. The
guard raises :class:`NonFiniteTrainingError` naming the experience, epoch and iteration instead, from
inside the training loop, so nothing after it runs: a checkpoint saved between experiences is never
overwritten with a broken model.

Cost: after each optimizer step it only keeps a reference to the loss (no device work, no
synchronisation). Every ``check_every`` iterations and at the end of each epoch and experience it
checks the kept losses and, with one fused reduction, all weights, in a single synchronisation with
the device. A check costs one synchronisation, so checking every iteration (``check_every=1``)
would stall the device at every step; the default ``check_every=50`` spreads that cost over 50 steps
(measured cost: docs/results.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor

from avalanche_sparcl.distributed import is_distributed, max_across_ranks, unwrap
from avalanche_sparcl.validation import check_positive_int


class NonFiniteTrainingError(FloatingPointError):
    """Training produced a NaN or infinite loss or weight."""


@dataclass(frozen=True)
class TrainingPosition:
    """Where a training step ran: experience index in its stream, epoch and iteration, 0-based."""

    experience: int
    epoch: int
    iteration: int

    def __str__(self) -> str:
        return f"experience {self.experience}, epoch {self.epoch}, iteration {self.iteration}"


class NonFiniteGuardPlugin(SupervisedPlugin, supports_distributed=True):
    """Raises :class:`NonFiniteTrainingError` when the training loss or a weight becomes non-finite.

    Positions are 0-based, as in Avalanche's clock: ``experience`` is the experience's index in its
    stream, ``epoch`` the epoch within the experience, ``iteration`` the minibatch within the epoch.
    ``check_every`` is the number of iterations between two checks. A non-finite loss is reported at
    its exact iteration whatever ``check_every`` is; weights are looked at during the checks only, so
    ``check_every=1`` is needed to name the exact update that broke them (a broken weight makes the
    next loss non-finite anyway).
    """

    def __init__(self, check_every: int = 50):
        super().__init__()
        self.check_every = check_positive_int("check_every", check_every)
        self.pending: list[tuple[TrainingPosition, Tensor]] = []

    def after_update(self, strategy: Any, **kwargs: Any) -> None:
        """Keep this step's loss (no device work); check every ``check_every`` iterations."""
        position = TrainingPosition(
            strategy.experience.current_experience,
            strategy.clock.train_exp_epochs,
            strategy.clock.train_epoch_iterations,
        )
        loss = strategy.loss
        self.pending.append((position, loss.detach() if isinstance(loss, Tensor) else torch.tensor(loss)))
        if len(self.pending) >= self.check_every:
            self.check_pending(strategy)

    def after_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        """Check the epoch's remaining steps before anything else sees its result."""
        self.check_pending(strategy)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Nothing unchecked may reach the end of an experience, where checkpoints are taken."""
        self.check_pending(strategy)

    def check_pending(self, strategy: Any) -> None:
        """Raise for the first kept loss that is non-finite, else if a weight is non-finite now.

        One synchronisation with the device: the kept losses and the largest |value| over all
        parameters and floating-point buffers (non-finite exactly when some entry is) come back together.
        """
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        losses = torch.stack([loss.reshape(()) for _, loss in pending])
        largest = largest_magnitude(checked_tensors(strategy.model), losses.device)
        *loss_values, largest_weight = torch.cat([losses, largest.reshape(1)]).tolist()
        elsewhere = non_finite_on_any_rank([*loss_values, largest_weight])
        for (position, _), loss, anywhere in zip(pending, loss_values, elsewhere, strict=False):
            if not math.isfinite(loss) or anywhere:
                value = loss if not math.isfinite(loss) else "on another rank"
                raise NonFiniteTrainingError(
                    f"non-finite training loss ({value}) at {position}; training stopped"
                )
        if not math.isfinite(largest_weight):
            names = ", ".join(non_finite_tensor_names(unwrap(strategy.model)))
            raise NonFiniteTrainingError(
                f"non-finite weights ({names}) found after the update at {pending[-1][0]}, "
                f"checked every {self.check_every} iteration(s); training stopped"
            )


def non_finite_on_any_rank(values: list[float]) -> list[bool]:
    """For each value, whether it is non-finite on some rank (all False in one process, whose own
    values are checked directly). A rank that stopped alone would leave the others waiting in their
    next gradient reduction, so in data-parallel training all ranks stop together."""
    if not is_distributed():
        return [False] * len(values)
    flags = torch.tensor([not math.isfinite(value) for value in values])
    return max_across_ranks(flags).tolist()


def checked_tensors(model: torch.nn.Module) -> list[Tensor]:
    """The model's parameters and floating-point buffers (e.g. BatchNorm's running statistics)."""
    buffers = [buffer for buffer in model.buffers() if buffer.is_floating_point()]
    return [*model.parameters(), *buffers]


@torch.no_grad()
def largest_magnitude(tensors: list[Tensor], device: torch.device) -> Tensor:
    """max |entry| over ``tensors`` as a scalar on ``device``: NaN or inf exactly when some entry is.
    A handful of kernel launches whatever the number of tensors (fused per device and dtype); stacking
    promotes to the widest dtype, so no finite value overflows."""
    if not tensors:
        return torch.zeros((), device=device)
    norms = torch._foreach_norm(tensors, float("inf"))
    return torch.stack([norm.to(device) for norm in norms]).max()


def non_finite_tensor_names(model: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers holding a NaN or an infinity (only called on failure)."""
    named = list(model.named_parameters()) + list(model.named_buffers())
    return [name for name, tensor in named if tensor.is_floating_point() and not tensor.isfinite().all()]
