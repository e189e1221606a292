"""Training-FLOPs counter: hand-computed counts, FlopCounterMode agreement, sparsity and DER passes,
models that change between experiences, shared weights and compiled models."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.models import IncrementalClassifier, MTSimpleMLP
from avalanche.models.utils import avalanche_forward
from avalanche.training import DER, GDumb, Naive
from avalanche.training.plugins import EvaluationPlugin
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from avalanche_sparcl.benchmarks import split_digits
from avalanche_sparcl.metrics import FlopBreakdown, TrainingFlopCounter, flops_metrics
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


class RecordTrainingPasses(SupervisedPlugin):
    """Keeps, per experience, a copy of the model as training starts it and the inputs of each step."""

    def __init__(self):
        super().__init__()
        self.experiences: list[tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]] = []

    def before_training_exp(self, strategy, **kwargs):
        self.experiences.append((copy.deepcopy(strategy.model), []))

    def before_forward(self, strategy, **kwargs):
        step = (strategy.mb_x.clone(), strategy.mb_task_id.clone(), strategy.mb_y.clone())
        self.experiences[-1][1].append(step)


def replayed_breakdown(experiences) -> FlopBreakdown:
    """The FLOPs of the recorded steps, each experience replayed on its own counter and model copy."""
    total = FlopBreakdown()
    for model, steps in experiences:
        model.train()
        counter = TrainingFlopCounter(model)
        counter.counting = True
        for inputs, task_labels, targets in steps:
            F.cross_entropy(avalanche_forward(model, inputs, task_labels), targets).backward()
            counter.settle_weight_gradients({})
        part = counter.breakdown()
        total = FlopBreakdown(
            total.forward + part.forward, total.input_gradient + part.input_gradient,
            total.weight_gradient + part.weight_gradient, total.other + part.other,
        )
    return total


def incremental_head_model() -> nn.Module:
    head = IncrementalClassifier(16, initial_out_features=2)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), head)


@pytest.mark.parametrize(
    "make_model, strategy_class, task_labels",
    [
        (incremental_head_model, Naive, False),
        (lambda: MTSimpleMLP(input_size=64, hidden_size=16), Naive, True),
        (incremental_head_model, GDumb, False),
    ],
    ids=["IncrementalClassifier", "MultiHeadClassifier", "GDumb"],
)
def test_passes_cost_the_model_they_ran_on_when_the_model_changes(make_model, strategy_class, task_labels):
    """Growing heads, new task heads and GDumb's fresh model copy: each experience costs its own model."""
    torch.manual_seed(0)
    benchmark = split_digits(5, seed=0, return_task_id=task_labels, fixed_class_order=list(range(10)))
    model = make_model()
    flops = flops_metrics()[0]
    recorder = RecordTrainingPasses()
    extra = {"mem_size": 100} if strategy_class is GDumb else {}
    strategy = strategy_class(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), criterion=nn.CrossEntropyLoss(),
        train_mb_size=64, train_epochs=1, plugins=[recorder], evaluator=EvaluationPlugin(flops, loggers=[]),
        **extra,
    )
    for experience in benchmark.train_stream[:3]:
        strategy.train(experience)
    expected = replayed_breakdown(recorder.experiences)
    assert expected.other > 0
    assert flops.breakdown() == expected
    samples = sum(inputs.shape[0] for _, steps in recorder.experiences for inputs, _, _ in steps)
    assert flops.counter.processed_samples() == (samples, samples)


class SharedWeights(nn.Module):
    """Two layers of one Parameter: ``named_parameters`` names it ``first.weight`` only."""

    def __init__(self, conv: bool):
        super().__init__()
        if conv:
            self.first, self.second = nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.Conv2d(2, 2, 3, padding=1)
        else:
            self.first, self.second = nn.Linear(4, 4, bias=False), nn.Linear(4, 4)
        self.second.weight = self.first.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x))).flatten(1)


