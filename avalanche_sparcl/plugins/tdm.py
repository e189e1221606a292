"""TDMPlugin: task-aware dynamic masking (SparCL Sec. 4.1) for any Avalanche SGD strategy."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from avalanche.models.packnet import PackNetModule, PackNetPlugin

from avalanche_sparcl.distributed import unwrap
from avalanche_sparcl.plugins.composition import refuse_two_mask_owners
from avalanche_sparcl.plugins.probe import probe_forward
from avalanche_sparcl.settings import default, experience_length
from avalanche_sparcl.sparse.dynamic import DynamicSparsity, TDMSettings
from avalanche_sparcl.sparse.gradient_masks import GradientMasking
from avalanche_sparcl.sparse.layers import (
    default_sparse_weights,
    parameters_named,
    resolve_profile,
    trainable_parameters,
)
from avalanche_sparcl.sparse.training import SparseTraining
from avalanche_sparcl.validation import reject_unknown_options


class TDMPlugin(SupervisedPlugin, supports_distributed=True):
    """Keeps the model sparse from the first step on, with a mask that adapts to each experience.

    Options (defaults are the paper setting): ``sparsity`` of the masked layers; ``profile`` (mapping
    or YAML file ``prune_ratios: {parameter_name: sparsity}``) to choose layers and per-layer ratios;
    ``importance_lambda`` (CWI gradient weight); ``expand_ratio`` (extra capacity at each experience
    start) and ``mutate_ratio`` (share of each layer swapped per update), both fractions of the
    layer; ``update_every`` and ``freeze_at`` as fractions of the experience's epochs; ``seed`` of
    the random regrowth; ``min_update_steps``, the fewest optimizer steps between two mask updates
    less than an epoch apart (short experiences get fewer updates, or a fixed mask with one warning;
    0 keeps every update); ``importance_window``, the optimizer steps before each mask update whose
    gradients feed CWI (0: every step since the previous update).

    Under DistributedDataParallel every rank builds the same masks from the averaged gradients and an
    identically seeded generator; the core checks that they agree after every change.
    """

    owns_weight_masks = True  # see plugins.composition

    def __init__(self, sparsity: float = default("sparsity"), **options: Any):
        super().__init__()
        accepted = {f.name for f in dataclasses.fields(TDMSettings)}
        reject_unknown_options("TDMPlugin", set(options) - accepted, accepted)
        self.settings = TDMSettings(sparsity=sparsity, **options)
        self.engine = SparseTraining()  # owns the masks and the optimizer step hooks
        self.warned_fixed_mask = False  # the fixed-mask warning is given once
        self.warned_no_optimizer = False
        self.warned_nothing_trains = False
        self.starting = False  # an experience began and its first epoch has not started yet
        self.training = False  # an experience is being trained with the masks

    def __setstate__(self, state: dict) -> None:
        """Checkpoints written before the lazy start train on (the next experience starts afresh);
        those written before the engine owned the step hooks get one around their masks."""
        if "engine" not in state:
            state = dict(state)
            state["engine"] = SparseTraining(state.pop("dynamic_sparsity", None))
            state.pop("step_hooks", None)
            state.pop("gradients_masked_by_dgm", None)
        self.__dict__.update(
            {
                "warned_no_optimizer": False,
                "warned_nothing_trains": False,
                "starting": False,
                "training": False,
                **state,
            }
        )

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Parameter name -> bool mask (True = kept), also of layers that stopped training (frozen);
        empty until training starts."""
        return self.engine.masks

    @property
    def dynamic_sparsity(self) -> DynamicSparsity | None:
        """TDM's engine: masks, importance and schedule (None until training starts)."""
        return self.engine.dynamic_sparsity

    def use_gradient_masking(self, gradient_masking: GradientMasking) -> None:
        """Let DGM's gradient masks be applied at this plugin's optimizer steps, on its layers."""
        self.engine.gradient_masking = gradient_masking

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        """Refuse a strategy that prunes the model itself, or a second owner of weight masks, before
        anything is changed."""
        refuse_two_mask_owners(list(strategy.plugins))
        refuse_self_pruning(strategy)

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Note that an experience begins; its masks start with its first epoch, when the loader and the
        optimizer are final (replay plugins replace the loader here, L2P creates its optimizer after
        the plugins' hook)."""
        self.starting = True

    def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        """At the experience's first epoch, start its masks; at every epoch zero the pruned weights:
        plugins may have written weights (FromScratchTrainingPlugin copies the initial ones back)."""
        if self.starting:
            self.starting = False
            self.training = self._start_experience(strategy)
        if self.training:
            self.dynamic_sparsity.mask_weights()

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        """Hook the optimizer that steps now (a strategy may replace it); run the mask update the
        schedule has due at this iteration."""
        if not self.training:
            return
        self.engine.follow(strategy.optimizer)
        self.engine.before_iteration(
            strategy.clock.train_exp_epochs, strategy.clock.train_epoch_iterations, len(strategy.dataloader)
        )

    def before_forward(self, strategy: Any, **kwargs: Any) -> None:
        """Re-zero pruned weights a state_dict load revived (early stopping restores its best state)."""
        if self.training:
            self.dynamic_sparsity.mask_weights_if_written()

    def after_backward(self, strategy: Any, **kwargs: Any) -> None:
        """Feed CWI with this step's gradients, before anything masks them."""
        if self.training:
            self.engine.after_backward()

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """End at the target sparsity even if the experience was too short for its shrink, with the
        pruned weights zero whatever ran last (a final early-stopping restore). Nothing to do for an
        experience that never started an epoch."""
        self.starting = False
        if not self.training:
            return
        self.training = False
        self.engine.finish_experience()

    def after_training(self, strategy: Any, **kwargs: Any) -> None:
        """Let go of the optimizer: no hook outlives the strategy's training (an optimizer may be
        reused by another strategy)."""
        self.engine.close()
        self.starting = self.training = False

    def _start_experience(self, strategy: Any) -> bool:
        """Masks for the parameters that train now, expanded for the new experience, enforced at every
        step of the strategy's optimizer; False (one warning) for a strategy without an optimizer."""
        optimizer = getattr(strategy, "optimizer", None)
        if optimizer is None:
            if not self.warned_no_optimizer:
                warnings.warn(no_optimizer_warning(strategy), stacklevel=3)
                self.warned_no_optimizer = True
            return False
        model = unwrap(strategy.model)
        sparsities = self.layer_sparsities(strategy, model)
        if not sparsities:
            if self.dynamic_sparsity is not None:
                self.dynamic_sparsity.adopt(model, {})
            if not self.warned_nothing_trains:
                warnings.warn(nothing_trains_warning(strategy), stacklevel=3)
                self.warned_nothing_trains = True
            return False
        if self.dynamic_sparsity is None:
            self.engine.dynamic_sparsity = DynamicSparsity(
                parameters_named(model, sparsities), sparsities, self.settings
            )
        else:
            self.dynamic_sparsity.adopt(model, sparsities)
        self.engine.follow(optimizer)
        iterations = minibatches_per_epoch(strategy)
        dynamic = self.engine.start_experience(strategy.train_epochs, iterations)
        if not dynamic and not self.warned_fixed_mask:
            warnings.warn(fixed_mask_warning(strategy.train_epochs, iterations, self.settings), stacklevel=3)
            self.warned_fixed_mask = True
        return True

    def layer_sparsities(self, strategy: Any, model: torch.nn.Module) -> dict[str, float]:
        """The parameters to mask in this experience and their sparsities: those of the profile, or of
        the default rule, that train now (a profile naming a frozen one is refused at first use)."""
        profile = self.settings.profile
        if profile and self.dynamic_sparsity is None:
            return {name: profile[name] for name in resolve_profile(model, profile)}
        if profile:
            parameters_named(model, profile)  # all must still exist
            return {name: profile[name] for name in trainable_parameters(model, profile)}
        names = default_sparse_weights(model, lambda: probe_forward(strategy))
        return self.settings.sparsities_of(parameters_named(model, names))


def refuse_self_pruning(strategy: Any) -> None:
    """PackNet prunes and freezes the model itself: two owners of one mask cannot both hold."""
    if any(isinstance(plugin, PackNetPlugin) for plugin in strategy.plugins) or any(
        isinstance(module, PackNetModule) for module in unwrap(strategy.model).modules()
    ):
        raise ValueError(
            f"SparCL cannot be used with PackNet ({type(strategy).__name__}): PackNet prunes the model and "
            "freezes the pruned weights itself, so two masks would own the same weights. Drop the SparCL "
            "plugin to train PackNet, or PackNet to train with SparCL."
        )


def nothing_trains_warning(strategy: Any) -> str:
    """Why a model whose only training weight layer is its classifier stays dense."""
    return (
        f"TDMPlugin: the only weight layer {type(strategy).__name__} trains is the classifier (the other "
        "layers are frozen), which SparCL leaves dense, so such experiences train dense; this warning "
        "is given once"
    )


def no_optimizer_warning(strategy: Any) -> str:
    """Why a strategy without an optimizer trains dense."""
    name = type(strategy).__name__
    return (
        f"TDMPlugin: {name} trains without an optimizer (no gradient steps), so there is no training "
        "SparCL could make sparse: no mask is built and the weights are left as they are; this "
        "warning is given once"
    )


def minibatches_per_epoch(strategy: Any) -> int | None:
    """Minibatches in the experience's first epoch (None for a loader without a length)."""
    try:
        return len(strategy.dataloader)
    except (AttributeError, TypeError):
        return None


def fixed_mask_warning(epochs: int, iterations_per_epoch: int, settings: TDMSettings) -> str:
    """Why an experience keeps its mask fixed, and how to force the paper schedule."""
    return (
        f"TDMPlugin: {experience_length(epochs, iterations_per_epoch)} has no room for a mask "
        f"update at least min_update_steps={settings.min_update_steps} steps or one epoch after its "
        "start and before "
        f"the freeze (freeze_at={settings.freeze_at:g}), so the mask stays fixed in such "
        "experiences: sparse from the first step, no expansion, shrink or mutation. "
        "min_update_steps=0 forces the scheduled updates; this warning is given once"
    )
