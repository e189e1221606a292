"""SparCL on what Avalanche users start with: its default model, its strategies' own lifecycles.

Each test pins a behaviour found by running Avalanche's own test suite with SparCL injected
(``make compat``): the default model taken, frozen weights untouched, the optimizer that steps is the
one hooked and is let go after training, the minibatch other plugins read left alone, refusals before
the first step.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from avalanche.benchmarks import CLExperience, CLScenario, CLStream
from avalanche.benchmarks.utils import AvalancheDataset, ConstantSequence, DataAttribute
from avalanche.core import SupervisedPlugin
from avalanche.models import PNN, MTSimpleMLP, SimpleMLP
from avalanche.models.utils import avalanche_model_adaptation
from avalanche.training import Naive, StreamingLDA
from avalanche.training.plugins import EvaluationPlugin, RWalkPlugin
from conftest import RULES_OFF, TDM_RULES_OFF
from torch import nn

from avalanche_sparcl import SparCLPlugin, TDMPlugin
from avalanche_sparcl.benchmarks import split_digits
from avalanche_sparcl.sparse.masks import kept_count


def quiet() -> EvaluationPlugin:
    return EvaluationPlugin(loggers=[])


def train_quietly(strategy, experiences) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for experience in experiences:
            strategy.train(experience)


class PrunedWeightsAudit(SupervisedPlugin):
    """After every optimizer step: no pruned weight of the current model is non-zero."""

    def __init__(self, sparcl):
        super().__init__()
        self.sparcl = sparcl
        self.steps = 0

    def after_update(self, strategy, **kwargs):
        params = dict(strategy.model.named_parameters())
        for name, mask in self.sparcl.masks.items():
            nonzero = int((params[name].detach()[~mask] != 0).sum())
            assert nonzero == 0, f"{nonzero} pruned weights of {name} moved at step {self.steps}"
        self.steps += 1


@pytest.fixture(scope="module")
def digits():
    return split_digits(n_experiences=5, seed=0)


@pytest.fixture(scope="module")
def digits_with_tasks():
    return split_digits(n_experiences=5, seed=0, return_task_id=True)


def test_simple_mlp_takes_the_one_line_plugin(digits):
    """Avalanche's hello world: SimpleMLP masks its input layer, the classifier stays dense."""
    torch.manual_seed(0)
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=32)
    sparcl = SparCLPlugin(sparsity=0.75, removal_ratio=0.0, gradient_sparsity=0.2)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        train_mb_size=32,
        train_epochs=1,
        plugins=[sparcl],
        evaluator=quiet(),
    )
    train_quietly(strategy, digits.train_stream[:2])
    mask = sparcl.masks["features.0.weight"]
    assert list(sparcl.masks) == ["features.0.weight"]
    assert int(mask.sum()) == kept_count(64 * 32, 0.75) == 512
    assert int((model.features[0].weight[~mask] != 0).sum()) == 0
    assert int((model.classifier.weight == 0).sum()) == 0


def test_rwalk_on_a_multi_head_model_reads_avalanche_minibatches_with_ddr(digits_with_tasks):
    """Plugins listed before SparCL read Avalanche's own three fields, the task label last."""

    class TaskLabels(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.seen: list[tuple[int, set[int]]] = []

        def before_training_iteration(self, strategy, **kwargs):
            task = strategy.experience.task_label
            self.seen.append((len(strategy.mbatch), set(strategy.mb_task_id.tolist()) - {task}))

    torch.manual_seed(0)
    model = MTSimpleMLP(input_size=64, hidden_size=32)
    for experience in digits_with_tasks.train_stream[:2]:  # every head from the start: RWalk cannot grow
        avalanche_model_adaptation(model, experience)
    labels = TaskLabels()
    sparcl = SparCLPlugin(sparsity=0.75, removal_ratio=0.3, gradient_sparsity=0.2, **RULES_OFF)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        train_mb_size=32,
        train_epochs=3,
        plugins=[labels, RWalkPlugin(), sparcl],
        evaluator=quiet(),
    )
    train_quietly(strategy, digits_with_tasks.train_stream[:2])
    assert {fields for fields, _ in labels.seen} == {3}
    assert all(other_tasks == set() for _, other_tasks in labels.seen)
    assert [len(record.stages) for record in sparcl.ddr.stage_counts] == [1, 1]


