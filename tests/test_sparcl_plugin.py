"""SparCLPlugin: the three parts composed, switchable, in a fixed order, on many strategies."""

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training import AGEM, DER, ER_ACE, EWC, LwF, Naive, Replay
from avalanche.training.plugins import (
    EarlyStoppingPlugin,
    EvaluationPlugin,
    LRSchedulerPlugin,
    ReplayPlugin,
)
from conftest import DGM_RULES_OFF, HEAD_RULES_OFF, RULES_OFF
from test_dgm import GradientAudit
from torch import nn

from avalanche_sparcl import SparCLPlugin
from avalanche_sparcl.models import SmallCNN
from avalanche_sparcl.plugins.masked_head import MaskedHeadPlugin
from avalanche_sparcl.sparse.masks import kept_count


def quiet():
    return EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])


class CurrentSamplesPerEpoch(SupervisedPlugin):
    """Counts the current-experience samples of every training epoch (buffer rows excluded)."""

    def __init__(self):
        super().__init__()
        self.counts = {}

    def after_training_iteration(self, strategy, **kwargs):
        current = torch.isin(
            strategy.mb_y,
            torch.tensor(strategy.experience.classes_in_this_experience, device=strategy.mb_y.device),
        )
        key = (strategy.clock.train_exp_counter, strategy.clock.train_exp_epochs)
        self.counts[key] = self.counts.get(key, 0) + int(current.sum())


def build(strategy_name, model, plugins, epochs=10, **extra):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03)
    common = {"train_mb_size": 32, "train_epochs": epochs, "eval_mb_size": 512, "evaluator": quiet(), **extra}
    if strategy_name == "der":
        return DER(model=model, optimizer=optimizer, mem_size=200, plugins=plugins, **common)
    if strategy_name == "er":
        return Naive(
            model=model, optimizer=optimizer, plugins=[ReplayPlugin(mem_size=200), *plugins], **common
        )
    if strategy_name == "replay":
        return Replay(
            model=model,
            optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(),
            mem_size=200,
            plugins=plugins,
            **common,
        )
    if strategy_name == "er_ace":
        return ER_ACE(model=model, optimizer=optimizer, mem_size=200, plugins=plugins, **common)
    return Naive(model=model, optimizer=optimizer, plugins=plugins, **common)


