"""TDMPlugin inside real Avalanche strategies."""

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.models import SlimResNet18
from avalanche.training import DER, ER_ACE, Naive, Replay
from avalanche.training.plugins import ReplayPlugin
from conftest import TDM_RULES_OFF, make_tensor_benchmark, quiet_evaluator
from torch import nn

from avalanche_sparcl import TDMPlugin
from avalanche_sparcl.models import SmallCNN
from avalanche_sparcl.sparse.masks import kept_count


def sgd(model, **options):
    return torch.optim.SGD(model.parameters(), lr=0.03, **options)


def naive(model, plugins, train_mb_size=64, train_epochs=1, optimizer=None):
    """Naive with plain SGD and no loggers: the strategy most of these tests drive."""
    return Naive(
        model=model,
        optimizer=optimizer or sgd(model),
        train_mb_size=train_mb_size,
        train_epochs=train_epochs,
        plugins=plugins,
        evaluator=quiet_evaluator(),
    )


class MaskRecorder(SupervisedPlugin):
    """Copies the TDM masks after every iteration, keyed by (experience, epoch, iteration)."""

    def __init__(self, tdm):
        super().__init__()
        self.tdm = tdm
        self.snapshots = {}

    def after_training_iteration(self, strategy, **kwargs):
        key = (
            strategy.clock.train_exp_counter,
            strategy.clock.train_exp_epochs,
            strategy.clock.train_epoch_iterations,
        )
        self.snapshots[key] = {name: mask.clone() for name, mask in self.tdm.masks.items()}


def tiny_mlp():
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(8, 100),
        nn.ReLU(),
        nn.Linear(100, 100),
        nn.ReLU(),
        nn.Linear(100, 100),
        nn.ReLU(),
        nn.Linear(100, 4),
    )


def test_paper_setting_reproduces_the_reference_density_schedule():
    """50 epochs, sparsity 0.75, defaults: 0.26 in epochs 0-4, 0.25 from 5, 4% swaps at 10..40."""
    torch.manual_seed(0)
    benchmark = make_tensor_benchmark(n_per_class=4, n_classes=4, n_experiences=2, shape=(8,))
    model = tiny_mlp()
    tdm = TDMPlugin(profile={"3.weight": 0.75, "5.weight": 0.75})  # the two 100 x 100 layers
    recorder = MaskRecorder(tdm)
    strategy = naive(model, [tdm, recorder], train_mb_size=8, train_epochs=50)
    for experience in benchmark.train_stream:
        strategy.train(experience)
    assert sorted(tdm.masks) == ["3.weight", "5.weight"]
    for experience in range(2):
        previous = None
        for epoch in range(50):
            masks = recorder.snapshots[(experience, epoch, 0)]
            density = {name: int(mask.sum()) / mask.numel() for name, mask in masks.items()}
            assert set(density.values()) == {0.26 if epoch < 5 else 0.25}, (experience, epoch)
            if previous is not None:
                swapped = {int((previous[n] & ~masks[n]).sum()) / int(masks[n].sum()) for n in masks}
                grown = {int((masks[n] & ~previous[n]).sum()) for n in masks}
                if epoch in (10, 15, 20, 25, 30, 35, 40):
                    assert swapped == {0.04} and grown == {100}, epoch
                elif epoch == 5:
                    assert swapped == {0.04} and grown == {0}  # 100 of 2600 pruned back to 2500
                else:
                    assert swapped == {0.0} and grown == {0}, epoch
            previous = masks
    kinds = [(r.experience, r.position, r.kind) for r in tdm.dynamic_sparsity.history]
    per_experience = [(0.0, "expand"), (5.0, "shrink")] + [(float(e), "mutate") for e in range(10, 45, 5)]
    assert kinds == [(exp, pos, kind) for exp in range(2) for pos, kind in per_experience]


