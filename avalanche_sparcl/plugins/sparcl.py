"""SparCLPlugin: TDM + DDR + DGM (and optionally the masked head) as one Avalanche plugin."""

from __future__ import annotations

from typing import Any

import torch
from avalanche.core import SupervisedPlugin

from avalanche_sparcl.plugins.composition import refuse_two_mask_owners
from avalanche_sparcl.plugins.ddr import DDRPlugin
from avalanche_sparcl.plugins.dgm import DGMPlugin
from avalanche_sparcl.plugins.masked_head import MaskedHeadPlugin
from avalanche_sparcl.plugins.tdm import TDMPlugin
from avalanche_sparcl.settings import OPTIONS, check_options, default, options_of
from avalanche_sparcl.validation import reject_unknown_options

TDM_OPTIONS = set(options_of("tdm")) - {"sparsity"}
DDR_OPTIONS = set(options_of("ddr")) - {"removal_ratio"}
DGM_OPTIONS = set(options_of("dgm")) - {"gradient_sparsity"}
HEAD_OPTIONS = set(options_of("sparcl")) - {"masked_head"}


class SparCLPlugin(SupervisedPlugin, supports_distributed=True):
    """SparCL on any Avalanche SGD strategy: sparse weights, less data, sparse gradient updates.

    ``sparsity`` drives TDM (0 = dense network, unless a ``profile`` is given), ``removal_ratio``
    DDR (0 = keep all data), ``gradient_sparsity`` DGM (0 = apply all gradients of the kept
    weights); every other option goes to the part that owns it (see TDMPlugin, DDRPlugin,
    DGMPlugin, MaskedHeadPlugin) and is checked even when that part is off. ``masked_head`` makes the
    current experience's cross-entropy see only its classes.

    Inside every hook the parts run in one fixed order, DDR, masked head, TDM, so that within a step
    DDR scores the raw logits before the head is masked and TDM's importance reads the gradients
    before anything masks them. With TDM on, TDM's engine applies DGM's gradient masks at the
    optimizer step (refreshed right after each mask change); with TDM off, DGM runs alone.
    """

    def __init__(
        self,
        sparsity: float = default("sparsity"),
        removal_ratio: float = default("removal_ratio"),
        gradient_sparsity: float = default("gradient_sparsity"),
        masked_head: bool = default("masked_head"),
        **options: Any,
    ):
        super().__init__()
        reject_unknown_options(
            "SparCLPlugin",
            set(options) - TDM_OPTIONS - DDR_OPTIONS - DGM_OPTIONS - HEAD_OPTIONS,
            set(OPTIONS),
        )
        check_options({"masked_head": masked_head})
        tdm_options = {k: v for k, v in options.items() if k in TDM_OPTIONS}
        ddr_options = {k: v for k, v in options.items() if k in DDR_OPTIONS}
        dgm_options = {k: v for k, v in options.items() if k in DGM_OPTIONS}
        head_options = {k: v for k, v in options.items() if k in HEAD_OPTIONS}
        # every option is checked, also those of a part switched off: a bad value is a mistake either way
        dense = check_options({"sparsity": sparsity})["sparsity"] == 0 and tdm_options.get("profile") is None
        if dense:
            check_options({k: v for k, v in tdm_options.items() if k != "profile"})
        self.tdm = None if dense else TDMPlugin(sparsity, **tdm_options)
        ddr = DDRPlugin(removal_ratio, **ddr_options)
        self.ddr = ddr if ddr.settings.removal_ratio != 0 else None
        dgm = DGMPlugin(gradient_sparsity, **dgm_options)
        self.dgm = dgm if dgm.gradient_sparsity != 0 else None
        # with TDM on, TDM's engine applies DGM's gradient masks at its optimizer steps; DGM's plugin
        # then has nothing left to do and is not a part
        dgm_alone = self.dgm
        if self.dgm is not None and self.tdm is not None:
            self.dgm.hand_to(self.tdm)
            dgm_alone = None
        head = MaskedHeadPlugin(**head_options) if masked_head else None
        if not masked_head:
            check_options(head_options)
        self.parts: list[SupervisedPlugin] = [
            part for part in (self.ddr, head, self.tdm, dgm_alone) if part is not None
        ]

    @classmethod
    def one_pass(cls, sparsity: float = 0.75, gradient_sparsity: float = 0.2, **options: Any) -> SparCLPlugin:
        """SparCL for one-pass (online) training: each example is seen once.

        What SparCL can still do there: TDM's sparse network from the first step, on a fixed
        magnitude mask (no expansion or updates: too few steps to rank weights by), and DGM at any
        experience length (``min_gradient_masking_steps=0``: an online stream's experiences are often
        one minibatch each). DDR is off: forgetting events need two passes over an example. This is
        what TDM's and DDR's short-schedule rules make of the default plugin at one epoch, without
        their warnings; ``options`` go to the parts as in the constructor.
        """
        options = {"expand_ratio": 0.0, "update_every": 1.0, "min_gradient_masking_steps": 0, **options}
        return cls(sparsity, removal_ratio=0.0, gradient_sparsity=gradient_sparsity, **options)

    @property
    def owns_gradient_masks(self) -> bool:
        """Whether DGM is on (see plugins.composition): its part, or the masks handed to TDM."""
        return self.dgm is not None

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """TDM's weight masks (empty for a dense network)."""
        return {} if self.tdm is None else self.tdm.masks

    @property
    def gradient_masks(self) -> dict[str, torch.Tensor]:
        """DGM's gradient masks (empty when DGM is off)."""
        return {} if self.dgm is None else self.dgm.gradient_masks

    def _run_parts(self, hook: str, strategy: Any, kwargs: dict[str, Any]) -> None:
        """Run each part's ``hook`` in the fixed order (parts that do not override it do nothing)."""
        for part in self.parts:
            getattr(part, hook)(strategy, **kwargs)

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        """Refusals first (a second owner of weight or gradient masks, DDR's), before anything is changed."""
        refuse_two_mask_owners(list(strategy.plugins))
        self._run_parts("before_training", strategy, kwargs)

    def after_train_dataset_adaptation(self, strategy: Any, **kwargs: Any) -> None:
        """DDR tags the experience's examples for the loaders built next."""
        self._run_parts("after_train_dataset_adaptation", strategy, kwargs)

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Each part notes that an experience begins."""
        self._run_parts("before_training_exp", strategy, kwargs)

    def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        """DDR's loader check and removal stages, then TDM's masks start or are re-applied."""
        self._run_parts("before_training_epoch", strategy, kwargs)

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        """The masked head counts rows; TDM follows the optimizer and updates its masks."""
        self._run_parts("before_training_iteration", strategy, kwargs)

    def before_forward(self, strategy: Any, **kwargs: Any) -> None:
        """TDM re-zeroes pruned weights that a state_dict load revived."""
        self._run_parts("before_forward", strategy, kwargs)

    def after_forward(self, strategy: Any, **kwargs: Any) -> None:
        """DDR scores the raw logits, then the masked head replaces them."""
        self._run_parts("after_forward", strategy, kwargs)

    def after_backward(self, strategy: Any, **kwargs: Any) -> None:
        """TDM's importance reads the gradients before anything masks them."""
        self._run_parts("after_backward", strategy, kwargs)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Each part ends the experience (TDM at its target sparsity)."""
        self._run_parts("after_training_exp", strategy, kwargs)

    def after_training(self, strategy: Any, **kwargs: Any) -> None:
        """Every optimizer hook is removed: nothing outlives training."""
        self._run_parts("after_training", strategy, kwargs)
