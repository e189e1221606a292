"""Where the metrics find masks: any plugin of the strategy with a ``masks`` or ``gradient_masks``.

A plugin's ``masks`` (parameter name -> bool tensor, True = kept) define weight density; its
``gradient_masks`` the weight-gradient entries applied at the current step. Without gradient masks
the kept gradient entries are the weight mask's (pruned weights get no gradient), or all of them.

The FLOPs metrics count these intended kept entries. The sparsity metrics only take from them which
parameters to look at (``masked_parameters``) and count the zeros of the tensors themselves, since
another plugin (gradient projection, a replaced model, a restored state_dict) can defeat a mask.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from avalanche_sparcl.distributed import unwrap

WEIGHT_MASKS = "masks"
GRADIENT_MASKS = "gradient_masks"


def strategy_masks(strategy: Any, attribute: str) -> dict[str, Tensor]:
    """The masks all plugins expose under ``attribute``; a parameter masked twice keeps the overlap."""
    merged: dict[str, Tensor] = {}
    for plugin in getattr(strategy, "plugins", []):
        masks = getattr(plugin, attribute, None)
        if not masks:
            continue
        for name, mask in masks.items():
            merged[name] = mask if name not in merged else merged[name] & mask
    return merged


def masked_parameters(strategy: Any) -> dict[str, Tensor]:
    """The current model's parameters that any plugin's weight or gradient masks name.

    Resolved by name on every call, as a plugin may have replaced ``strategy.model`` since the masks
    were built; a name the current model lacks is skipped. Masks are not merged, only their names read.
    """
    names: dict[str, None] = {}
    for attribute in (WEIGHT_MASKS, GRADIENT_MASKS):
        for plugin in getattr(strategy, "plugins", []):
            names.update(dict.fromkeys(getattr(plugin, attribute, None) or {}))
    if not names:
        return {}
    parameters = dict(unwrap(strategy.model).named_parameters())
    return {name: parameters[name] for name in names if name in parameters}


class KeptCounts:
    """Kept and total entries per mask, recounted only when a mask tensor changed.

    Masks are replaced or edited in place at mask updates only, so caching on the tensor's identity
    and version keeps the per-iteration cost to one comparison per mask.
    """

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Tensor, int, int]] = {}

    def __call__(self, masks: dict[str, Tensor]) -> dict[str, tuple[int, int]]:
        stale = [
            name
            for name, mask in masks.items()
            if name not in self._cache
            or self._cache[name][0] is not mask
            or self._cache[name][1] != mask._version
        ]
        if stale:
            sums = [masks[name].sum() for name in stale]
            try:
                kept = torch.stack(sums).tolist()  # one device synchronisation for all masks
            except RuntimeError:  # masks on different devices
                kept = [int(s) for s in sums]
            for name, count in zip(stale, kept, strict=True):
                self._cache[name] = (masks[name], masks[name]._version, int(count))
        return {name: (self._cache[name][2], mask.numel()) for name, mask in masks.items()}

    def __getstate__(self) -> dict:
        """Checkpoints drop the cache: unpickled tensors restart their version counter at 0, so a
        cached version could match a changed mask after a resume."""
        return {"_cache": {}}


def weight_gradient_kept(
    weight_kept: dict[str, tuple[int, int]], gradient_kept: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    """Kept weight-gradient entries: the gradient mask where there is one, else the weight mask."""
    return {**weight_kept, **gradient_kept}