@pytest.mark.parametrize("strategy_name", ["der", "er"])
def test_sparcl_der_and_er_run_end_to_end_with_all_three_parts(strategy_name, digits_benchmark):
    torch.manual_seed(0)
    model = SmallCNN()
    sparcl = SparCLPlugin(sparsity=0.75, removal_ratio=0.3, gradient_sparsity=0.2)  # 10 epochs: not short
    audit = GradientAudit(lambda: sparcl.masks, lambda: sparcl.gradient_masks, 0.2)
    seen = CurrentSamplesPerEpoch()
    strategy = build(strategy_name, model, [sparcl, audit, seen])
    stream = digits_benchmark.train_stream
    for experience in stream:
        strategy.train(experience)
    params = dict(model.named_parameters())
    for name, mask in sparcl.masks.items():
        assert int(mask.sum()) == kept_count(mask.numel(), 0.75)
        assert not params[name].detach()[~mask].any()
    for index, experience in enumerate(stream):
        n = len(experience.dataset)
        assert seen.counts[(index, 0)] == n
        assert abs(seen.counts[(index, 9)] - (n - round(0.3 * n))) <= 1
    assert audit.iterations > 0
    accuracy = strategy.eval(digits_benchmark.test_stream)["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
    assert accuracy > 0.6


def test_importance_reads_gradients_before_dgm_masks_them(digits_benchmark):
    """CWI's window grows by the raw |grad| of the kept weights, also where DGM then zeroes it."""

    class ImportanceAudit(SupervisedPlugin):
        previous = None
        checked = 0

        def after_update(self, strategy, **kwargs):
            importance = sparcl.tdm.dynamic_sparsity.importance
            params = dict(strategy.model.named_parameters())
            window = importance.window_iterations
            sums = {name: importance.mean_gradient(name) * window for name in importance.gradient_sums}
            if self.previous and self.previous[0] + 1 == importance.window_iterations:
                for name, total in sums.items():
                    raw = total - self.previous[1][name]
                    applied = params[name].grad.abs()
                    selected = sparcl.gradient_masks[name]
                    assert torch.allclose(raw[selected], applied[selected])
                    assert not applied[~selected].any()
                    dropped = sparcl.masks[name] & ~selected  # kept weights whose gradient DGM drops
                    assert int((raw[dropped] > 0).sum()) > 0.9 * int(dropped.sum()) > 0
                    self.checked += 1
            self.previous = (importance.window_iterations, sums)

    torch.manual_seed(0)
    sparcl = SparCLPlugin(removal_ratio=0, gradient_sparsity=0.5, **RULES_OFF)
    audit = ImportanceAudit()
    strategy = build("naive", SmallCNN(), [sparcl, audit], epochs=2)
    strategy.train(digits_benchmark.train_stream[0])
    # 18 iterations, mask updates before iterations 2, 4, 6, 8, 9, 11, 13 and 15: windows of 2, 2, 2,
    # 2, 1, 2, 2, 2 steps give 7 steps with a previous one in the window, each checking the 2 masked
    # layers (conv2, conv3); after the last update the mask is frozen and nothing is accumulated
    assert audit.checked == 2 * 7


@pytest.mark.parametrize(
    ("options", "parts"),
    [
        # with TDM on, TDM's engine applies DGM's gradient masks: DGM is no hooked part of its own
        ({}, ["DDRPlugin", "TDMPlugin"]),
        ({"sparsity": 0}, ["DDRPlugin", "DGMPlugin"]),
        ({"removal_ratio": 0}, ["TDMPlugin"]),
        ({"gradient_sparsity": 0}, ["DDRPlugin", "TDMPlugin"]),
        ({"masked_head": True}, ["DDRPlugin", "MaskedHeadPlugin", "TDMPlugin"]),
        ({"sparsity": 0, "removal_ratio": 0, "gradient_sparsity": 0}, []),
    ],
)
def test_each_part_switches_off_and_the_order_is_fixed(options, parts):
    sparcl = SparCLPlugin(**options)
    assert [type(part).__name__ for part in sparcl.parts] == parts
    with_gradient_masks = sparcl.dgm is not None and sparcl.tdm is not None
    gradient_masking = sparcl.tdm.engine.gradient_masking if sparcl.tdm is not None else None
    assert (gradient_masking is not None) == with_gradient_masks
    if with_gradient_masks:
        assert gradient_masking is sparcl.dgm.gradient_masking


def test_dense_sparcl_with_dgm_masks_gradients_of_the_default_layers(digits_benchmark):
    torch.manual_seed(0)
    sparcl = SparCLPlugin(sparsity=0, removal_ratio=0, gradient_sparsity=0.2, **DGM_RULES_OFF)
    audit = GradientAudit(lambda: {}, lambda: sparcl.gradient_masks, 0.2)
    model = SmallCNN()
    strategy = build("naive", model, [sparcl, audit], epochs=1)
    strategy.train(digits_benchmark.train_stream[0])
    assert sparcl.masks == {} and not any((p == 0).all() for p in model.parameters())
    assert sorted(sparcl.gradient_masks) == ["conv2.weight", "conv3.weight"]


def test_options_reach_the_part_that_owns_them():
    sparcl = SparCLPlugin(sparsity=0.9, mutate_ratio=0.02, stages=2, cutoff=0.5, refresh_every=7)
    assert sparcl.tdm.settings.mutate_ratio == 0.02 and sparcl.tdm.settings.sparsity == 0.9
    assert (sparcl.ddr.settings.stages, sparcl.ddr.settings.cutoff) == (2, 0.5)
    assert sparcl.dgm.refresh_every == 7


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sparsity": float("nan")}, "sparsity must be in [0, 1), got nan"),
        ({"gradient_sparsity": -0.2}, "gradient_sparsity must be in [0, 1), got -0.2"),
        ({"masked_head": "yes"}, "masked_head must be True or False, got 'yes'"),
        (
            {"mutate": 0.1},
            "SparCLPlugin got unknown option(s) 'mutate' (did you mean 'mutate_ratio'?); "
            "accepted options: cutoff, expand_ratio, freeze_at, gradient_sparsity, importance_lambda, "
            "importance_window, kept_scale, layer_densities, masked_head, min_experience_steps, "
            "min_gradient_masking_steps, min_masked_head_steps, min_update_steps, mutate_ratio, profile, "
            "ramp_steps, refresh_every, regrow, removal_ratio, seed, sparsity, stages, update_every",
        ),
    ],
)
def test_bad_options_are_rejected(options, message):
    with pytest.raises(ValueError) as error:
        SparCLPlugin(**options)
    assert str(error.value) == message