def assert_exactly_sparse(model, tdm, sparsity):
    params = dict(model.named_parameters())
    for name, mask in tdm.masks.items():
        weight = params[name].detach()
        assert int(mask.sum()) == kept_count(mask.numel(), sparsity), name
        assert not weight[~mask].any(), f"{name} has non-zero pruned weights"


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))],
)
def test_der_on_split_digits_ends_exactly_90_percent_sparse(device, digits_benchmark):
    torch.manual_seed(0)
    model = SmallCNN()
    tdm = TDMPlugin(sparsity=0.9)
    strategy = DER(
        model=model,
        optimizer=sgd(model, momentum=0.9),
        mem_size=100,
        train_mb_size=32,
        train_epochs=2,
        eval_mb_size=256,
        device=device,
        plugins=[tdm],
        evaluator=quiet_evaluator(),
    )
    for experience in digits_benchmark.train_stream:
        strategy.train(experience)
    assert sorted(tdm.masks) == ["conv2.weight", "conv3.weight"]  # Linear layers stay dense
    assert all(mask.device.type == device for mask in tdm.masks.values())
    assert_exactly_sparse(model, tdm, 0.9)
    assert {name: int((~mask).sum()) for name, mask in tdm.masks.items()} == {
        "conv2.weight": 18432 - 1843,
        "conv3.weight": 36864 - 3686,
    }
    assert int((model.fc1.weight == 0).sum()) == 0
    assert model.bn2.bias.abs().sum() > 0, "BatchNorm biases must train, not stay frozen at zero"
    assert [r.kind for r in tdm.dynamic_sparsity.history if r.experience == 4][:2] == ["expand", "shrink"]


def test_pruned_weights_stay_zero_under_momentum_and_weight_decay(digits_benchmark):
    torch.manual_seed(0)
    model = SmallCNN()
    tdm = TDMPlugin(sparsity=0.8)
    optimizer = sgd(model, momentum=0.9, weight_decay=0.01)
    strategy = naive(model, [tdm], train_epochs=3, optimizer=optimizer)
    for experience in digits_benchmark.train_stream[:2]:
        strategy.train(experience)
    assert_exactly_sparse(model, tdm, 0.8)
    params = dict(model.named_parameters())
    for name, mask in tdm.masks.items():
        momentum = optimizer.state[params[name]]["momentum_buffer"]
        assert not momentum[~mask].any(), f"{name} keeps momentum at pruned positions"
        assert momentum[mask].any()


@pytest.mark.parametrize("strategy_name", ["naive", "er", "replay", "der", "er_ace"])
def test_each_strategy_trains_exactly_sparse_with_the_full_schedule(strategy_name, digits_benchmark):
    torch.manual_seed(0)
    model = SmallCNN()
    tdm = TDMPlugin(sparsity=0.75, **TDM_RULES_OFF)
    common = {"train_mb_size": 64, "train_epochs": 2, "eval_mb_size": 256, "evaluator": quiet_evaluator()}
    optimizer = sgd(model, momentum=0.9)
    if strategy_name == "naive":
        strategy = Naive(model=model, optimizer=optimizer, plugins=[tdm], **common)
    elif strategy_name == "er":
        strategy = Naive(
            model=model, optimizer=optimizer, plugins=[ReplayPlugin(mem_size=100), tdm], **common
        )
    elif strategy_name == "replay":
        strategy = Replay(
            model=model,
            optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(),
            mem_size=100,
            plugins=[tdm],
            **common,
        )
    elif strategy_name == "der":
        strategy = DER(model=model, optimizer=optimizer, mem_size=100, plugins=[tdm], **common)
    else:
        strategy = ER_ACE(model=model, optimizer=optimizer, mem_size=100, plugins=[tdm], **common)
    for experience in digits_benchmark.train_stream[:3]:
        strategy.train(experience)
    assert_exactly_sparse(model, tdm, 0.75)
    kinds = [r.kind for r in tdm.dynamic_sparsity.history]
    assert kinds == (["expand", "shrink"] + ["mutate"] * 7) * 3


