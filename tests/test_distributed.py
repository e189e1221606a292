"""Data-parallel SparCL: two gloo processes on CPU agree on masks and kept sets, count FLOPs once.

The runs are tests/distributed_driver.py, once under torch's launcher with 2 processes of batch 8 and
once in one process with batch 16 (the same global batch).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import distributed_driver
import pytest
import torch
from checkpoint_driver import one_thread

from avalanche_sparcl.distributed import check_agreement, digests_of_all_ranks, tensors_digest
from avalanche_sparcl.experiments import cli
from avalanche_sparcl.experiments.config import load_config
from avalanche_sparcl.experiments.fingerprint import run_identity
from avalanche_sparcl.plugins import guard

DRIVER = Path(__file__).with_name("distributed_driver.py")
RUN_DRIVER = Path(__file__).with_name("distributed_run_driver.py")
CONFIG = Path(__file__).parents[1] / "experiments/configs/split_digits/sparcl_der_0.75_buf200.yaml"
EXAMPLES_PER_EXPERIENCE = 64
LAUNCHER = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
"""torch's launcher, 2 processes on a free port of this machine."""
REMOVED_PER_EXPERIENCE = 16  # round(0.25 * 64), in the driver's single stage at epoch 2


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("two_ranks")
    subprocess.run([*LAUNCHER, str(DRIVER), "--out", str(out), "--batch", "8"], check=True, timeout=300)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("one_process")
    with one_thread():  # as each launched process runs
        distributed_driver.main(["--out", str(out), "--batch", "16"])  # no process group: one process
    return json.loads((out / "rank0.json").read_text())


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


def test_forgetting_statistics_count_an_example_seen_by_two_ranks_once(two_ranks):
    expected = {  # example 0 keeps rank 0's observations only; 1 and 2 those of the rank that saw them
        "observations": [2, 2, 2, 5],
        "forgetting_events": [1, 0, 1, 0],
        "correct_count": [1, 2, 1, 0],
        "loss_sum": [1.0, 0.5, 2.0, 0.0],
        "labels": [3, 1, 2, -1],
    }
    assert two_ranks[0]["pooled_statistics"] == two_ranks[1]["pooled_statistics"] == expected


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


@pytest.fixture(scope="module")
def runner_in_two_ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("runner")
    subprocess.run([*LAUNCHER, str(RUN_DRIVER), str(out)], check=True, timeout=300)
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def comparable(results: dict) -> dict:
    return {key: value for key, value in results.items() if key not in ("wall_time_s", "train_time_s")}


def test_a_resumed_two_process_run_equals_the_uninterrupted_one(runner_in_two_ranks):
    out, (rank0, rank1) = runner_in_two_ranks
    assert rank0["trained_again"] == rank1["trained_again"] == [1]  # the smoke run's second experience
    assert comparable(rank0["resumed"]) == comparable(rank0["uninterrupted"]) == comparable(rank1["resumed"])
    results = rank0["resumed"]
    assert results["world_size"] == 2
    assert len(results["mask_digests"]) == 2 and len(set(results["mask_digests"])) == 1
    assert results["kept_data"] < 1.0  # DDR removed examples
    run_dirs = [out / run / "smoke" / "split_digits" / "sparcl_der_0.75_buf200" / "seed_0" for run in "ab"]
    for name in ("eval_results.csv", "training_results.csv"):  # rank 0 alone logged, once per row
        assert (run_dirs[1] / "csv" / name).read_text() == (run_dirs[0] / "csv" / name).read_text()
    # rank 0 alone logged: one event file, and in the resumed run one more for the part after the resume
    # (the run's summary views live in their own sub-folder, written once at the end)
    event_files = [list((run_dir / "tensorboard").glob("events.out.tfevents.*")) for run_dir in run_dirs]
    assert [len(files) for files in event_files] == [1, 2]
    summaries = [
        list((run_dir / "tensorboard" / "summary").rglob("events.out.tfevents.*")) for run_dir in run_dirs
    ]
    assert [len(files) >= 1 for files in summaries] == [True, True]
    assert json.loads((run_dirs[1] / "results.json").read_text())["mask_digests"] == results["mask_digests"]


def test_nproc_must_be_a_positive_integer(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "x.yaml", "--nproc", "0"])
    assert "--nproc must be an integer >= 1, got '0'" in capsys.readouterr().err


def test_the_guard_stops_every_rank_when_another_rank_sees_a_non_finite_loss(monkeypatch):
    monkeypatch.setattr(guard, "is_distributed", lambda: True)
    other_rank_flags = torch.tensor([False, True, False])  # its second loss is NaN; weights are finite
    monkeypatch.setattr(guard, "max_across_ranks", lambda flags: other_rank_flags | flags)
    plugin = guard.NonFiniteGuardPlugin(check_every=2)
    clock = SimpleNamespace(train_exp_epochs=1, train_epoch_iterations=0)
    experience = SimpleNamespace(current_experience=3)
    model, loss = torch.nn.Linear(2, 2), torch.tensor(0.5)
    strategy = SimpleNamespace(model=model, experience=experience, clock=clock, loss=loss)
    plugin.after_update(strategy)
    clock.train_epoch_iterations = 1
    with pytest.raises(guard.NonFiniteTrainingError) as error:
        plugin.after_update(strategy)
    assert str(error.value) == (
        "non-finite training loss (on another rank) at experience 3, epoch 1, iteration 1; training stopped"
    )


def test_nproc_on_cuda_needs_one_gpu_per_process(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    arguments = ["run", str(CONFIG), "--nproc", "2", "--device", "cuda", "--out", str(tmp_path)]
    assert cli.main(arguments) == 2
    assert capsys.readouterr().err == (
        "sparcl-bench: error: --nproc 2 --device cuda needs one GPU per process; this machine has 1\n"
    )


def test_a_data_parallel_run_has_another_identity_and_one_process_identities_are_unchanged():
    config = load_config(CONFIG)
    one_process = run_identity(config, smoke=False)
    assert set(one_process) == {"config", "smoke", "package_version"}
    assert run_identity(config, smoke=False, world_size=2) == {**one_process, "world_size": 2}
