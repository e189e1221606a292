"""``SparCLCSVLogger``: SparCL's metrics per epoch and per experience, as the evaluator computed them."""

from __future__ import annotations

import csv
import warnings

import pytest
import torch
from avalanche.models import SimpleMLP
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin

from avalanche_sparcl import SparCLPlugin
from avalanche_sparcl.benchmarks import split_digits
from avalanche_sparcl.loggers import EPOCH_COLUMNS, EXPERIENCE_COLUMNS, SparCLCSVLogger
from avalanche_sparcl.metrics import data_metrics, flops_metrics, sparsity_metrics


def rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def history(evaluator: EvaluationPlugin, prefix: str) -> list[float]:
    """The values of the one metric whose name starts with ``prefix/``, in order."""
    found = [
        values for name, (_, values) in evaluator.get_all_metrics().items() if name.startswith(prefix + "/")
    ]
    assert len(found) == 1, prefix
    return [float(value) for value in found[0]]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """Two experiences of Split Digits, 3 epochs each, SparCL 0.75 with DDR and DGM."""
    folder = tmp_path_factory.mktemp("csv")
    torch.manual_seed(0)
    benchmark = split_digits(n_experiences=5, seed=0)
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=32)
    evaluator = EvaluationPlugin(
        *flops_metrics(epoch=True),
        *sparsity_metrics(per_layer=False),
        *data_metrics(),
        loggers=[SparCLCSVLogger(folder)],
    )
    plugin = SparCLPlugin(0.75, 0.3, 0.2, min_update_steps=0, min_experience_steps=0)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        train_mb_size=32,
        train_epochs=3,
        plugins=[plugin],
        evaluator=evaluator,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for experience in benchmark.train_stream[:2]:
            strategy.train(experience)
    evaluator.loggers[0].close()
    return folder, evaluator


def test_one_row_per_epoch_with_the_evaluators_values(logged):
    folder, evaluator = logged
    epochs = rows(folder / "sparcl_epochs.csv")
    assert tuple(epochs[0]) == EPOCH_COLUMNS
    assert [(row["training_exp"], row["epoch"]) for row in epochs] == [
        ("0", "0"),
        ("0", "1"),
        ("0", "2"),
        ("1", "0"),
        ("1", "1"),
        ("1", "2"),
    ]
    for column, metric in (
        ("train_flops", "TrainFLOPs_Epoch"),
        ("weight_sparsity", "WeightSparsity"),
        ("gradient_sparsity", "GradientSparsity"),
        ("kept_data", "KeptData_Epoch"),
    ):
        assert [float(row[column]) for row in epochs] == history(evaluator, metric), column
    kept = [float(row["kept_data"]) for row in epochs]
    assert kept[0] == kept[3] == 1.0 and min(kept) < 1.0  # DDR removed data in later epochs


def test_one_row_per_experience_whose_flops_are_its_epochs(logged):
    folder, evaluator = logged
    epochs = rows(folder / "sparcl_epochs.csv")
    experiences = rows(folder / "sparcl_experiences.csv")
    assert tuple(experiences[0]) == EXPERIENCE_COLUMNS
    assert [row["training_exp"] for row in experiences] == ["0", "1"]
    for index, row in enumerate(experiences):
        own = [float(epoch["train_flops"]) for epoch in epochs if epoch["training_exp"] == str(index)]
        # the experience's FLOPs are its epochs' and the passes made outside them (the probe SparCL runs
        # on one minibatch when masks start): a few thousand for this MLP
        outside = float(row["train_flops"]) - sum(own)
        assert 0 <= outside < 0.005 * sum(own)
        assert row["iteration"] == epochs[3 * index + 2]["iteration"]
        assert row["weight_sparsity"] == epochs[3 * index + 2]["weight_sparsity"]
        mean_kept = sum(float(epoch["kept_data"]) for epoch in epochs[3 * index : 3 * index + 3]) / 3
        assert float(row["kept_data"]) == pytest.approx(mean_kept, rel=1e-6)
    totals = [float(row["train_flops_total"]) for row in experiences]
    assert totals == history(evaluator, "TrainFLOPs_Total")
    assert totals[1] == pytest.approx(
        float(experiences[0]["train_flops"]) + float(experiences[1]["train_flops"])
    )