def test_masked_head_hides_other_classes_for_current_samples_only():
    class FakeStrategy:  # ReplayPlugin's layout: the loader mixes in old-class buffer rows 0 and 3
        experience = type("Experience", (), {"classes_in_this_experience": [2, 3]})()
        mbatch = [torch.zeros(4, 1), torch.tensor([0, 2, 3, 1]), torch.zeros(4)]
        mb_y = mbatch[1]
        mb_output = torch.zeros(4, 5)

    strategy = FakeStrategy()
    head = MaskedHeadPlugin()
    head.before_training_iteration(strategy)
    head.after_forward(strategy)
    inf = float("-inf")
    assert strategy.mb_output.tolist() == [
        [0, 0, 0, 0, 0],
        [inf, inf, 0, 0, inf],
        [inf, inf, 0, 0, inf],
        [0, 0, 0, 0, 0],
    ]


def test_masked_head_leaves_prepended_buffer_rows_of_current_classes_unmasked():
    class FakeStrategy:  # DER / reservoir layout: 2 buffer rows (one of a current class) prepended
        experience = type("Experience", (), {"classes_in_this_experience": [2, 3]})()
        mbatch = [torch.zeros(3, 1), torch.tensor([2, 3, 2]), torch.zeros(3)]
        mb_output = torch.zeros(5, 5)

    strategy = FakeStrategy()
    head = MaskedHeadPlugin()
    head.before_training_iteration(strategy)
    strategy.mb_y = torch.tensor([2, 0, 2, 3, 2])
    head.after_forward(strategy)
    inf = float("-inf")
    masked, unmasked = [inf, inf, 0, 0, inf], [0, 0, 0, 0, 0]
    assert strategy.mb_output.tolist() == [unmasked, unmasked, masked, masked, masked]


@pytest.mark.parametrize("masked_head", [True, False])
def test_masked_head_keeps_later_classes_out_of_current_data_loss(masked_head, digits_benchmark):
    torch.manual_seed(0)
    initial = SmallCNN()
    torch.manual_seed(0)
    model = SmallCNN()
    sparcl = SparCLPlugin(masked_head=masked_head, removal_ratio=0, **HEAD_RULES_OFF)
    strategy = build("naive", model, [sparcl], epochs=2)
    for experience in digits_benchmark.train_stream[:2]:
        strategy.train(experience)
    unseen = [c for e in digits_benchmark.train_stream[2:] for c in e.classes_in_this_experience]
    unchanged = torch.equal(model.classifier.bias[unseen], initial.classifier.bias[unseen])
    assert unchanged is masked_head


@pytest.mark.parametrize("strategy_name", ["replay", "er_ace"])
def test_sparcl_runs_with_replay_and_er_ace(strategy_name, digits_benchmark):
    torch.manual_seed(0)
    model = SmallCNN()
    sparcl = SparCLPlugin(sparsity=0.9, **RULES_OFF)  # 3 short epochs: every part still acts
    strategy = build(strategy_name, model, [sparcl], epochs=3)
    for experience in digits_benchmark.train_stream[:2]:
        strategy.train(experience)
    assert {name: int(mask.sum()) for name, mask in sparcl.masks.items()} == {
        "conv2.weight": 1843,
        "conv3.weight": 3686,
    }


