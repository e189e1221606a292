"""The probe forward pass the plugins use to see the order in which the input passes the layers."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import default_collate

from avalanche_sparcl.distributed import unwrap


def probe_forward(strategy: Any) -> Any:
    """One forward pass on the first training example, as the strategy itself makes it.

    The example is collated by the dataset's own collate function, moved by the strategy's
    ``_unpack_minibatch`` and passed through the strategy's ``forward``, so custom minibatch layouts
    (dictionaries, extra fields) and custom forwards work. The strategy's minibatch and output are
    restored afterwards. It runs on the model inside a DistributedDataParallel wrapper: a wrapped
    forward would synchronise with ranks that do not run it, and the layer names are the unwrapped ones.
    """
    dataset = strategy.adapted_dataset
    collate = getattr(dataset, "collate_fn", None) or default_collate
    saved = {name: getattr(strategy, name, None) for name in ("mbatch", "mb_output", "model")}
    try:
        strategy.model = unwrap(saved["model"])
        strategy.mbatch = collate([dataset[0]])
        strategy._unpack_minibatch()
        with torch.no_grad():
            return strategy.forward()
    finally:
        for name, value in saved.items():
            setattr(strategy, name, value)
