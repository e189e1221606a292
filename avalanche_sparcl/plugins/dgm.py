"""DGMPlugin: dynamic gradient masking (SparCL Sec. 4.3) for any Avalanche SGD strategy."""

from __future__ import annotations

from typing import Any

import torch
from avalanche.core import SupervisedPlugin

from avalanche_sparcl.distributed import unwrap
from avalanche_sparcl.plugins.composition import refuse_two_mask_owners, weight_mask_owner_before
from avalanche_sparcl.plugins.probe import probe_forward
from avalanche_sparcl.plugins.tdm import minibatches_per_epoch
from avalanche_sparcl.settings import check_options, default, options_of
from avalanche_sparcl.sparse.gradient_masks import GradientMasking
from avalanche_sparcl.sparse.layers import default_sparse_weights, parameters_named, trainable_parameters
from avalanche_sparcl.sparse.training import SparseTraining
from avalanche_sparcl.validation import reject_unknown_options


class DGMPlugin(SupervisedPlugin, supports_distributed=True):
    """Applies only the largest gradients of the active weights of each masked layer.

    With a ``TDMPlugin`` listed before it (or inside ``SparCLPlugin``) its gradient masks are handed to
    TDM, whose engine applies them at the optimizer step on TDM's layers, counting
    ``gradient_sparsity`` over TDM's active weights and refreshing right after every mask change. On its
    own it is the adapter for DGM without TDM: TDM's default layer set, every weight active. An
    experience of fewer than ``min_gradient_masking_steps`` optimizer steps and fewer than 10 epochs is not
    masked (one warning).
    """

    owns_gradient_masks = True  # see plugins.composition

    def __init__(
        self,
        gradient_sparsity: float = default("gradient_sparsity"),
        refresh_every: int = default("refresh_every"),
        min_gradient_masking_steps: int = default("min_gradient_masking_steps"),
        **options: Any,
    ):
        super().__init__()
        reject_unknown_options("DGMPlugin", options, options_of("dgm"))
        checked = check_options(
            {
                "gradient_sparsity": gradient_sparsity,
                "refresh_every": refresh_every,
                "min_gradient_masking_steps": min_gradient_masking_steps,
            }
        )
        self.gradient_sparsity, self.refresh_every = checked["gradient_sparsity"], checked["refresh_every"]
        self.gradient_masking = GradientMasking(
            {}, self.gradient_sparsity, self.refresh_every, checked["min_gradient_masking_steps"]
        )
        self.engine: SparseTraining | None = None  # own engine, when no TDM applies the masks
        self.handed_to_tdm = False
        self.starting = False  # an experience began and its first epoch has not started yet
        self.training = False

    def __setstate__(self, state: dict) -> None:
        """Checkpoints written before the lazy start train on (the next experience starts afresh)."""
        self.__dict__.update({"starting": False, "training": False, **state})

    @property
    def gradient_masks(self) -> dict[str, torch.Tensor]:
        """Parameter name -> bool mask of the weight-gradient entries applied (within the weight mask)."""
        return self.gradient_masking.masks

    def hand_to(self, tdm: Any) -> None:
        """Let ``tdm`` apply these gradient masks on its layers, at its optimizer steps."""
        tdm.use_gradient_masking(self.gradient_masking)
        self.handed_to_tdm = True

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        """Refuse a second owner of gradient masks; hand the masks to a TDMPlugin listed before this
        plugin, if any (once)."""
        refuse_two_mask_owners(list(strategy.plugins))
        if not self.handed_to_tdm and self.engine is None:
            tdm = weight_mask_owner_before(self, list(strategy.plugins))
            if tdm is not None:
                self.hand_to(tdm)

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Note that an experience begins; its masking starts with its first epoch."""
        self.starting = True

    def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        """Without TDM, at the experience's first epoch: pick the layers on first use (the default set),
        follow the ones that train after that; mask at every step of the strategy's optimizer."""
        if not self.starting or self.handed_to_tdm:
            return
        self.starting = False
        if getattr(strategy, "optimizer", None) is None:
            return  # nothing steps: nothing to mask
        model = unwrap(strategy.model)
        if self.engine is None:
            names = default_sparse_weights(model, lambda: probe_forward(strategy))
            self.engine = SparseTraining(gradient_masking=self.gradient_masking)
        else:
            names = trainable_parameters(model, self.gradient_masking.params)
        self.gradient_masking.follow(parameters_named(model, names))
        self.engine.follow(strategy.optimizer)
        self.engine.start_experience(strategy.train_epochs, minibatches_per_epoch(strategy))
        self.training = True

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        """Hook the optimizer that steps now (a strategy may replace it)."""
        if self.training:
            self.engine.follow(strategy.optimizer)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """The experience is over (nothing to do for one that never started an epoch)."""
        self.starting = self.training = False

    def after_training(self, strategy: Any, **kwargs: Any) -> None:
        """Let go of the optimizer: no hook outlives the strategy's training."""
        if self.engine is not None:
            self.engine.close()
        self.starting = self.training = False
