"""DGMPlugin: dynamic gradient masking (SparCL Sec. 4.3) for any Avalanche SGD strategy."""

from __future__ import annotations

from typing import Any

import torch
from avalanche.core import SupervisedPlugin

from avalanche_sparcl.distributed import unwrap
from avalanche_sparcl.plugins.probe import probe_forward
from avalanche_sparcl.plugins.tdm import TDMPlugin
from avalanche_sparcl.sparse.gradient_masks import GradientMasking
from avalanche_sparcl.sparse.layers import default_sparse_weights, parameters_named, trainable_parameters
from avalanche_sparcl.sparse.step_hooks import OptimizerStepHooks
from avalanche_sparcl.validation import check_fraction, check_positive_int, reject_unknown_options


class DGMPlugin(SupervisedPlugin, supports_distributed=True):
    """Applies only the largest gradients of the active weights of each masked layer.

    With a ``TDMPlugin`` listed before it (or inside ``SparCLPlugin``) it works on TDM's layers and
    counts ``gradient_sparsity`` over TDM's active weights, refreshing right after every mask
    change; on its own it uses TDM's default layer set with every weight active.
    """

    def __init__(self, gradient_sparsity: float = 0.2, refresh_every: int = 30, **options: Any):
        super().__init__()
        reject_unknown_options("DGMPlugin", options, ["gradient_sparsity", "refresh_every"])
        self.gradient_sparsity = check_fraction("gradient_sparsity", gradient_sparsity)
        self.refresh_every = check_positive_int("refresh_every", refresh_every)
        self.tdm: TDMPlugin | None = None
        self.gradient_masking: GradientMasking | None = None
        self.seen_mask_updates = 0
        self.step_hooks = OptimizerStepHooks(self._mask_gradients_at_step)
        self.starting = False  # an experience began and its first epoch has not started yet
        self.training = False

    def __setstate__(self, state: dict) -> None:
        """Checkpoints written before the lazy start train on (the next experience starts afresh)."""
        self.__dict__.update({"starting": False, "training": False, **state})

    @property
    def gradient_masks(self) -> dict[str, torch.Tensor]:
        """Parameter name -> bool mask of the weight-gradient entries applied (within the weight mask)."""
        return {} if self.gradient_masking is None else self.gradient_masking.masks

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Note that an experience begins; its masking starts with its first epoch (after TDM's)."""
        self.starting = True

    def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        """At the experience's first epoch: pick the layers on first use (TDM's, else the default set),
        follow them after that; mask at every step of the strategy's optimizer, refreshing first."""
        if not self.starting:
            return
        self.starting = False
        if getattr(strategy, "optimizer", None) is None:
            return  # nothing steps: nothing to mask (TDM warns)
        if self.gradient_masking is None:
            self.tdm = self.tdm or preceding_tdm(strategy, self)
            if self.tdm is None:
                model = unwrap(strategy.model)
                names = default_sparse_weights(model, lambda: probe_forward(strategy))
                self.gradient_masking = GradientMasking(
                    parameters_named(model, names), self.gradient_sparsity, self.refresh_every
                )
            else:
                self.tdm.gradients_masked_by_dgm = True  # DGM's masks zero the pruned weights' gradients
                self.gradient_masking = GradientMasking({}, self.gradient_sparsity, self.refresh_every)
        if self.tdm is not None:
            if not self.tdm.training:
                return  # TDM masks nothing in this experience (no optimizer, nothing that trains)
            params = dict(self.tdm.dynamic_sparsity.params)
            self.seen_mask_updates = len(self.tdm.dynamic_sparsity.history)
        else:
            model = unwrap(strategy.model)
            params = parameters_named(model, trainable_parameters(model, self.gradient_masking.params))
        self.gradient_masking.follow(params)
        self.step_hooks.follow(strategy.optimizer)
        self.gradient_masking.start_experience()
        self.training = True

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        """Hook the optimizer that steps now (a strategy may replace it)."""
        if self.training:
            self.step_hooks.follow(strategy.optimizer)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """The experience is over (nothing to do for one that never started an epoch)."""
        self.starting = self.training = False

    def after_training(self, strategy: Any, **kwargs: Any) -> None:
        """Let go of the optimizer: no hook outlives the strategy's training."""
        self.step_hooks.remove()
        self.starting = self.training = False

    def _mask_gradients_at_step(self) -> None:
        """Mask the gradients the optimizer is about to apply, after TDM read them for CWI and every
        other plugin edited them (GEM, A-GEM); the mask lies within TDM's, so it also zeroes the
        pruned weights' gradients (TDM then leaves them to it)."""
        weight_masks = None
        mask_changed = False
        if self.tdm is not None:
            weight_masks = self.tdm.masks
            mask_changed = len(self.tdm.dynamic_sparsity.history) != self.seen_mask_updates
            self.seen_mask_updates = len(self.tdm.dynamic_sparsity.history)
        self.gradient_masking.apply(weight_masks, refresh=mask_changed)


def preceding_tdm(strategy: Any, dgm: DGMPlugin) -> TDMPlugin | None:
    """The TDMPlugin listed before ``dgm``; one listed after it would read already-masked gradients."""
    plugins = list(strategy.plugins)
    tdms = [plugin for plugin in plugins if isinstance(plugin, TDMPlugin)]
    if not tdms or dgm not in plugins:  # inside SparCLPlugin the parent chose already
        return None
    if plugins.index(tdms[0]) > plugins.index(dgm):
        raise ValueError(
            "TDMPlugin must be listed before DGMPlugin in plugins=[...]: TDM's importance reads the "
            "gradients before DGM masks them (or use SparCLPlugin, which orders its parts itself)"
        )
    return tdms[0]
