"""Every SparCL option, declared once: its part, default (the paper setting), accepted range and doc.

The plugins' settings (``TDMSettings``, ``DDRSettings``, DGM's), ``SparCLPlugin``'s routing of options
to its parts and the experiment configs' ``sparcl`` section all read this table, so adding an option
is one entry here plus the field that uses it, and its range appears in the code once. Imports
nothing but the argument checks (no Avalanche).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from avalanche_sparcl.validation import (
    MAX_SEED,
    check_choice,
    check_fraction,
    check_non_negative,
    check_non_negative_int,
    check_positive_int,
    check_seed,
)

MIN_UPDATE_EVERY = 0.001
"""Smallest ``update_every``: at most 1000 mask updates per experience, whatever its length.

The schedule holds ``1 / update_every`` entries, independent of the epoch count, so this bound keeps
it (and the checkpoints that store it) small: 1e-6 meant a million entries and minutes spent building
them. Each update prunes and regrows every masked layer and clears the optimizer state of the swapped
weights, so updates far more frequent than the paper's (0.1, every 5 of 50 epochs) mostly churn the
mask; 0.001 still allows one every 0.05 epochs of a 50-epoch experience.
"""


@dataclass(frozen=True)
class Range:
    """What an option accepts; checks a value and says what it accepts in the same words."""

    kind: str  # fraction, non_negative, positive_int, non_negative_int, seed, choice, bool, profile
    low: float = 0.0
    high: float = 1.0
    include_low: bool = True
    include_high: bool = False
    choices: tuple[str, ...] = ()

    def check(self, name: str, value: Any) -> Any:
        """``value`` as a plain Python value, or a ValueError naming ``name`` and this range."""
        if self.kind == "fraction":
            return check_fraction(
                name,
                value,
                low=self.low,
                high=self.high,
                include_low=self.include_low,
                include_high=self.include_high,
            )
        checks = {
            "non_negative": check_non_negative,
            "positive_int": check_positive_int,
            "non_negative_int": check_non_negative_int,
            "seed": check_seed,
        }
        if self.kind in checks:
            return checks[self.kind](name, value)
        if self.kind == "choice":
            return check_choice(name, value, self.choices)
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
            return value
        return value  # a profile: checked by the profile loader, which names the file

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` passes :meth:`check`."""
        try:
            self.check("value", value)
        except ValueError:
            return False
        return True

    def describe(self) -> str:
        """What the range accepts, as the error messages say it."""
        if self.kind == "fraction":
            opening, closing = "[" if self.include_low else "(", "]" if self.include_high else ")"
            return f"a number in {opening}{self.low:g}, {self.high:g}{closing}"
        return {
            "non_negative": "a finite number >= 0",
            "positive_int": "an integer >= 1",
            "non_negative_int": "an integer >= 0",
            "seed": f"an integer in [0, {MAX_SEED}]",
            "choice": "one of " + ", ".join(self.choices),
            "bool": "true or false",
            "profile": "a path to a YAML sparsity profile",
        }[self.kind]


FRACTION = Range("fraction")
"""[0, 1): a share that cannot be everything."""
SCHEDULE_FRACTION = Range("fraction", include_low=False, include_high=True)
"""(0, 1]: a point of the experience's epochs."""

SHORT_EXPERIENCE_STEPS = 256
"""Experiences of fewer optimizer steps (and fewer than ``FULL_SCHEDULE_EPOCHS`` epochs) are short for
DDR and the masked head (the defaults of ``min_experience_steps`` and ``min_masked_head_steps``); TDM's
``kept_scale="auto"`` counts the steps alone. Measured on Split Digits (9-90 steps per experience) and
on Split Fashion-MNIST at 500 images per class (96 steps), against its quick grid (375-1,125 steps),
where every rule leaves the method as the paper runs it (docs/results.md, Short schedules)."""

SHORT_GRADIENT_MASKING_STEPS = 64
"""DGM's default ``min_gradient_masking_steps``: DGM cost 2-2.5 Class-IL points on Split Digits at 18-27
steps per experience and less than the seeds' spread on the Fashion-MNIST subset at 96 steps, where
it saves FLOPs (3.9x instead of 3.7x at 75% sparsity)."""

FULL_SCHEDULE_EPOCHS = 10
"""Epochs from which an experience is never short, however few its steps: each example is seen often
enough for the parts to act (DDR: every removal window spans at least 2 epochs and at least 6 epochs
follow the last stage; on Split Digits at 10 epochs of 9 steps DGM cost no accuracy)."""


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``count`` with its noun in the right number: '1 epoch', '3 epochs'."""
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


def experience_length(n_epochs: int, iterations_per_epoch: int) -> str:
    """How the short-schedule warnings name an experience: 'an experience of 27 optimizer steps (3
    epochs of 9 minibatches)'."""
    steps = counted(n_epochs * iterations_per_epoch, "optimizer step")
    minibatches = counted(iterations_per_epoch, "minibatch", "minibatches")
    return f"an experience of {steps} ({counted(n_epochs, 'epoch')} of {minibatches})"


