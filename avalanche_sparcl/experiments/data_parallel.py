"""What a data-parallel run needs besides Avalanche's own support: each rank's device, and an
evaluation every rank runs on the whole test stream."""

from __future__ import annotations

from typing import Any

import torch
from avalanche.benchmarks.utils.data_loader import SingleDatasetDataLoader
from avalanche.core import SupervisedPlugin

from avalanche_sparcl.distributed import world_size


def training_device(device: str) -> torch.device:
    """``device`` as a torch device; on CUDA in data-parallel training, this rank's GPU (the one
    ``DistributedHelper.init_distributed`` selected)."""
    if device == "cuda" and world_size() > 1:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device)


class WholeEvaluationStream(SupervisedPlugin, supports_distributed=True):
    """Every rank evaluates every test example: Avalanche 0.6 shards the evaluation data between
    ranks and its accuracy metrics do not combine the shards, so rank 0 would report on its shard."""

    def before_eval_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Replace the sharded evaluation loader by one over the whole experience."""
        loader = strategy.dataloader
        strategy.dataloader = SingleDatasetDataLoader(
            strategy.adapted_dataset,
            batch_size=strategy.eval_mb_size,
            distributed_sampling=False,
            **{key: value for key, value in loader.loader_kwargs.items() if key != "batch_size"},
        )
