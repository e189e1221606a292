"""NonFiniteGuardPlugin: a NaN or inf stops training with its exact position; checkpoints stay intact."""

import math

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from checkpoint_driver import build_strategy, one_thread

from avalanche_sparcl.checkpointing import load_checkpoint, save_checkpoint
from avalanche_sparcl.models import SmallCNN
from avalanche_sparcl.plugins import NonFiniteGuardPlugin, NonFiniteTrainingError


class PoisonAt(SupervisedPlugin):
    """Makes the loss (before backward) or one classifier weight (after the update) ``value`` at one
    (experience, epoch, iteration)."""

    def __init__(self, position, target, value):
        super().__init__()
        self.position, self.target, self.value = position, target, value

    def reached(self, strategy):
        clock = strategy.clock
        now = (strategy.experience.current_experience, clock.train_exp_epochs, clock.train_epoch_iterations)
        return now == self.position

    def before_backward(self, strategy, **kwargs):
        if self.target == "loss" and self.reached(strategy):
            strategy.loss = strategy.loss * self.value

    def after_update(self, strategy, **kwargs):
        if self.target == "weight" and self.reached(strategy):
            with torch.no_grad():
                strategy.model.classifier.weight[0, 0] = self.value


def naive(plugins, epochs=2):
    torch.manual_seed(0)
    model = SmallCNN(width=8)
    return Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        train_mb_size=32,
        train_epochs=epochs,
        evaluator=EvaluationPlugin(loggers=[]),
        plugins=plugins,
    )


@pytest.mark.parametrize("check_every", [1, 4, 1000])
@pytest.mark.parametrize(("value", "shown"), [(float("nan"), "nan"), (float("inf"), "inf")])
def test_non_finite_loss_names_experience_epoch_and_iteration(check_every, value, shown, digits_benchmark):
    guard = NonFiniteGuardPlugin(check_every=check_every)
    strategy = naive([PoisonAt((1, 1, 3), "loss", value), guard])
    strategy.train(digits_benchmark.train_stream[0])
    with pytest.raises(NonFiniteTrainingError) as error:
        strategy.train(digits_benchmark.train_stream[1])
    assert str(error.value) == (
        f"non-finite training loss ({shown}) at experience 1, epoch 1, iteration 3; training stopped"
    )


def test_non_finite_weight_names_the_step_and_the_parameter(digits_benchmark):
    strategy = naive([PoisonAt((0, 0, 2), "weight", float("-inf")), NonFiniteGuardPlugin(check_every=1)])
    with pytest.raises(NonFiniteTrainingError) as error:
        strategy.train(digits_benchmark.train_stream[0])
    assert str(error.value) == (
        "non-finite weights (classifier.weight) found after the update at experience 0, epoch 0, "
        "iteration 2, checked every 1 iteration(s); training stopped"
    )


def test_between_checks_a_broken_weight_shows_in_the_next_loss(digits_benchmark):
    strategy = naive([PoisonAt((0, 1, 5), "weight", float("nan")), NonFiniteGuardPlugin(check_every=50)])
    with pytest.raises(NonFiniteTrainingError) as error:
        strategy.train(digits_benchmark.train_stream[0])
    assert (
        str(error.value)
        == "non-finite training loss (nan) at experience 0, epoch 1, iteration 6; training stopped"
    )


def test_a_weight_broken_by_the_last_update_of_an_epoch_is_caught_before_the_epoch_ends(digits_benchmark):
    last_iteration = math.ceil(len(digits_benchmark.train_stream[0].dataset) / 32) - 1
    poison = PoisonAt((0, 0, last_iteration), "weight", float("inf"))
    strategy = naive([poison, NonFiniteGuardPlugin(check_every=50)])
    with pytest.raises(NonFiniteTrainingError) as error:
        strategy.train(digits_benchmark.train_stream[0])
    assert str(error.value) == (
        "non-finite weights (classifier.weight) found after the update at experience 0, epoch 0, "
        f"iteration {last_iteration}, checked every 50 iteration(s); training stopped"
    )
    assert strategy.clock.train_exp_epochs == 0  # stopped inside epoch 0


def test_the_guard_changes_nothing_in_a_healthy_run(digits_benchmark):
    weights = []
    for plugins in ([], [NonFiniteGuardPlugin(check_every=3)]):
        strategy = naive(plugins)
        for experience in digits_benchmark.train_stream[:2]:
            strategy.train(experience)
        weights.append(strategy.model.state_dict())
        assert all(plugin.pending == [] for plugin in plugins)
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_training_stops_before_the_next_checkpoint_and_the_last_one_stays_loadable(tmp_path):
    """SparCL with DER: the run saved after experience 0 meets a NaN loss in experience 1."""
    benchmark, strategy = build_strategy(extra_plugins=[PoisonAt((1, 1, 4), "loss", float("nan"))])
    checkpoint = tmp_path / "checkpoint.pkl"
    with one_thread():
        strategy.train(benchmark.train_stream[0])
        save_checkpoint(strategy, checkpoint)
        saved = checkpoint.read_bytes()
        with pytest.raises(NonFiniteTrainingError) as error:
            strategy.train(benchmark.train_stream[1])
            save_checkpoint(strategy, checkpoint)
    assert (
        str(error.value)
        == "non-finite training loss (nan) at experience 1, epoch 1, iteration 4; training stopped"
    )
    assert checkpoint.read_bytes() == saved
    _, fresh = build_strategy()
    assert load_checkpoint(fresh, checkpoint)[1] == 1


@pytest.mark.parametrize("check_every", [0, 2.5, True])
def test_check_every_must_be_a_positive_integer(check_every):
    with pytest.raises(ValueError) as error:
        NonFiniteGuardPlugin(check_every=check_every)
    assert str(error.value) == f"check_every must be an integer >= 1, got {check_every!r}"