def test_periodic_evaluation_during_training_leaves_the_schedule_intact(digits_benchmark):
    torch.manual_seed(0)
    model = SmallCNN()
    tdm = TDMPlugin(sparsity=0.75, **TDM_RULES_OFF)
    strategy = DER(
        model=model,
        optimizer=sgd(model),
        mem_size=100,
        train_mb_size=64,
        train_epochs=2,
        eval_every=1,
        plugins=[tdm],
        evaluator=quiet_evaluator(),
    )
    for experience in digits_benchmark.train_stream[:2]:
        strategy.train(experience, eval_streams=[digits_benchmark.test_stream[:2]])
    assert_exactly_sparse(model, tdm, 0.75)
    assert [r.kind for r in tdm.dynamic_sparsity.history] == (["expand", "shrink"] + ["mutate"] * 7) * 2


def test_one_train_call_over_a_list_equals_one_call_per_experience(digits_benchmark):
    masks = []
    for by_list in (True, False):
        torch.manual_seed(0)
        model = SmallCNN()
        tdm = TDMPlugin(sparsity=0.75, seed=3, **TDM_RULES_OFF)
        strategy = naive(model, [tdm])
        stream = digits_benchmark.train_stream[:2]
        if by_list:
            strategy.train(stream)
        else:
            for experience in stream:
                strategy.train(experience)
        assert [r.experience for r in tdm.dynamic_sparsity.history if r.kind == "expand"] == [0, 1]
        masks.append(tdm.masks)
    assert all(torch.equal(masks[0][name], masks[1][name]) for name in masks[0])


def test_batchnorm_resnet_trains_sparse_and_keeps_its_biases_learning(tensor_benchmark_factory):
    torch.manual_seed(0)
    benchmark = tensor_benchmark_factory(n_per_class=8, n_classes=4, n_experiences=2, shape=(3, 32, 32))
    model = SlimResNet18(nclasses=4)
    tdm = TDMPlugin(sparsity=0.9)
    strategy = naive(model, [tdm], train_mb_size=16)
    strategy.train(benchmark.train_stream[0])
    assert len(tdm.masks) == 19 and "conv1.weight" not in tdm.masks and "linear.weight" not in tdm.masks
    assert_exactly_sparse(model, tdm, 0.9)
    assert all(m.bias.abs().sum() > 0 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_profile_chooses_layers_and_ratios(digits_benchmark):
    model = SmallCNN()
    tdm = TDMPlugin(profile={"conv3.weight": 0.5, "classifier.weight": 0.9})
    strategy = naive(model, [tdm])
    strategy.train(digits_benchmark.train_stream[0])
    assert {name: int(mask.sum()) for name, mask in tdm.masks.items()} == {
        "conv3.weight": 36864 // 2,
        "classifier.weight": 1280 - 1152,
    }


def train_expecting_error(model, plugin, benchmark):
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    strategy = naive(model, [plugin])
    with pytest.raises(ValueError) as error:
        strategy.train(benchmark.train_stream[0])
    assert all(torch.equal(before[n], p.detach()) for n, p in model.named_parameters()), "a step was taken"
    return str(error.value)


def test_unknown_profile_names_fail_before_the_first_step(digits_benchmark):
    message = train_expecting_error(SmallCNN(), TDMPlugin(profile={"conv4.weight": 0.5}), digits_benchmark)
    assert message == (
        "profile names parameters the model does not have: 'conv4.weight' (did you mean 'conv3.weight' "
        "or 'conv2.weight' or 'conv1.weight'?)"
    )


def test_a_model_with_no_selectable_layer_fails_at_the_start_of_training(digits_benchmark):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    message = train_expecting_error(model, TDMPlugin(), digits_benchmark)
    assert message.startswith("the model has no layer SparCL can make sparse")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"sparsty": 0.5},
            "TDMPlugin got unknown option(s) 'sparsty' (did you mean 'sparsity'?); accepted "
            "options: expand_ratio, freeze_at, importance_lambda, importance_window, kept_scale, "
            "layer_densities, min_update_steps, mutate_ratio, profile, ramp_steps, regrow, seed, sparsity, "
            "update_every",
        ),
        ({"sparsity": 1.2}, "sparsity must be in [0, 1), got 1.2"),
        ({"expand_ratio": 0.5, "sparsity": 0.4}, "expand_ratio must be in [0, 0.4], got 0.5"),
    ],
)
def test_bad_options_fail_at_construction(options, message):
    with pytest.raises(ValueError) as error:
        TDMPlugin(**options)
    assert str(error.value) == message
