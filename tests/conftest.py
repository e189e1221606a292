"""Shared fixtures. No __init__.py here: avalanche-lib installs a top-level `tests` package."""

from __future__ import annotations

import os

import pytest
import torch
from avalanche.training.plugins import EvaluationPlugin

from avalanche_sparcl.benchmarks import split_digits, tensor_benchmark
from avalanche_sparcl.checkpointing import KEY_ENVIRONMENT

# Tests of the parts' mechanics on tiny schedules (a few dozen steps per experience) switch off the
# short-schedule rules, which would otherwise keep a fixed mask, remove no data, mask no gradient and
# leave the head unmasked there.
TDM_RULES_OFF = {"min_update_steps": 0}
DDR_RULES_OFF = {"min_experience_steps": 0}
DGM_RULES_OFF = {"min_gradient_masking_steps": 0}
HEAD_RULES_OFF = {"min_masked_head_steps": 0}
RULES_OFF = {**TDM_RULES_OFF, **DDR_RULES_OFF, **DGM_RULES_OFF, **HEAD_RULES_OFF}  # all, for SparCLPlugin


def small_der(model: torch.nn.Module, plugins: list, epochs: int):
    """Avalanche's DER on ``model``: plain SGD lr 0.03, minibatches of 32 plus 32 from a buffer of 100,
    no evaluator (the short-schedule tests' strategy)."""
    from avalanche.training import DER

    return DER(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.03),
        criterion=torch.nn.CrossEntropyLoss(),
        mem_size=100,
        batch_size_mem=32,
        train_mb_size=32,
        train_epochs=epochs,
        evaluator=None,
        plugins=plugins,
    )


def quiet_evaluator(*metrics):
    """Avalanche's evaluation plugin with ``metrics`` (none by default) and no loggers."""
    return EvaluationPlugin(*metrics, loggers=[])


@pytest.fixture(scope="session")
def digits_benchmark():
    """Split Digits, 5 experiences of 2 classes (the embedded default data)."""
    return split_digits(n_experiences=5, seed=0)


def make_tensor_benchmark(
    n_per_class: int, n_classes: int, n_experiences: int, shape: tuple[int, ...], seed: int = 0
):
    """A class-incremental benchmark of random tensors with a learnable class signal."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    inputs = torch.randn((len(labels), *shape), generator=generator)
    inputs.view(len(labels), -1)[:, :n_classes] += 3 * torch.nn.functional.one_hot(labels, n_classes)
    return tensor_benchmark((inputs, labels), (inputs.clone(), labels.clone()), n_experiences, seed)


@pytest.fixture
def tensor_benchmark_factory():
    """Build small synthetic benchmarks: ``factory(n_per_class, n_classes, n_experiences, shape)``."""
    return make_tensor_benchmark


@pytest.fixture(scope="session", autouse=True)
def checkpoint_key_of_the_tests(tmp_path_factory):
    """Checkpoints written by the tests (and the processes they start) are signed with a key of their
    own, never the user's (``~/.config/avalanche-sparcl``)."""
    previous = os.environ.get(KEY_ENVIRONMENT)
    path = tmp_path_factory.mktemp("checkpoint_key") / "checkpoint.key"
    os.environ[KEY_ENVIRONMENT] = str(path)
    yield path
    if previous is None:
        os.environ.pop(KEY_ENVIRONMENT, None)
    else:
        os.environ[KEY_ENVIRONMENT] = previous
