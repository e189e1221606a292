"""Sparsity and kept-data metrics, with TDM, with an emulated gradient-mask plugin and dense.

The sparsity metrics measure the tensors: several plugins below expose masks that the weights or
gradients do not follow, and a recorder counts the zeros independently.
"""

import copy

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


class FixedGradientMaskAtStep(FixedGradientMask):
    """Applies the same gradient mask right before ``optimizer.step()`` instead of after backward."""

    def after_backward(self, strategy, **kwargs):
        pass

    def before_update(self, strategy, **kwargs):
        super().after_backward(strategy)


class RecordZeros(SupervisedPlugin):
    """Counts the zero entries of the current model's ``names``: weights per epoch, gradients per step."""

    def __init__(self, *names: str) -> None:
        super().__init__()
        self.names = names
        self.weight_zeros: list[dict[str, tuple[int, int]]] = []
        self.gradient_zeros: list[list[tuple[int, int]]] = []

    def zeros(self, tensors):
        return {name: (int((tensor == 0).sum()), tensor.numel()) for name, tensor in tensors.items()}

    def before_training_epoch(self, strategy, **kwargs):
        self.gradient_zeros.append([])

    def after_update(self, strategy, **kwargs):
        grads = {name: strategy.model.get_parameter(name).grad for name in self.names}
        counts = self.zeros(grads).values()
        self.gradient_zeros[-1].append((sum(z for z, _ in counts), sum(n for _, n in counts)))

    def after_training_epoch(self, strategy, **kwargs):
        weights = {name: strategy.model.get_parameter(name) for name in self.names}
        self.weight_zeros.append(self.zeros(weights))

    def weight_sparsity(self, epoch, *names):
        counts = [self.weight_zeros[epoch][name] for name in names or self.names]
        return sum(z for z, _ in counts) / sum(n for _, n in counts)

    def gradient_sparsity(self, epoch):
        steps = self.gradient_zeros[epoch]
        return sum(z for z, _ in steps) / sum(n for _, n in steps)


