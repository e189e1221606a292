"""Training-FLOPs counter: hand-computed counts, FlopCounterMode agreement, sparsity and DER passes."""

import math

import pytest
import torch
import torch.nn.functional as F
from avalanche.training import DER, Naive
from avalanche.training.plugins import EvaluationPlugin
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from avalanche_sparcl.benchmarks import split_digits
from avalanche_sparcl.metrics import TrainingFlopCounter, flops_metrics
from avalanche_sparcl.models import ResNet18, SmallCNN
from avalanche_sparcl.plugins import TDMPlugin
from avalanche_sparcl.sparse import kept_count

# SmallCNN (width 32) on 1x8x8 digits: output elements x multiply-adds per output element.
SMALL_CNN_MACS = {
    "conv1.weight": 32 * 8 * 8 * (1 * 9),
    "conv2.weight": 64 * 8 * 8 * (32 * 9),
    "conv3.weight": 64 * 4 * 4 * (64 * 9),
    "fc1.weight": 128 * 256,
    "classifier.weight": 10 * 128,
}
SMALL_CNN_FORWARD = 2 * sum(SMALL_CNN_MACS.values())
SMALL_CNN_FIRST_LAYER_FORWARD = 2 * SMALL_CNN_MACS["conv1.weight"]


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))


def one_training_step(model: nn.Module, inputs: torch.Tensor) -> None:
    targets = torch.zeros(inputs.shape[0], dtype=torch.long)
    F.cross_entropy(model(inputs), targets).backward()


def test_tiny_model_counts_by_hand():
    model = tiny_model()
    counter = TrainingFlopCounter(model)
    counter.counting = True
    one_training_step(model, torch.randn(2, 1, 4, 4))
    counter.settle_weight_gradients({})
    layers = counter.per_layer()
    # conv: 2 samples x 2 channels x 4x4 outputs x 9 multiply-adds x 2 FLOPs; its input needs no gradient
    assert (layers["0.weight"].forward, layers["0.weight"].input_gradient) == (1152, 0)
    assert layers["0.weight"].weight_gradient == 1152
    # linear: 2 samples x 3 outputs x 32 multiply-adds x 2 FLOPs, in each of the three parts
    assert (layers["3.weight"].forward, layers["3.weight"].input_gradient) == (384, 384)
    assert layers["3.weight"].weight_gradient == 384
    assert counter.breakdown().matmul == 2 * 1152 + 3 * 384
    assert counter.processed_samples() == (2, 2)
    assert counter.breakdown().other > 0


def test_masks_scale_each_part_by_its_kept_fraction():
    model = tiny_model()
    counter = TrainingFlopCounter(model)
    counter.counting = True
    counter.weight_kept = {"3.weight": (24, 96)}
    one_training_step(model, torch.randn(2, 1, 4, 4))
    counter.settle_weight_gradients({"3.weight": (12, 96)})
    linear = counter.per_layer()["3.weight"]
    assert (linear.forward, linear.input_gradient, linear.weight_gradient) == (96, 96, 48)
    assert counter.per_layer()["0.weight"].forward == 1152


def test_no_grad_pass_and_paused_counter_cost_what_they_should():
    model = tiny_model()
    counter = TrainingFlopCounter(model)
    counter.counting = True
    with torch.no_grad():
        model(torch.randn(3, 1, 4, 4))
    counter.settle_weight_gradients({})
    assert counter.breakdown().matmul == 3 * (576 + 192)  # forward only, 3 samples
    assert counter.processed_samples() == (3, 0)
    counter.counting = False
    one_training_step(model, torch.randn(2, 1, 4, 4))
    counter.settle_weight_gradients({})
    assert counter.breakdown().matmul == 3 * (576 + 192)


def test_other_operations_are_dense_and_per_sample():
    model = tiny_model()
    dense, masked = TrainingFlopCounter(model), TrainingFlopCounter(model)
    dense.counting = masked.counting = True
    masked.weight_kept = {"3.weight": (1, 96)}
    one_training_step(model, torch.randn(2, 1, 4, 4))
    other_two = dense.breakdown().other
    assert other_two > 0 and masked.breakdown().other == other_two
    one_training_step(model, torch.randn(4, 1, 4, 4))
    assert dense.breakdown().other == pytest.approx(3 * other_two)