@pytest.mark.parametrize("other", ["ewc", "lwf", "agem", "lr_scheduler", "early_stopping"])
def test_sparcl_runs_beside_other_avalanche_strategies_and_plugins(other, digits_benchmark):
    torch.manual_seed(0)
    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03)
    sparcl = SparCLPlugin(sparsity=0.9, **RULES_OFF)  # 3 short epochs: every part still acts
    common = {"train_mb_size": 64, "train_epochs": 3, "evaluator": quiet()}
    if other == "ewc":
        strategy = EWC(
            model=model,
            optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(),
            ewc_lambda=1.0,
            plugins=[sparcl],
            **common,
        )
    elif other == "lwf":
        strategy = LwF(
            model=model,
            optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(),
            alpha=1.0,
            temperature=2.0,
            plugins=[sparcl],
            **common,
        )
    elif other == "agem":
        strategy = AGEM(
            model=model,
            optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(),
            patterns_per_exp=50,
            plugins=[sparcl],
            **common,
        )
    elif other == "lr_scheduler":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        strategy = Naive(
            model=model, optimizer=optimizer, plugins=[LRSchedulerPlugin(scheduler), sparcl], **common
        )
    else:
        stopper = EarlyStoppingPlugin(patience=1, val_stream_name="train_stream")
        strategy = Naive(
            model=model,
            optimizer=optimizer,
            plugins=[sparcl, stopper],
            eval_every=1,
            **{**common, "evaluator": EvaluationPlugin(loggers=[])},
        )
    for experience in digits_benchmark.train_stream[:2]:
        strategy.train(experience, eval_streams=[digits_benchmark.train_stream[:2]])
    params = dict(model.named_parameters())
    for name, mask in sparcl.masks.items():
        assert int(mask.sum()) == kept_count(mask.numel(), 0.9)
        assert not params[name].detach()[~mask].any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("strategy_name", ["der", "er", "er_ace"])
def test_sparcl_on_cuda_keeps_every_mask_on_the_device(strategy_name, digits_benchmark):
    torch.manual_seed(0)
    model = SmallCNN()
    sparcl = SparCLPlugin(sparsity=0.9, removal_ratio=0.3, gradient_sparsity=0.2, **RULES_OFF)
    audit = GradientAudit(lambda: sparcl.masks, lambda: sparcl.gradient_masks, 0.2)
    seen = CurrentSamplesPerEpoch()
    strategy = build(strategy_name, model, [sparcl, audit, seen], epochs=5, device="cuda")
    for experience in digits_benchmark.train_stream[:2]:
        strategy.train(experience)
    assert all(m.is_cuda for m in sparcl.masks.values())
    assert all(m.is_cuda for m in sparcl.gradient_masks.values())
    assert all(int(mask.sum()) == kept_count(mask.numel(), 0.9) for mask in sparcl.masks.values())
    for index, experience in enumerate(digits_benchmark.train_stream[:2]):
        n = len(experience.dataset)
        assert abs(seen.counts[(index, 4)] - (n - round(0.3 * n))) <= 1


def test_every_hook_a_part_overrides_is_forwarded_by_sparcl_plugin():
    """SparCLPlugin writes its hooks out; a part gaining a hook must gain its forwarder too."""
    from avalanche.core import SupervisedPlugin

    from avalanche_sparcl import DDRPlugin, DGMPlugin, MaskedHeadPlugin, TDMPlugin

    hooks = [name for name in dir(SupervisedPlugin) if name.startswith(("before_", "after_"))]
    overridden = {
        hook
        for part in (DDRPlugin, DGMPlugin, MaskedHeadPlugin, TDMPlugin)
        for hook in hooks
        if getattr(part, hook) is not getattr(SupervisedPlugin, hook)
    }
    forwarded = {hook for hook in hooks if getattr(SparCLPlugin, hook) is not getattr(SupervisedPlugin, hook)}
    assert forwarded == overridden
    assert len(forwarded) == 10
