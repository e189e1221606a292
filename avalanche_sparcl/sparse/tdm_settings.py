"""TDM's hyperparameters, checked on the ranges declared in ``avalanche_sparcl.settings``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from avalanche_sparcl.settings import LAYER_RATIOS, check_options, default, options_of
from avalanche_sparcl.sparse.layers import ProfileLike, erk_sparsities, load_profile
from avalanche_sparcl.validation import check_fraction


@dataclass(frozen=True)
class TDMSettings:
    """TDM hyperparameters; defaults are the paper setting (schedule fractions of 50 epochs).

    ``regrow="gradient"`` regrows the pruned weights with the largest mean |grad| over the window
    instead of random ones (RigL-style); with ``importance_lambda=0`` pruning is by magnitude alone
    (SET/MEST/RigL-style), and ``expand_ratio = mutate_ratio = 0`` gives a static mask.
    ``update_every`` lies in [MIN_UPDATE_EVERY, 1] (see ``schedule.MIN_UPDATE_EVERY``) and ``seed``
    in [0, MAX_SEED]. Checked values are stored as plain Python numbers.

    ``min_update_steps`` (not in the paper, which has hundreds of steps between updates) spaces mask
    updates at least that many optimizer steps, or one epoch, apart (``schedule.space_updates``); an
    experience too short for even the shrink keeps its mask unchanged. Schedules whose updates are
    whole epochs apart (the paper's 50 epochs) are unchanged; 0 turns the rule off.

    ``importance_window`` is how many optimizer steps before each mask update feed CWI's gradient
    term (0: every step since the previous update). A mean over 32 minibatches ranks weights as
    well as one over hundreds, and the other steps skip the accumulation: most of a long
    schedule's steps then cost nothing extra.
    """

    sparsity: float = default("sparsity")
    profile: ProfileLike | None = default("profile")
    importance_lambda: float = default("importance_lambda")
    expand_ratio: float = default("expand_ratio")
    mutate_ratio: float = default("mutate_ratio")
    update_every: float = default("update_every")
    freeze_at: float = default("freeze_at")
    regrow: str = default("regrow")
    seed: int = default("seed")
    min_update_steps: int = default("min_update_steps")
    importance_window: int = default("importance_window")
    layer_densities: str = default("layer_densities")
    kept_scale: str = default("kept_scale")
    ramp_steps: int = default("ramp_steps")

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsity", check_options({"sparsity": self.sparsity})["sparsity"])
        if self.profile is not None:
            object.__setattr__(self, "profile", load_profile(self.profile))
        options = {name: getattr(self, name) for name in TDM_OPTION_NAMES if name not in LAYER_RATIOS}
        for name, value in check_options(options).items():
            object.__setattr__(self, name, value)
        for sparsity in self.layer_sparsities():  # the ratios' ranges narrowed to each layer's sparsity
            check_layer_ratios(sparsity, self.expand_ratio, self.mutate_ratio)
        for name in LAYER_RATIOS:
            object.__setattr__(self, name, float(getattr(self, name)))

    def sparsities_of(self, params: Mapping[str, Tensor]) -> dict[str, float]:
        """Each default-rule layer's sparsity: ``sparsity`` everywhere, or ERK densities with the
        same kept total (``layer_densities="erk"``)."""
        if self.layer_densities == "erk":
            return erk_sparsities({name: tuple(param.shape) for name, param in params.items()}, self.sparsity)
        return dict.fromkeys(params, self.sparsity)

    def layer_sparsities(self) -> list[float]:
        """The distinct target sparsities of the masked layers."""
        return sorted(set(self.profile.values())) if self.profile else [self.sparsity]


TDM_OPTION_NAMES = tuple(name for name in options_of("tdm") if name not in ("sparsity", "profile"))
"""TDM's options but the sparsity and the profile, each checked on its range in ``settings.OPTIONS``."""


def check_layer_ratios(sparsity: float, expand_ratio: float, mutate_ratio: float) -> None:
    """Expansion can only reuse pruned weights; a mutation must fit both kept and pruned sets."""
    check_fraction("expand_ratio", expand_ratio, high=sparsity, include_high=True)
    check_fraction("mutate_ratio", mutate_ratio, high=min(sparsity, 1 - sparsity), include_high=True)