def is_short_experience(n_epochs: int, iterations_per_epoch: int | None, min_steps: int) -> bool:
    """Whether an experience of ``n_epochs`` epochs of ``iterations_per_epoch`` minibatches is too short
    for a part that needs ``min_steps`` optimizer steps: fewer steps and fewer than
    ``FULL_SCHEDULE_EPOCHS`` epochs (unknown length: not short)."""
    if iterations_per_epoch is None or n_epochs >= FULL_SCHEDULE_EPOCHS:
        return False
    return n_epochs * iterations_per_epoch < min_steps


@dataclass(frozen=True)
class Option:
    """One option: the part that owns it, its default, its range and what it means."""

    part: str  # sparcl (the composition), tdm, ddr or dgm
    default: Any
    range: Range
    doc: str
    unit: str = ""

    def accepted(self) -> str:
        """What the option accepts, with its unit: 'an integer >= 0 (optimizer steps)'."""
        return self.range.describe() + (f" ({self.unit})" if self.unit else "")


OPTIONS: dict[str, Option] = {
    "sparsity": Option("tdm", 0.75, FRACTION, "weight sparsity of the masked layers (0: a dense network)"),
    "removal_ratio": Option("ddr", 0.3, FRACTION, "share of each experience's examples DDR removes"),
    "gradient_sparsity": Option("dgm", 0.2, FRACTION, "share of the active weights' gradients DGM drops"),
    "masked_head": Option("sparcl", False, Range("bool"), "current-data cross-entropy on its classes only"),
    "profile": Option("tdm", None, Range("profile"), "per-parameter sparsities, replacing the layer rule"),
    "importance_lambda": Option("tdm", 0.5, Range("non_negative"), "weight of the gradient term of CWI"),
    "expand_ratio": Option("tdm", 0.01, FRACTION, "extra capacity per layer at each experience start"),
    "mutate_ratio": Option(
        "tdm", 0.01, Range("fraction", high=0.5, include_high=True), "share of each layer swapped per update"
    ),
    "update_every": Option(
        "tdm",
        0.1,
        Range("fraction", low=MIN_UPDATE_EVERY, include_high=True),
        "period of the mask updates",
        "fraction of the epochs",
    ),
    "freeze_at": Option(
        "tdm", 0.9, SCHEDULE_FRACTION, "point after which the mask is fixed", "fraction of the epochs"
    ),
    "regrow": Option(
        "tdm", "random", Range("choice", choices=("random", "gradient")), "how pruned weights regrow"
    ),
    "seed": Option("tdm", 0, Range("seed"), "seed of the random regrowth"),
    "min_update_steps": Option(
        "tdm", 16, Range("non_negative_int"), "fewest steps between two mask updates", "optimizer steps"
    ),
    "importance_window": Option(
        "tdm",
        32,
        Range("non_negative_int"),
        "steps before a mask update whose gradients feed CWI",
        "optimizer steps",
    ),
    "layer_densities": Option(
        "tdm",
        "uniform",
        Range("choice", choices=("uniform", "erk")),
        "how the sparsity is spread over the masked layers (erk: Erdos-Renyi-kernel, same total)",
    ),
    "kept_scale": Option(
        "tdm",
        "auto",
        Range("choice", choices=("auto", "none", "weight_variance", "unit_variance")),
        "rescaling of each unit's kept weights when its mask is made: to the dense initialisation's "
        "variance per weight, or per unit (the unit's pre-activation variance); auto: per weight when "
        f"the first experience has fewer than {SHORT_EXPERIENCE_STEPS} optimizer steps, else none",
    ),
    "ramp_steps": Option(
        "tdm",
        0,
        Range("non_negative_int"),
        "steps of the first experience over which the masked layers go from dense to their sparsity",
        "optimizer steps",
    ),
    "stages": Option("ddr", 4, Range("positive_int"), "removal stages per experience"),
    "cutoff": Option(
        "ddr", 0.4, SCHEDULE_FRACTION, "point by which the removal is complete", "fraction of the epochs"
    ),
    "min_experience_steps": Option(
        "ddr",
        SHORT_EXPERIENCE_STEPS,
        Range("non_negative_int"),
        "fewest steps of an experience DDR removes from",
        "optimizer steps",
    ),
    "refresh_every": Option(
        "dgm", 30, Range("positive_int"), "iterations between gradient-mask refreshes", "iterations"
    ),
    "min_gradient_masking_steps": Option(
        "dgm",
        SHORT_GRADIENT_MASKING_STEPS,
        Range("non_negative_int"),
        "fewest steps of an experience whose gradients DGM masks",
        "optimizer steps",
    ),
    "min_masked_head_steps": Option(
        "sparcl",
        SHORT_EXPERIENCE_STEPS,
        Range("non_negative_int"),
        "fewest steps of an experience whose current-data logits the masked head masks",
        "optimizer steps",
    ),
}
"""Every SparCL option, in the order the docs list them."""

LAYER_RATIOS = ("expand_ratio", "mutate_ratio")
"""Options whose range also depends on each layer's sparsity (checked by ``TDMSettings``)."""


def options_of(part: str) -> tuple[str, ...]:
    """The names of the options a part owns."""
    return tuple(name for name, option in OPTIONS.items() if option.part == part)


def default(name: str) -> Any:
    """An option's default (the paper setting)."""
    return OPTIONS[name].default


def check_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """Each given option checked on its own range, as plain Python values."""
    return {name: OPTIONS[name].range.check(name, value) for name, value in values.items()}
