"""One seed fixes a run: same seed, identical results on CPU; another seed, different ones."""

import random

import numpy as np
import pytest
import torch
from checkpoint_driver import differences, one_thread, run

from avalanche_sparcl.reproducibility import seed_everything


def draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_seed_everything_seeds_torch_numpy_and_python():
    assert seed_everything(7) == 7
    first = draws()
    seed_everything(7)
    assert draws() == first
    seed_everything(8)
    assert all(a != b for a, b in zip(draws(), first, strict=True))


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        (-1, "seed must be an integer in [0, 4294967295], got -1"),
        (2**32, "seed must be an integer in [0, 4294967295], got 4294967296"),
        (1.0, "seed must be an integer in [0, 4294967295], got 1.0"),
        (True, "seed must be an integer in [0, 4294967295], got True"),
        ("0", "seed must be an integer in [0, 4294967295], got '0'"),
    ],
)
def test_seed_everything_rejects_what_numpy_cannot_take(seed, message):
    with pytest.raises(ValueError) as error:
        seed_everything(seed)
    assert str(error.value) == message


def test_same_seed_gives_identical_runs_and_another_seed_does_not(tmp_path):
    """SparCL (TDM, DDR, DGM) with DER and all metrics on Split Digits, two experiences."""
    with one_thread():
        first = run(tmp_path / "first.pkl", seed=0, experiences=2)
        torch.manual_seed(123)  # whatever happened before does not matter: the run seeds everything
        np.random.seed(123)
        random.seed(123)
        second = run(tmp_path / "second.pkl", seed=0, experiences=2)
        other = run(tmp_path / "other.pkl", seed=1, experiences=2)
    assert differences(first, second) == []
    changed = set(differences(first, other))
    assert {
        "/weights/conv1.weight",
        "/masks/conv2.weight",
        "/regrowth_generator",
        "/buffer_logits",
    } <= changed
    assert any(path.startswith("/ddr_history") for path in changed)
