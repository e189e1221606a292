"""Data-parallel SparCL: two gloo processes on CPU agree on masks and kept sets, count FLOPs once.

The runs are tests/distributed_driver.py, once under torch's launcher with 2 processes of batch 8 and
once in one process with batch 16 (the same global batch).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avalanche_sparcl.distributed import check_agreement, digests_of_all_ranks, tensors_digest

DRIVER = Path(__file__).with_name("distributed_driver.py")
EXAMPLES_PER_EXPERIENCE = 64
REMOVED_PER_EXPERIENCE = 16  # round(0.25 * 64), in the driver's single stage at epoch 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_driver(out: Path, batch: int, nproc: int) -> list[dict]:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
        launcher += [f"--master_port={free_port()}"]
    command = [*launcher, str(DRIVER), "--out", str(out), "--batch", str(batch)]
    subprocess.run(command, check=True, timeout=300)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    return run_driver(tmp_path_factory.mktemp("two_ranks"), batch=8, nproc=2)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    return run_driver(tmp_path_factory.mktemp("one_process"), batch=16, nproc=1)[0]


def test_masks_and_gradient_masks_equal_on_both_ranks_after_every_step(two_ranks):
    rank0, rank1 = two_ranks
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert len(rank0["steps"]) == 2 * (2 * 4 + 2 * 3)  # 2 experiences; 4 steps per epoch, 3 after removal
    assert rank0["steps"] == rank1["steps"]
    # the masks did change during the run, so equal digests are not equal by default
    assert len({step["masks"] for step in rank0["steps"]}) > 2
    assert len({step["gradient_masks"] for step in rank0["steps"]}) > 2


def test_every_removal_stage_removes_the_same_exact_global_set(two_ranks):
    rank0, rank1 = two_ranks
    assert rank0["stages"] == rank1["stages"]
    assert [(s["experience"], s["epoch"], s["n_examples"], s["removed"]) for s in rank0["stages"]] == [
        (0, 2, EXAMPLES_PER_EXPERIENCE, REMOVED_PER_EXPERIENCE),
        (1, 2, EXAMPLES_PER_EXPERIENCE, REMOVED_PER_EXPERIENCE),
    ]


def test_training_flops_count_every_rank_once(two_ranks, one_process):
    assert two_ranks[0]["train_flops"] == two_ranks[1]["train_flops"] == one_process["train_flops"]
    assert one_process["train_flops"] > 0


def test_plugins_and_metrics_declare_distributed_support(two_ranks):
    assert two_ranks[0]["distributed_warnings"] == []


def test_state_that_differs_between_ranks_stops_training(two_ranks):
    rank0, rank1 = two_ranks
    rank_digests = [tensors_digest({"rank": torch.tensor([r])})[:12] for r in (0, 1)]
    expected = (
        f"the ranks' own numbers differ between ranks: rank 0 has digest {rank_digests[0]}, ranks [1] "
        f"have ['{rank_digests[1]}']; training stopped"
    )
    assert rank0["disagreement"] == rank1["disagreement"] == expected


def test_agreement_check_is_free_in_one_process():
    masks = {"b": torch.tensor([True, False]), "a": torch.tensor([1.0, 2.0])}
    check_agreement("masks", masks)  # no process group: nothing to compare with
    assert digests_of_all_ranks(masks) == [tensors_digest(dict(reversed(masks.items())))]
    assert tensors_digest(masks) != tensors_digest({**masks, "b": torch.tensor([True, True])})