def test_pnn_masks_the_new_column_and_leaves_the_frozen_one_alone(digits_with_tasks):
    torch.manual_seed(0)
    model = PNN(num_layers=1, in_features=64, hidden_features_per_column=16)
    tdm = TDMPlugin(sparsity=0.75, **TDM_RULES_OFF)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        train_mb_size=32,
        train_epochs=2,
        plugins=[tdm],
        evaluator=quiet(),
    )
    train_quietly(strategy, digits_with_tasks.train_stream[:1])
    column0 = "layers.0.columns.0.itoh.weight"
    after_first = dict(model.named_parameters())[column0].detach().clone()
    assert list(tdm.masks) == [column0]
    train_quietly(strategy, digits_with_tasks.train_stream[1:2])
    params = dict(model.named_parameters())
    column1 = "layers.0.columns.1.itoh.weight"
    assert not params[column0].requires_grad
    assert torch.equal(params[column0], after_first)  # frozen column unchanged by TDM's updates
    adapters = ["layers.0.columns.1.adapter.U.weight", "layers.0.columns.1.adapter.V.weight"]
    assert sorted(tdm.masks) == [column0, *adapters, column1]
    # only the new column, its lateral adapter included, trains and changes
    assert sorted(tdm.dynamic_sparsity.params) == [*adapters, column1]
    assert int(tdm.masks[column1].sum()) == kept_count(64 * 16, 0.75) == 256
    for name in [*adapters, column1]:
        mask = tdm.masks[name]
        assert int(mask.sum()) == kept_count(mask.numel(), 0.75), name
        assert int((params[name].detach()[~mask] != 0).sum()) == 0, name


def test_streaming_lda_without_an_optimizer_is_left_dense_with_one_warning(digits):
    torch.manual_seed(0)
    backbone = SimpleMLP(num_classes=10, input_size=64, hidden_size=32)
    before = {name: p.detach().clone() for name, p in backbone.named_parameters()}
    tdm = TDMPlugin(sparsity=0.75)
    strategy = StreamingLDA(
        slda_model=backbone,
        criterion=nn.CrossEntropyLoss(),
        input_size=32,
        num_classes=10,
        output_layer_name="features",
        train_mb_size=32,
        plugins=[tdm],
        evaluator=quiet(),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for experience in digits.train_stream[:2]:
            strategy.train(experience)
    messages = [str(w.message) for w in caught if "TDMPlugin" in str(w.message)]
    assert messages == [
        "TDMPlugin: StreamingLDA trains without an optimizer (no gradient steps), so there is no training "
        "SparCL could make sparse: no mask is built and the weights are left as they are; this "
        "warning is given once"
    ]
    assert tdm.masks == {}
    for name, param in backbone.named_parameters():
        assert torch.equal(param, before[name]), name


def test_a_reused_optimizer_carries_no_hook_into_the_next_strategy(digits):
    """Avalanche's periodic-eval tests reuse one optimizer; a later plain Naive must train dense: exactly
    as a fresh optimizer (plain SGD has no state) trains a copy of the model."""
    torch.manual_seed(0)
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    sparse = Naive(
        model=model,
        optimizer=optimizer,
        train_mb_size=32,
        plugins=[SparCLPlugin(0.75, 0.0, 0.2)],
        evaluator=quiet(),
    )
    train_quietly(sparse, digits.train_stream[:1])
    assert int((model.features[0].weight == 0).sum()) == 2048 - 512
    assert len(optimizer._optimizer_step_pre_hooks) == 0
    assert len(optimizer._optimizer_step_post_hooks) == 0
    reference = copy.deepcopy(model)
    for trained, fresh_optimizer in (
        (model, optimizer),
        (reference, torch.optim.SGD(reference.parameters(), lr=0.05)),
    ):
        torch.manual_seed(1)
        dense = Naive(model=trained, optimizer=fresh_optimizer, train_mb_size=32, evaluator=quiet())
        train_quietly(dense, digits.train_stream[1:2])
    assert torch.equal(model.features[0].weight, reference.features[0].weight)
    assert int((model.features[0].weight == 0).sum()) < 2048 - 512


class LateOptimizerNaive(Naive):
    """Creates its optimizer after the plugins' ``before_training_exp``, as L2P does."""

    def _before_training_exp(self, **kwargs):
        super()._before_training_exp(**kwargs)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.01)


