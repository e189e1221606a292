"""How SparCL's plugins compose with each other and with the strategy's other plugins, in one place.

Plugins declare what they do as class attributes, and the rules read those declarations, not class
names, so no plugin module imports another to check an order:

- ``rewrites_logits``: replaces ``strategy.mb_output`` in ``after_forward`` (the masked head);
- ``replays_current_examples``: a buffer filled at every step, which replays the experience being
  trained (the reservoir); its storage policy says ``fills_every_step`` to DDR, which then leaves it
  out of the buffers to narrow (it only ever sees minibatches trained on);
- ``owns_weight_masks``: holds weight masks and applies, at its optimizer steps, the gradient masks
  handed to it with ``use_gradient_masking`` (TDM); one strategy has at most one such plugin or part
  (:func:`refuse_two_mask_owners`);
- ``owns_gradient_masks``: holds gradient masks (DGM, or ``SparCLPlugin`` with DGM on); at most one
  per strategy too.

``SparCLPlugin`` runs its parts in the fixed order DDR, masked head, TDM (with DGM's gradient masks at
its optimizer step), DGM alone; a standalone ``DGMPlugin`` hands its masks to the weight-mask owner
listed before it (``weight_mask_owner_before``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def parts_of(plugin: Any) -> list[Any]:
    """A plugin's parts (``SparCLPlugin``'s), or the plugin itself."""
    return list(getattr(plugin, "parts", [plugin]))


def declares(plugin: Any, capability: str) -> bool:
    """Whether the plugin, or one of its parts, declares ``capability``."""
    return any(getattr(part, capability, False) for part in parts_of(plugin))


def replays_current_examples(plugins: Iterable[Any]) -> bool:
    """Whether some plugin replays the experience being trained while it trains."""
    return any(declares(plugin, "replays_current_examples") for plugin in plugins)


def first_logit_rewriter_before(plugin: Any, plugins: list[Any]) -> Any | None:
    """The first plugin listed before ``plugin`` that rewrites the logits, if any."""
    for other in plugins[: plugins.index(plugin)]:
        if declares(other, "rewrites_logits"):
            return other
    return None


def refuse_two_mask_owners(plugins: list[Any]) -> None:
    """A ValueError naming them when more than one plugin (or part) owns weight masks, or more than
    one owns gradient masks.

    Two weight-mask owners each prune the model to their own target and zero what the other pruned,
    so the network ends far sparser than either asked (targets 0.5 and 0.9 gave a density of 0.095);
    of two gradient-mask owners, both mask the same gradients, or the second one handed to TDM
    silently replaces the first. One of each per strategy, refused before training.
    """
    weight_owners = [
        (index, plugin, "TDM")
        for index, plugin in enumerate(plugins)
        if declares(plugin, "owns_weight_masks")
    ]
    gradient_owners = [
        (index, plugin, "DGM")
        for index, plugin in enumerate(plugins)
        if getattr(plugin, "owns_gradient_masks", False)
    ]
    for owners, kind, consequence, instead in (
        (
            weight_owners,
            "weight",
            "their masks would intersect (the network ends sparser than any of them asks)",
            "sparsity and profile instead of adding a TDMPlugin",
        ),
        (
            gradient_owners,
            "gradient",
            "their masks would intersect, or the last one handed to TDM would replace the others",
            "gradient_sparsity instead of adding a DGMPlugin",
        ),
    ):
        if len(owners) < 2:
            continue
        named = [
            f"{type(plugin).__name__} (plugins[{index}]"
            + ("" if type(plugin).__name__.startswith(part) else f", its {part} part")
            + ")"
            for index, plugin, part in owners
        ]
        raise ValueError(
            f"{', '.join(named[:-1])} and {named[-1]} {'both' if len(named) == 2 else 'all'} own {kind} "
            f"masks in one strategy: {consequence}; use one of them (SparCLPlugin holds its own "
            f"{owners[0][2]}: give it the {instead})"
        )


def weight_mask_owner_before(plugin: Any, plugins: list[Any]) -> Any | None:
    """The plugin owning weight masks that a gradient-masking ``plugin`` hands its masks to: the first
    one listed, which must come before ``plugin`` (its importance reads the gradients before they are
    masked). None when there is none, or when ``plugin`` is not itself listed (a part of a composite)."""
    owners = [other for other in plugins if getattr(other, "owns_weight_masks", False)]
    if not owners or plugin not in plugins:
        return None
    if plugins.index(owners[0]) > plugins.index(plugin):
        raise ValueError(
            f"{type(owners[0]).__name__} must be listed before {type(plugin).__name__} in plugins=[...]: "
            "TDM's importance reads the gradients before DGM masks them (or use SparCLPlugin, which orders "
            "its parts itself)"
        )
    return owners[0]
