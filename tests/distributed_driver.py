"""A small SparCL run (TDM, DDR, DGM) that records what every rank holds, for the distributed tests.

Naive on a synthetic benchmark of 2 experiences of 64 examples, 4 epochs each: one DDR stage of 16
examples at epoch 2, mask updates and DGM refreshes at every opportunity. Launched as

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_driver.py \
        --out DIR --batch 8
    python tests/distributed_driver.py --out DIR --batch 16  # the same global batch in one process

(the tests run the one-process case inside pytest, through ``main``). Each process writes
``DIR/rank{r}.json``: the digests of the weight and gradient masks after every optimizer step, the
kept set after every removal stage, the run's training FLOPs, the warnings about distributed support
and the message of a disagreement the check must catch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from avalanche.distributed import DistributedHelper
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin

from avalanche_sparcl.data_removal import ForgettingStatistics
from avalanche_sparcl.distributed import RankDisagreementError, check_agreement, rank, tensors_digest
from avalanche_sparcl.metrics import flops_metrics
from avalanche_sparcl.models import SmallCNN
from avalanche_sparcl.plugins import SparCLPlugin

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_tensor_benchmark  # noqa: E402

EPOCHS = 4
REMOVAL_RATIO = 0.25


class AgreementRecorder(SupervisedPlugin, supports_distributed=True):
    """Listed after SparCLPlugin: sees the masks and kept sets the plugin left for each step."""

    def __init__(self, sparcl: SparCLPlugin):
        super().__init__()
        self.sparcl = sparcl
        self.steps: list[dict[str, Any]] = []
        self.stages: list[dict[str, Any]] = []

    def after_update(self, strategy: Any, **kwargs: Any) -> None:
        self.steps.append(
            {
                "experience": strategy.clock.train_exp_counter,
                "epoch": strategy.clock.train_exp_epochs,
                "iteration": strategy.clock.train_epoch_iterations,
                "masks": tensors_digest(self.sparcl.masks),
                "gradient_masks": tensors_digest(self.sparcl.gradient_masks),
            }
        )

    def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        record = self.sparcl.ddr.removal.current
        if record.stages and record.stages[-1].epoch == strategy.clock.train_exp_epochs:
            self.stages.append(
                {
                    "experience": record.experience,
                    "epoch": record.stages[-1].epoch,
                    "n_examples": record.n_examples,
                    "removed": record.stages[-1].removed,
                    "kept": tensors_digest({"kept": self.sparcl.ddr.removal.kept_positions}),
                }
            )


PER_RANK_STATISTICS = [
    # example 0 seen by both ranks (a distributed sampler's padding repeat), 1 by rank 0 only, 2 by
    # rank 1 only; the last slot collects replay rows
    {"observations": [2, 2, 0, 5], "forgetting_events": [1, 0, 0, 0], "correct_count": [1, 2, 0, 0],
     "loss_sum": [1.0, 0.5, 0.0, 0.0], "labels": [3, 1, -1, -1]},
    {"observations": [2, 0, 2, 7], "forgetting_events": [0, 0, 1, 0], "correct_count": [2, 0, 1, 0],
     "loss_sum": [4.0, 0.0, 2.0, 0.0], "labels": [3, -1, 2, -1]},
]  # fmt: skip


def pooled_statistics() -> dict[str, list]:
    """This rank's made-up window, pooled with the other rank's by ``combine_across_ranks``."""
    statistics = ForgettingStatistics(3)
    for name, values in PER_RANK_STATISTICS[rank()].items():
        setattr(statistics, name, torch.tensor(values, dtype=getattr(statistics, name).dtype))
    statistics.combine_across_ranks()
    return {name: getattr(statistics, name).tolist() for name in PER_RANK_STATISTICS[0]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, required=True)
    args = parser.parse_args(argv)
    distributed = "LOCAL_RANK" in os.environ
    if distributed:
        DistributedHelper.init_distributed(0, backend="gloo", use_cuda=False)
    else:
        DistributedHelper.set_random_seeds(0)
    benchmark = make_tensor_benchmark(32, 4, 2, (1, 8, 8))
    model = DistributedHelper.wrap_model(SmallCNN(num_classes=4, width=8))
    sparcl = SparCLPlugin(
        sparsity=0.5,
        removal_ratio=REMOVAL_RATIO,
        gradient_sparsity=0.3,
        min_update_steps=0,
        update_every=0.25,
        min_experience_steps=0,
        min_gradient_masking_steps=0,
        refresh_every=3,
    )
    recorder = AgreementRecorder(sparcl)
    flops = flops_metrics()[0]
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        train_mb_size=args.batch,
        train_epochs=EPOCHS,
        plugins=[sparcl, recorder],
        evaluator=EvaluationPlugin(flops, loggers=[]),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for experience in benchmark.train_stream:
            strategy.train(experience)
    try:  # a state that differs between ranks must be caught
        check_agreement("the ranks' own numbers", {"rank": torch.tensor([rank()])})
        disagreement = None
    except RankDisagreementError as error:
        disagreement = str(error)
    result = {
        "world_size": DistributedHelper.world_size,
        "steps": recorder.steps,
        "stages": recorder.stages,
        "train_flops": flops.result(),
        "distributed_warnings": [str(w.message) for w in caught if "distributed" in str(w.message)],
        "disagreement": disagreement,
        "pooled_statistics": pooled_statistics() if distributed else None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{rank()}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