def test_an_optimizer_created_after_the_plugins_hook_is_the_one_hooked(digits):
    torch.manual_seed(0)
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=32)
    sparcl = SparCLPlugin(0.75, 0.0, 0.2, min_gradient_masking_steps=0)  # experiences of 5-6 steps
    audit = PrunedWeightsAudit(sparcl)
    strategy = LateOptimizerNaive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        train_mb_size=32,
        plugins=[sparcl, audit],
        evaluator=quiet(),
    )
    train_quietly(strategy, digits.train_stream[:2])
    minibatches = [math.ceil(len(experience.dataset) / 32) for experience in digits.train_stream[:2]]
    assert audit.steps == strategy.clock.train_iterations == sum(minibatches)
    assert sparcl.dgm.gradient_masking.iterations == minibatches[1]  # DGM masked every step of the second


def test_hooks_called_out_of_order_do_nothing(digits):
    """Avalanche's NCM/FeCAM tests call ``after_training_exp`` alone; ``train_epochs=0`` trains nothing."""
    torch.manual_seed(0)
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=32)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    sparcl = SparCLPlugin(0.75, 0.3, 0.2)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        train_epochs=0,
        plugins=[sparcl],
        evaluator=quiet(),
    )
    for part in sparcl.parts:
        part.after_training_exp(strategy)
    train_quietly(strategy, digits.train_stream[:1])
    assert sparcl.masks == {}
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name


def collate_dictionaries(samples):
    return {key: torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in samples[0]}


class DictionaryNaive(Naive):
    """Minibatches are dictionaries (Avalanche's ``test_dictionary_mbatches``)."""

    @property
    def mb_x(self):
        return self.mbatch["x"]

    @property
    def mb_y(self):
        return self.mbatch["y"]

    @property
    def mb_task_id(self):
        return self.mbatch["targets_task_labels"]

    def _unpack_minibatch(self):
        for key in self.mbatch:
            self.mbatch[key] = self.mbatch[key].to(self.device)


def test_dictionary_minibatches_are_probed_with_the_strategy_own_unpacking():
    generator = torch.Generator().manual_seed(0)
    inputs, labels = (
        torch.randn(100, 10, generator=generator),
        torch.randint(0, 2, (100,), generator=generator),
    )
    data = [{"x": x, "y": y} for x, y in zip(inputs, labels, strict=True)]
    task_labels = DataAttribute(ConstantSequence(0, len(data)), "targets_task_labels", use_in_getitem=True)
    experience = CLExperience(0, None)
    experience.dataset = AvalancheDataset(
        [data], data_attributes=[task_labels], collate_fn=collate_dictionaries
    )
    stream = CLStream("train", [experience], None)
    stream.benchmark = CLScenario([stream])
    torch.manual_seed(0)
    model = SimpleMLP(input_size=10, num_classes=2, hidden_size=16)
    sparcl = SparCLPlugin(0.75, 0.3, 0.2)
    strategy = DictionaryNaive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        train_mb_size=10,
        plugins=[sparcl],
        evaluator=quiet(),
    )
    train_quietly(strategy, stream)
    assert list(sparcl.masks) == ["features.0.weight"]
    assert int((model.features[0].weight == 0).sum()) == 160 - kept_count(160, 0.75) == 120
