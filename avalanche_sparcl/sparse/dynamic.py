"""TDM's engine: owns the masks of one model, their importance and the update schedule.

Framework-free (like rigl-torch's ``RigLScheduler``): a plain training loop or an Avalanche plugin
drives it with ``start_experience``, ``step`` (before each iteration), ``observe_gradients``
(after backward), ``mask_gradients`` (right before the optimizer step, after anything else that edits
gradients) and ``mask_weights`` (after the optimizer step, and after anything else that writes
weights: ``mask_weights_if_written`` notices a ``load_state_dict``). ``bind`` follows the masked
parameters by name when the training loop replaces the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from avalanche_sparcl.distributed import check_agreement
from avalanche_sparcl.settings import SHORT_EXPERIENCE_STEPS
from avalanche_sparcl.sparse.importance import ContinualWeightImportance
from avalanche_sparcl.sparse.layers import (
    default_sparse_weights,
    parameters_named,
    resolve_profile,
)
from avalanche_sparcl.sparse.masks import (
    clear_optimizer_state,
    grow_positions,
    kept_count,
    lowest_positions,
    positions_of,
    random_grow_positions,
    top_k_mask,
    zero_at,
)
from avalanche_sparcl.sparse.schedule import (
    ExperienceSchedule,
    MaskUpdateKind,
    mask_updates,
    space_updates,
    update_step,
)
from avalanche_sparcl.sparse.tdm_settings import TDMSettings

ZERO_PRESERVING_OPTIMIZERS = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.Adamax,
    torch.optim.Adagrad,
    torch.optim.RMSprop,
)
"""Optimizers whose update of a weight is zero when its gradient, its per-weight state and the weight
itself are zero (weight decay, coupled or decoupled, scales the weight). Exact classes only: a
subclass may change the update."""


@dataclass
class MaskUpdateRecord:
    """What one mask change did, per layer (for tests, metrics and users)."""

    experience: int
    position: float
    kind: str
    pruned: dict[str, int] = field(default_factory=dict)
    grown: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)


class DynamicSparsity:
    """Masks, CWI and schedule of one model; the weights are sparse from construction on."""

    observing = True  # whether this iteration's gradients feed CWI (see ``step``)

    def __init__(
        self,
        params: Mapping[str, nn.Parameter],
        sparsities: Mapping[str, float],
        settings: TDMSettings,
    ):
        self.params = dict(params)
        self.sparsities = dict(sparsities)
        self.settings = settings
        self.targets = {
            name: kept_count(param.numel(), self.sparsities[name]) for name, param in self.params.items()
        }
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.importance = ContinualWeightImportance(self.params, settings.importance_lambda)
        self.ramp_step = -1  # the first experience's ramp: steps done, -1 when none is running
        self.experience = -1
        # kept_scale="auto" is decided when the first experience's length is known; until then the
        # per-row factors of weight_variance wait here
        self.kept_scale_rule = None if settings.kept_scale == "auto" else settings.kept_scale
        self.pending_scales: dict[str, Tensor] = {}
        self.masks: dict[str, Tensor] = {}
        for name in self.params:
            self.masks[name] = self._initial_mask(name)
        self.schedule = ExperienceSchedule([])
        self.fixed_mask_experiences: list[int] = []  # experiences too short for any mask update
        self.history: list[MaskUpdateRecord] = []
        self.masked_versions: list[int] = []
        self.retired_masks: dict[str, Tensor] = {}  # masks of parameters that stopped training
        check_agreement("TDM's initial masks", self.masks)
        self.mask_weights()

    def __setstate__(self, state: dict) -> None:
        """Checkpoints written before parameters could retire have none retired (and no ramp, no
        rescaled weights)."""
        defaults = {"retired_masks": {}, "ramp_step": -1, "kept_scale_rule": "none", "pending_scales": {}}
        self.__dict__.update({**defaults, **state})

    def _initial_mask(self, name: str) -> Tensor:
        """A new parameter's mask: its largest weights (rescaled by ``kept_scale``), or all of
        them when the first experience ramps the sparsity in (``ramp_steps``)."""
        param = self.params[name]
        if self.settings.ramp_steps and self.experience < 0:
            return torch.ones_like(param, dtype=torch.bool)
        mask = top_k_mask(param.detach().abs(), self.targets[name])
        if self.kept_scale_rule is None:
            self.pending_scales[name] = kept_scale_factors(param, mask, "weight_variance")
        elif self.kept_scale_rule != "none":
            scale_rows(param, kept_scale_factors(param, mask, self.kept_scale_rule))
        return mask

    def decide_kept_scale(self, steps: int | None) -> None:
        """``kept_scale="auto"``: rescale the kept weights to the per-weight variance if the first
        experience has fewer than ``AUTO_SCALE_STEPS`` optimizer steps, else leave them as drawn."""
        if self.kept_scale_rule is not None:
            return
        short = steps is not None and steps < AUTO_SCALE_STEPS
        self.kept_scale_rule = "weight_variance" if short else "none"
        if short:
            for name, factors in self.pending_scales.items():
                if name in self.params:
                    scale_rows(self.params[name], factors.to(self.params[name].device))
        self.pending_scales = {}

    @property
    def all_masks(self) -> dict[str, Tensor]:
        """The masks of the parameters being trained and of those that stopped training (frozen)."""
        return {**self.retired_masks, **self.masks}

    def adopt(self, model: nn.Module, sparsities: Mapping[str, float]) -> None:
        """Mask exactly these parameters of ``model`` from now on.

        A parameter that stopped training (frozen, e.g. a progressive network's old column) keeps its
        mask, now retired: its weights are never pruned, regrown or written again. A new one (the new
        column) gets a magnitude mask at its sparsity, or its retired mask back if it trains again.
        """
        named = dict(model.named_parameters())
        for name in [name for name in self.params if name not in sparsities]:
            self.retired_masks[name] = self.masks.pop(name)
            del self.params[name], self.targets[name], self.sparsities[name]
            self.importance.forget(name)
        for name, sparsity in sparsities.items():
            if name in self.params:
                continue
            param = named[name]
            self.params[name] = param
            self.sparsities[name] = sparsity
            self.targets[name] = kept_count(param.numel(), sparsity)
            retired = self.retired_masks.pop(name, None)
            fits = retired is not None and retired.shape == param.shape
            self.masks[name] = retired.to(param.device) if fits else self._initial_mask(name)
        check_agreement("TDM's masks of the layers that train", self.masks)
        self.bind(model)
        self.mask_weights()

    @classmethod
    def for_model(
        cls, model: nn.Module, settings: TDMSettings, run_forward: Callable[[], Any]
    ) -> DynamicSparsity:
        """Choose the layers (profile, else the default set found by ``run_forward``)."""
        if settings.profile:
            params = resolve_profile(model, settings.profile)
            return cls(params, settings.profile, settings)
        params = parameters_named(model, default_sparse_weights(model, run_forward))
        return cls(params, settings.sparsities_of(params), settings)

    def bind(self, model: nn.Module) -> bool:
        """Follow the masked parameters by name into ``model``; returns whether any tensor changed.

        Strategies may replace the model (GDumb trains a fresh copy every experience) or its
        parameters; the masks carry over to the new tensors, whose pruned weights are zeroed.
        """
        current = parameters_named(model, self.params)
        changed = [name for name, param in self.params.items() if current[name] is not param]
        for name in changed:
            if current[name].shape != self.masks[name].shape:
                raise ValueError(
                    f"masked parameter {name!r} changed shape from {tuple(self.masks[name].shape)} to "
                    f"{tuple(current[name].shape)}: SparCL keeps one mask per weight and cannot follow "
                    "a layer that grows; leave it dense (a profile without it)"
                )
            self.params[name] = current[name]  # in place: the importance reads the same mapping
        self._follow_parameter_devices()
        if changed:
            self.mask_weights()
        return bool(changed)

    def start_experience(
        self,
        n_epochs: int,
        optimizer: torch.optim.Optimizer | None = None,
        iterations_per_epoch: int | None = None,
    ) -> bool:
        """Restart the schedule and CWI window, and expand each layer by ``expand_ratio``.

        Given the epoch length, the schedule is spaced by ``min_update_steps``; when no update fits,
        the experience keeps its mask as it is (no expansion either, since nothing would shrink it
        back while training) and this returns False, else True.
        """
        self.experience += 1
        self._follow_parameter_devices()
        self.decide_kept_scale(None if iterations_per_epoch is None else n_epochs * iterations_per_epoch)
        updates = mask_updates(n_epochs, self.settings.update_every, self.settings.freeze_at)
        if iterations_per_epoch is not None:
            spaced = space_updates(updates, iterations_per_epoch, self.settings.min_update_steps)
            fixed = bool(updates) and not spaced
            updates = spaced
        else:
            fixed = False
        self.schedule = ExperienceSchedule(updates)
        self.observing = self.reads_gradients() and self.schedule.updates_left
        ramp = self.experience == 0 and self.settings.ramp_steps > 0
        self.ramp_step = 0 if ramp else -1
        if fixed and not ramp:
            self.fixed_mask_experiences.append(self.experience)
        elif not ramp:  # a ramp starts dense: nothing to expand into
            ratio = self.settings.expand_ratio
            kept = self.kept()
            grow = {
                name: min(round(p.numel() * ratio), p.numel() - kept[name]) for name, p in self.params.items()
            }
            self._change("expand", 0.0, dict.fromkeys(grow, 0), grow, optimizer)
        self.restart_importance()
        if optimizer is not None:
            self.clear_pruned_optimizer_state(optimizer)
        return not fixed

    def restart_importance(self) -> None:
        """Open a new CWI window on the current masks: gradients are summed at the kept weights only,
        the ones the next prune ranks (all weights when pruned ones regrow by gradient)."""
        if self.settings.regrow == "gradient" or not self.reads_gradients():
            self.importance.track({})
        else:
            self.importance.track({name: positions_of(mask) for name, mask in self.masks.items()})

    def finish_experience(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Shrink back to the target if the experience was too short for its scheduled shrink."""
        excess = {name: kept - self.targets[name] for name, kept in self.kept().items()}
        if any(excess.values()):
            self._change("final shrink", float("nan"), excess, dict.fromkeys(excess, 0), optimizer)

    def step(
        self,
        epoch: int,
        iteration: int,
        iterations_per_epoch: int,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> MaskUpdateKind | None:
        """Run the mask update due before this iteration, if any, and return its kind."""
        kind = self.schedule.due(epoch, iteration, iterations_per_epoch)
        if self.ramp_step >= 0:  # the ramp owns the mask until it ends; updates due meanwhile lapse
            self._ramp(epoch + iteration / max(iterations_per_epoch, 1), optimizer)
            kind = None
        if kind is not None:
            position = epoch + iteration / max(iterations_per_epoch, 1)
            if kind is MaskUpdateKind.SHRINK:
                prune = {name: kept - self.targets[name] for name, kept in self.kept().items()}
                grow = dict.fromkeys(self.params, 0)
            else:
                swap = {n: self._swap_count(n) for n in self.params}
                prune, grow = swap, swap
            self._change(kind.value, position, prune, grow, optimizer)
            self.restart_importance()
        self.observing = self.in_importance_window(epoch, iteration, iterations_per_epoch)
        return kind

    def ramp_kept(self, name: str, step: int) -> int:
        """Weights parameter ``name`` keeps at ``step`` of the ramp: from all of them down to its
        target along Zhu and Gupta's cubic (fast at first, slow near the target)."""
        numel, target = self.params[name].numel(), self.targets[name]
        remaining = max(0.0, 1 - step / self.settings.ramp_steps)
        return target + round((numel - target) * remaining**3)

    def _ramp(self, position: float, optimizer: torch.optim.Optimizer | None) -> None:
        """Prune the smallest weights down to the ramp's count for this step (a ``ramp`` record when
        any changed); at its last step the layers are at their targets and CWI starts watching."""
        step = self.ramp_step
        kept = self.kept()
        prune = {name: kept[name] - self.ramp_kept(name, step) for name in self.params}
        if any(prune.values()):
            self._change("ramp", position, prune, dict.fromkeys(prune, 0), optimizer, by_magnitude=True)
        self.ramp_step = step + 1
        if self.ramp_step > self.settings.ramp_steps:
            self.ramp_step = -1
            self.restart_importance()

    def reads_gradients(self) -> bool:
        """Whether mask updates read gradients at all (not for magnitude pruning with random regrowth)."""
        return self.settings.importance_lambda != 0 or self.settings.regrow == "gradient"

    def in_importance_window(self, epoch: int, iteration: int, iterations_per_epoch: int) -> bool:
        """Whether this iteration is one of the ``importance_window`` steps before the next update.

        Steps are counted in this epoch's length (DDR may shorten later epochs, which only starts a
        window a little early).
        """
        upcoming = self.schedule.upcoming
        if upcoming is None or not self.reads_gradients():
            return False
        window = self.settings.importance_window
        if window == 0:
            return True
        steps_left = update_step(upcoming, iterations_per_epoch) - (epoch * iterations_per_epoch + iteration)
        return steps_left <= window

    def observe_gradients(self) -> None:
        """Add this iteration's gradients to CWI (before any gradient is masked) inside the window
        the next mask update reads; no other step pays for it (none at all once the mask is frozen)."""
        if self.observing:
            self.importance.accumulate()

    def mask_gradients(self) -> None:
        """Zero the gradients of pruned weights (one fused multi-tensor op on GPUs)."""
        names = [name for name, param in self.params.items() if param.grad is not None]
        if names:
            torch._foreach_mul_([self.params[n].grad for n in names], [self.masks[n] for n in names])

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Keep pruned weights at zero across an optimizer step.

        The pruned weights' gradients are zero at the step and their optimizer state is zero (cleared
        whenever a weight is pruned or regrown, and at every experience start), so the optimizers in
        ``ZERO_PRESERVING_OPTIMIZERS`` leave them at zero, weight decay included (it scales the
        weight): nothing to do but note the weights' versions. Any other optimizer may move a zero, so
        the pruned weights are zeroed again.
        """
        if type(optimizer) in ZERO_PRESERVING_OPTIMIZERS:
            self.masked_versions = [param._version for param in self.params.values()]
        else:
            self.mask_weights()

    def clear_pruned_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the optimizer state (momentum, Adam moments) of every pruned weight."""
        for name, param in self.params.items():
            clear_optimizer_state(optimizer, param, ~self.masks[name])

    @torch.no_grad()
    def mask_weights(self) -> None:
        """Zero pruned weights, so momentum or weight decay never revive them."""
        if self.params:
            torch._foreach_mul_(list(self.params.values()), [self.masks[name] for name in self.params])
        self.masked_versions = [param._version for param in self.params.values()]

    def mask_weights_if_written(self) -> bool:
        """Zero pruned weights again if anything wrote to the masked weights since they were last
        masked (a ``load_state_dict``, as early stopping does); a check of version counters only."""
        if [param._version for param in self.params.values()] == self.masked_versions:
            return False
        self.mask_weights()
        return True

    def kept(self) -> dict[str, int]:
        """Kept weights per masked layer."""
        return {name: int(mask.sum()) for name, mask in self.masks.items()}

    def density(self) -> float:
        """Fraction of kept weights over all masked layers."""
        total = sum(mask.numel() for mask in self.masks.values())
        return sum(self.kept().values()) / total

    def _swap_count(self, name: str) -> int:
        numel = self.params[name].numel()
        return min(round(numel * self.settings.mutate_ratio), self.targets[name], numel - self.targets[name])

    def _change(
        self,
        kind: str,
        position: float,
        prune: Mapping[str, int],
        grow: Mapping[str, int],
        optimizer: torch.optim.Optimizer | None,
        by_magnitude: bool = False,
    ) -> None:
        """Prune by CWI (``by_magnitude``: the smallest weights, as the sparsity ramp does), regrow at
        random (at zero), clear the optimizer state of both.

        Works on flat indices: the kept entries are ranked alone, and the changed weights and their
        optimizer state are zeroed by index, without a pass over every entry of the layer for each.
        """
        record = MaskUpdateRecord(self.experience, position, kind)
        kept_before = self.kept()
        for name, param in self.params.items():
            mask = self.masks[name]
            kept = positions_of(mask)
            if by_magnitude:
                scores = param.detach().flatten()[kept].abs()
            else:
                scores = self.importance.scores_at(name, kept)
            pruned = lowest_positions(kept, scores, prune[name])
            new_mask = mask.clone(memory_format=torch.contiguous_format)
            new_mask.view(-1)[pruned] = False
            if self.settings.regrow == "gradient":
                grown = grow_positions(
                    new_mask, self.importance.mean_gradient(name), grow[name], avoid=pruned
                )
            else:
                grown = random_grow_positions(new_mask, grow[name], self.generator, avoid=pruned)
            new_mask.view(-1)[grown] = True
            self.masks[name] = new_mask
            changed = torch.cat([pruned, grown])
            with torch.no_grad():
                zero_at(param.data, changed)
            if optimizer is not None:
                clear_optimizer_state(optimizer, param, changed)
            record.pruned[name] = pruned.numel()
            record.grown[name] = grown.numel()
            record.kept[name] = kept_before[name] - pruned.numel() + grown.numel()
        check_agreement(f"TDM's masks after the {kind} of experience {self.experience}", self.masks)
        self.history.append(record)

    def _follow_parameter_devices(self) -> None:
        for name, param in self.params.items():
            if self.masks[name].device != param.device:
                self.masks[name] = self.masks[name].to(param.device)


AUTO_SCALE_STEPS = SHORT_EXPERIENCE_STEPS
"""``kept_scale="auto"`` rescales the kept weights when the first experience has fewer optimizer
steps than this. Rescaled weights turn faster under normalisation layers, which experiences of tens
of steps need (Split Digits at 1-10 epochs: 9-90 steps) and long ones do not (Split Fashion-MNIST's
quick grid, 1,125 steps: one seed 2 points lower; docs/benchmarks.md)."""


@torch.no_grad()
def kept_scale_factors(param: Tensor, mask: Tensor, rule: str) -> Tensor:
    """Per output unit (a row of ``param``), the factor that rescales its kept weights after a
    magnitude mask is made from the initialisation.

    Keeping the largest weights keeps the tail of the initialisation (at 75% sparsity a uniform
    initialisation's kept quarter has 2.3 times its variance). ``weight_variance`` brings them back
    to the mean square of the unit's dense weights, as a random mask would keep them;
    ``unit_variance`` makes their squared sum the dense unit's, so the unit's pre-activation keeps
    its dense variance (Evci et al. 2022). Before normalisation layers the scale sets how fast the
    weights turn, not the activations.
    """
    rows = param.detach().reshape(param.shape[0], -1)
    row_mask = mask.reshape(mask.shape[0], -1)
    whole, kept_sum = rows.pow(2).sum(1), (rows * row_mask).pow(2).sum(1)
    target = whole if rule == "unit_variance" else whole * row_mask.sum(1) / rows.shape[1]
    return torch.where(kept_sum > 0, (target / kept_sum.clamp_min(1e-30)).sqrt(), torch.ones_like(whole))


@torch.no_grad()
def scale_rows(param: Tensor, factors: Tensor) -> None:
    """Multiply each row (output unit) of ``param`` by its factor, in place."""
    param.mul_(factors.view(-1, *([1] * (param.dim() - 1))))


__all__ = ["ZERO_PRESERVING_OPTIMIZERS", "DynamicSparsity", "MaskUpdateRecord", "TDMSettings"]
