"""The probe forward pass the plugins use to see the order in which the input passes the layers."""

from __future__ import annotations

from typing import Any

import torch
from avalanche.models.utils import avalanche_forward

from avalanche_sparcl.distributed import unwrap


def probe_forward(strategy: Any) -> Any:
    """One forward pass on the first training example, to see the order of the model's layers.

    It runs on the model inside a DistributedDataParallel wrapper: a wrapped forward would expect a
    backward pass to reduce, and the layer names are the unwrapped ones.
    """
    example = strategy.adapted_dataset[0]
    inputs = torch.as_tensor(example[0]).unsqueeze(0).to(strategy.device)
    task_labels = torch.as_tensor([int(example[2])], device=strategy.device)
    return avalanche_forward(unwrap(strategy.model), inputs, task_labels)