def fc1_half_mask():
    """Keeps the first half of ``fc1.weight``: sparsity 0.5."""
    mask = torch.zeros(128, 256, dtype=torch.bool)
    mask.view(-1)[: FC1_NUMEL // 2] = True
    return mask


class DeclaresMasksOnly(SupervisedPlugin):
    """Exposes a 50% weight mask of ``fc1.weight`` but never applies it to weights or gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.masks = {"fc1.weight": fc1_half_mask()}


class RevivePrunedWeights(SupervisedPlugin):
    """After TDM re-zeroed the pruned weights, writes a value into ``count`` pruned ``conv2`` entries."""

    def __init__(self, tdm: TDMPlugin, count: int) -> None:
        super().__init__()
        self.tdm = tdm
        self.count = count

    @torch.no_grad()
    def after_update(self, strategy, **kwargs):
        pruned = (~self.tdm.masks["conv2.weight"]).view(-1).nonzero().squeeze(1)[: self.count]
        strategy.model.conv2.weight.view(-1)[pruned] = 0.01


class PrunesCapturedModel(SupervisedPlugin):
    """Like a plugin holding parameter references: prunes the ``fc1.weight`` it saw at the start only."""

    def __init__(self) -> None:
        super().__init__()
        self.masks = {"fc1.weight": fc1_half_mask()}
        self.captured = None

    def before_training_exp(self, strategy, **kwargs):
        if self.captured is None:
            self.captured = strategy.model.fc1.weight

    @torch.no_grad()
    def after_update(self, strategy, **kwargs):
        self.captured.mul_(self.masks["fc1.weight"])


class SwapInDenseCopy(SupervisedPlugin):
    """At the second epoch replaces ``strategy.model`` by a copy with no zero weight (as GDumb does)."""

    def before_training_epoch(self, strategy, **kwargs):
        if strategy.clock.train_exp_epochs == 1:
            dense = copy.deepcopy(strategy.model)
            with torch.no_grad():
                for param in dense.parameters():
                    param.masked_fill_(param == 0, 0.01)
            strategy.model = dense
            strategy.make_optimizer()


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
    recorder = RecordZeros("fc1.weight")
    experience, metrics = run([FixedGradientMask(), recorder], [*sparsity_metrics(), flops])
    assert last(metrics, "WeightSparsity") == 0.0  # no weight masks, dense weights
    # the mask's zeros plus those of kept entries whose input or output unit was inactive in the batch
    assert last(metrics, "GradientSparsity") == recorder.gradient_sparsity(0)
    assert last(metrics, "GradientSparsity") > 1 - FC1_KEPT_GRADIENTS / FC1_NUMEL
    fc1 = flops.counter.per_layer()["fc1.weight"]
    samples = len(experience.dataset)
    assert fc1.forward == FC1_FORWARD_PER_SAMPLE * samples
    assert fc1.weight_gradient == pytest.approx(
        FC1_FORWARD_PER_SAMPLE * samples * FC1_KEPT_GRADIENTS / FC1_NUMEL, rel=1e-12
    )


def test_gradient_sparsity_sees_masks_applied_right_before_the_step():
    recorder = RecordZeros("fc1.weight")
    _, metrics = run([FixedGradientMaskAtStep(), recorder], sparsity_metrics())
    assert last(metrics, "GradientSparsity") == recorder.gradient_sparsity(0)
    assert last(metrics, "GradientSparsity") > 1 - FC1_KEPT_GRADIENTS / FC1_NUMEL


def test_weight_sparsity_counts_pruned_weights_another_plugin_revived():
    tdm = TDMPlugin(sparsity=0.9, expand_ratio=0.0)
    revived = 100
    recorder = RecordZeros("conv2.weight", "conv3.weight")
    _, metrics = run([tdm, RevivePrunedWeights(tdm, revived), recorder], sparsity_metrics())
    conv2 = last(metrics, "WeightSparsity_Layer/conv2.weight")
    assert conv2 == recorder.weight_sparsity(0, "conv2.weight")
    assert last(metrics, "WeightSparsity_Layer/conv3.weight") == recorder.weight_sparsity(0, "conv3.weight")
    assert last(metrics, "WeightSparsity") == recorder.weight_sparsity(0)
    numel = 64 * 32 * 9
    assert conv2 <= 1 - (kept_count(numel, 0.9) + revived) / numel  # not the mask's 0.9


def test_sparsity_of_masks_a_plugin_declares_but_never_applies():
    recorder = RecordZeros("fc1.weight")
    _, metrics = run([DeclaresMasksOnly(), recorder], sparsity_metrics())
    assert last(metrics, "WeightSparsity") == recorder.weight_sparsity(0) == 0.0  # not the mask's 0.5
    assert last(metrics, "WeightSparsity_Layer/fc1.weight") == 0.0
    assert last(metrics, "GradientSparsity") == recorder.gradient_sparsity(0)
    assert last(metrics, "GradientSparsity") < 0.5


def test_sparsity_follows_a_replaced_model_by_name():
    plugin = PrunesCapturedModel()
    recorder = RecordZeros("fc1.weight")
    _, metrics = run([plugin, SwapInDenseCopy(), recorder], sparsity_metrics(), epochs=2)
    weight = metrics["WeightSparsity/train_phase/train_stream"][1]
    assert weight == [recorder.weight_sparsity(0), recorder.weight_sparsity(1)]
    assert weight[0] == 0.5  # the original model, which the plugin prunes
    assert weight[1] < 0.5  # the dense copy that replaced it
    assert int((plugin.captured == 0).sum()) == FC1_NUMEL // 2  # the original stays pruned
    gradient = metrics["GradientSparsity/train_phase/train_stream"][1]
    assert gradient == [recorder.gradient_sparsity(0), recorder.gradient_sparsity(1)]
    assert sorted(name for name in metrics if name.startswith("WeightSparsity_Layer/")) == [
        "WeightSparsity_Layer/fc1.weight/train_phase/train_stream"
    ]


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