@pytest.mark.parametrize("conv", [True, False], ids=["Conv2d", "Linear"])
def test_shared_weight_uses_its_mask_in_both_layers(conv):
    model = SharedWeights(conv)
    assert [name for name, _ in model.named_parameters()] == ["first.weight", "second.bias"]
    inputs = torch.randn(2, 2, 3, 3) if conv else torch.randn(2, 4)
    numel = model.first.weight.numel()
    counter = TrainingFlopCounter(model)
    counter.counting = True
    counter.weight_kept = {"first.weight": (numel // 4, numel)}
    one_training_step(model, inputs)
    counter.settle_weight_gradients({"first.weight": (numel // 2, numel)})
    # dense per layer: conv 2 samples x 2x3x3 outputs x 18 multiply-adds, linear 2 samples x 4 outputs x 4
    dense = 2 * (2 * 18 * 18 if conv else 2 * 4 * 4)
    assert list(counter.per_layer()) == ["first.weight"]
    shared = counter.per_layer()["first.weight"]
    # both layers read the quarter-dense mask; only the second layer's input needs a gradient
    assert (shared.forward, shared.input_gradient) == (2 * dense / 4, dense / 4)
    assert shared.weight_gradient == 2 * dense / 2


def test_compiled_model_costs_what_the_model_costs():
    steps = [torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)]
    plain, compiled = tiny_model(), torch.compile(tiny_model(), backend="eager")
    counters = []
    try:
        for model in (plain, compiled):
            counter = TrainingFlopCounter(model)
            counter.counting = True
            for inputs in steps:
                one_training_step(model, inputs)
                counter.settle_weight_gradients({})
            counters.append(counter)
    finally:
        torch._dynamo.reset()
    plain_counter, compiled_counter = counters
    assert compiled_counter.breakdown().matmul == 2 * (2 * 1152 + 3 * 384)  # two steps, counted by hand above
    assert compiled_counter.breakdown().other > 0
    assert compiled_counter.breakdown() == plain_counter.breakdown()
    # weights keep the compiled model's parameter names, which its masks use
    per_layer = {name.removeprefix("_orig_mod."): part for name, part in compiled_counter.per_layer().items()}
    assert list(compiled_counter.per_layer()) == ["_orig_mod.0.weight", "_orig_mod.3.weight"]
    assert per_layer == plain_counter.per_layer()
    assert compiled_counter.processed_samples() == plain_counter.processed_samples() == (4, 4)


class GradientMasksAtTheStep(SupervisedPlugin):
    """Builds this step's gradient masks in an optimizer step pre-hook, as a step-time masking plugin does."""

    def __init__(self, name: str, mask: torch.Tensor):
        super().__init__()
        self.name, self.mask = name, mask
        self.gradient_masks: dict[str, torch.Tensor] = {}

    def before_training(self, strategy, **kwargs):
        strategy.optimizer.register_step_pre_hook(self._at_step)

    def before_backward(self, strategy, **kwargs):
        self.gradient_masks = {}

    def _at_step(self, optimizer, args, kwargs):
        self.gradient_masks = {self.name: self.mask}


def test_weight_gradients_are_booked_with_the_masks_of_the_optimizer_step(tensor_benchmark_factory):
    benchmark = tensor_benchmark_factory(10, 3, 1, (1, 4, 4))
    model = tiny_model()
    mask = torch.zeros(3, 32, dtype=torch.bool)
    mask[:, :8] = True  # 24 of 96 kept
    flops = flops_metrics()[0]
    strategy = Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=8, train_epochs=1,
        plugins=[GradientMasksAtTheStep("3.weight", mask)], evaluator=EvaluationPlugin(flops, loggers=[]),
    )
    strategy.train(benchmark.train_stream[0])
    layers = flops.counter.per_layer()
    assert layers["0.weight"].weight_gradient == 30 * 576  # 30 samples, dense
    assert layers["3.weight"].weight_gradient == 30 * 192 * 24 / 96
