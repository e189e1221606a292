"""Sparsity and kept-data metrics, with TDM, with an emulated gradient-mask plugin and dense."""

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin

from avalanche_sparcl.benchmarks import split_digits
from avalanche_sparcl.metrics import data_metrics, flops_metrics, sparsity_metrics
from avalanche_sparcl.models import SmallCNN
from avalanche_sparcl.plugins import TDMPlugin
from avalanche_sparcl.sparse import kept_count

FC1_KEPT_GRADIENTS = 1000
FC1_NUMEL = 128 * 256
FC1_FORWARD_PER_SAMPLE = 2 * FC1_NUMEL


class FixedGradientMask(SupervisedPlugin):
    """Stands in for DGM: applies a fixed gradient mask to ``fc1.weight`` and exposes it."""

    def __init__(self) -> None:
        super().__init__()
        self.gradient_masks: dict[str, torch.Tensor] = {}

    def before_backward(self, strategy, **kwargs):
        mask = torch.zeros(128, 256, dtype=torch.bool)
        mask.view(-1)[:FC1_KEPT_GRADIENTS] = True
        self.gradient_masks = {"fc1.weight": mask}

    def after_backward(self, strategy, **kwargs):
        strategy.model.fc1.weight.grad.mul_(self.gradient_masks["fc1.weight"])


class HalveDataAtSecondEpoch(SupervisedPlugin):
    """Stands in for DDR: keeps the first half of the experience's data from epoch 1 on."""

    def before_training_epoch(self, strategy, **kwargs):
        if strategy.clock.train_exp_epochs == 1:
            keep = len(strategy.adapted_dataset) // 2
            strategy.adapted_dataset = strategy.adapted_dataset.subset(range(keep))
            strategy.make_train_dataloader(shuffle=True)


def run(plugins, metrics, epochs=1):
    torch.manual_seed(0)
    experience = split_digits(n_experiences=5, seed=0).train_stream[0]
    model = SmallCNN()
    evaluator = EvaluationPlugin(*metrics)
    strategy = Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=64,
        train_epochs=epochs, plugins=plugins, evaluator=evaluator,
    )
    strategy.train(experience)
    return experience, evaluator.get_all_metrics()


def last(metrics, name):
    return metrics[f"{name}/train_phase/train_stream"][1][-1]


def test_weight_and_gradient_sparsity_under_tdm():
    tdm = TDMPlugin(sparsity=0.9, expand_ratio=0.0)
    _, metrics = run([tdm], sparsity_metrics())
    numels = {"conv2.weight": 64 * 32 * 9, "conv3.weight": 64 * 64 * 9}  # the Linear layers stay dense
    kept = {name: kept_count(numel, 0.9) for name, numel in numels.items()}
    overall = 1 - sum(kept.values()) / sum(numels.values())
    assert last(metrics, "WeightSparsity") == pytest.approx(overall, abs=1e-12)
    layers = sorted(name for name in metrics if name.startswith("WeightSparsity_Layer/"))
    assert layers == [f"WeightSparsity_Layer/{name}/train_phase/train_stream" for name in numels]
    for name in numels:
        layer = last(metrics, f"WeightSparsity_Layer/{name}")
        assert layer == pytest.approx(1 - kept[name] / numels[name], abs=1e-12)
    assert last(metrics, "GradientSparsity") == pytest.approx(overall, abs=1e-12)  # TDM masks gradients


def test_gradient_masks_set_gradient_sparsity_and_weight_gradient_flops():
    flops = flops_metrics()[0]
    experience, metrics = run([FixedGradientMask()], [*sparsity_metrics(), flops])
    assert last(metrics, "WeightSparsity") == 0.0  # no weight masks: dense
    assert last(metrics, "GradientSparsity") == pytest.approx(1 - FC1_KEPT_GRADIENTS / FC1_NUMEL, abs=1e-12)
    fc1 = flops.counter.per_layer()["fc1.weight"]
    samples = len(experience.dataset)
    assert fc1.forward == FC1_FORWARD_PER_SAMPLE * samples
    assert fc1.weight_gradient == pytest.approx(
        FC1_FORWARD_PER_SAMPLE * samples * FC1_KEPT_GRADIENTS / FC1_NUMEL, rel=1e-12
    )


def test_kept_data_per_epoch_and_experience():
    flops = flops_metrics()[0]
    experience, metrics = run([HalveDataAtSecondEpoch()], [*data_metrics(), flops], epochs=2)
    samples = len(experience.dataset)
    epochs = metrics["KeptData_Epoch/train_phase/train_stream"][1]
    assert epochs == [1.0, (samples // 2) / samples]
    assert metrics["KeptData_Exp/train_phase/train_stream/Exp000"][1] == [(1.0 + epochs[1]) / 2]
    assert flops.counter.processed_samples()[1] == samples + samples // 2


def test_dense_run_reports_no_sparsity_and_all_data():
    _, metrics = run([], [*sparsity_metrics(), *data_metrics()])
    assert last(metrics, "WeightSparsity") == 0.0
    assert last(metrics, "GradientSparsity") == 0.0
    assert last(metrics, "KeptData_Epoch") == 1.0
    assert not any(name.startswith("WeightSparsity_Layer") for name in metrics)