@pytest.mark.parametrize(
    "model, inputs",
    [(SmallCNN(), torch.randn(4, 1, 8, 8)), (ResNet18(nf=64), torch.randn(2, 3, 32, 32))],
    ids=["SmallCNN", "ResNet18"],
)
def test_agrees_with_flop_counter_mode_on_dense_models(model, inputs):
    """FlopCounterMode counts convolutions and matrix products only: compare the matmul-like part."""
    counter = TrainingFlopCounter(model)
    counter.counting = True
    with FlopCounterMode(display=False) as reference:
        one_training_step(model, inputs)
    counter.settle_weight_gradients({})
    counted = counter.breakdown().matmul
    assert abs(counted - reference.get_total_flops()) <= 0.02 * reference.get_total_flops()
    assert counted == reference.get_total_flops()  # in fact exact


def test_hand_count_of_small_cnn_matches_counter():
    model = SmallCNN()
    counter = TrainingFlopCounter(model)
    counter.counting = True
    one_training_step(model, torch.randn(3, 1, 8, 8))
    counter.settle_weight_gradients({})
    assert counter.breakdown().forward == 3 * SMALL_CNN_FORWARD
    assert counter.breakdown().input_gradient == 3 * (SMALL_CNN_FORWARD - SMALL_CNN_FIRST_LAYER_FORWARD)


def test_tdm_scales_forward_flops_of_masked_layers_by_kept_fraction():
    torch.manual_seed(0)
    experience = split_digits(n_experiences=5, seed=0).train_stream[0]
    model = SmallCNN()
    tdm = TDMPlugin(sparsity=0.9, expand_ratio=0.0)  # mutations keep the kept count constant
    flops = flops_metrics()[0]
    strategy = Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=64, train_epochs=1,
        plugins=[tdm], evaluator=EvaluationPlugin(flops),
    )
    strategy.train(experience)
    samples = len(experience.dataset)
    layers = flops.counter.per_layer()
    assert sorted(tdm.masks) == ["conv2.weight", "conv3.weight"]
    for name in ("conv2.weight", "conv3.weight"):
        kept, numel = int(tdm.masks[name].sum()), tdm.masks[name].numel()
        assert kept == kept_count(numel, 0.9)
        per_sample = 2 * SMALL_CNN_MACS[name]
        # TDM's layer probe runs one dense sample before the mask exists; training runs masked
        expected = per_sample + per_sample * samples * kept / numel
        assert layers[name].forward == pytest.approx(expected, rel=1e-12)
        assert layers[name].weight_gradient == pytest.approx(per_sample * samples * kept / numel, rel=1e-12)
    for name in ("conv1.weight", "fc1.weight"):  # the stem and the Linear layers stay dense
        assert layers[name].forward == 2 * SMALL_CNN_MACS[name] * (samples + 1)


def test_dense_der_counts_buffer_samples_and_logit_pass_but_not_evaluation():
    torch.manual_seed(0)
    benchmark = split_digits(n_experiences=5, seed=0)
    model = SmallCNN()
    flops = flops_metrics()[0]
    evaluator = EvaluationPlugin(flops)
    batch, buffer_batch = 32, 5
    strategy = DER(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), mem_size=20,
        batch_size_mem=buffer_batch,
        train_mb_size=batch, train_epochs=1, evaluator=evaluator,
    )
    first, second = benchmark.train_stream[0], benchmark.train_stream[1]
    strategy.train(first)
    after_first = flops.result()
    strategy.eval(benchmark.test_stream[:2])
    assert flops.result() == after_first
    strategy.train(second)

    current = len(first.dataset) + len(second.dataset)
    trained = current + math.ceil(len(second.dataset) / batch) * buffer_batch  # replay joins exp 1 only
    logit_pass = current  # end of each experience: forward only, all of the experience's data
    assert flops.counter.processed_samples() == (trained + logit_pass, trained)
    expected = (
        SMALL_CNN_FORWARD * (trained + logit_pass)
        + (SMALL_CNN_FORWARD - SMALL_CNN_FIRST_LAYER_FORWARD) * trained
        + SMALL_CNN_FORWARD * trained
    )
    assert flops.breakdown().matmul == expected
    metrics = evaluator.get_all_metrics()
    total = metrics["TrainFLOPs_Total/train_phase/train_stream"][1]
    per_experience = [metrics[f"TrainFLOPs_Exp/train_phase/train_stream/Exp00{i}"][1][0] for i in (0, 1)]
    assert total == [after_first, flops.result()]
    assert sum(per_experience) == pytest.approx(flops.result())
