"""Bad input is refused where it is given, with a message naming the argument and its accepted range.

Every option is checked even when its part is switched off, numeric options take any real number
(NumPy scalars included) but never a bool, seeds lie in [0, MAX_SEED], and config files cannot write
outside ``--out``, repeat a key or leave a section empty.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from conftest import DDR_RULES_OFF

from avalanche_sparcl import DDRPlugin, DGMPlugin, SparCLPlugin, TDMPlugin
from avalanche_sparcl.data_removal import DDRSettings
from avalanche_sparcl.experiments.cli import main
from avalanche_sparcl.experiments.config import ConfigError, load_config
from avalanche_sparcl.plugins.reservoir import ReservoirReplayPlugin
from avalanche_sparcl.reproducibility import MAX_SEED
from avalanche_sparcl.sparse.dynamic import TDMSettings

HUGE_SEED = 2**70

REFUSED: list[tuple[Callable[..., Any], dict[str, Any], str]] = [
    # a mask update schedule with at most 1000 entries per experience
    (TDMSettings, {"update_every": 0.000001}, "update_every must be in [0.001, 1], got 1e-06"),
    (TDMPlugin, {"update_every": 0.0009}, "update_every must be in [0.001, 1], got 0.0009"),
    (SparCLPlugin, {"update_every": 0}, "update_every must be in [0.001, 1], got 0.0"),
    # seeds any generator accepts
    (SparCLPlugin, {"seed": HUGE_SEED}, f"seed must be an integer in [0, {MAX_SEED}], got {HUGE_SEED}"),
    (SparCLPlugin, {"seed": -1}, f"seed must be an integer in [0, {MAX_SEED}], got -1"),
    (TDMSettings, {"seed": 2**32}, f"seed must be an integer in [0, {MAX_SEED}], got 4294967296"),
    (TDMSettings, {"seed": True}, f"seed must be an integer in [0, {MAX_SEED}], got True"),
    (TDMSettings, {"seed": 1.0}, f"seed must be an integer in [0, {MAX_SEED}], got 1.0"),
    (
        ReservoirReplayPlugin,
        {"seed": HUGE_SEED},
        f"seed must be an integer in [0, {MAX_SEED}], got {HUGE_SEED}",
    ),
    (ReservoirReplayPlugin, {"seed": -3}, f"seed must be an integer in [0, {MAX_SEED}], got -3"),
    # options of a part that is switched off
    (SparCLPlugin, {"removal_ratio": 0, "stages": -1}, "stages must be an integer >= 1, got -1"),
    (SparCLPlugin, {"removal_ratio": 0, "cutoff": 2}, "cutoff must be in (0, 1], got 2.0"),
    (SparCLPlugin, {"sparsity": 0, "expand_ratio": 5}, "expand_ratio must be in [0, 1), got 5.0"),
    (SparCLPlugin, {"sparsity": 0, "mutate_ratio": 0.7}, "mutate_ratio must be in [0, 0.5], got 0.7"),
    (SparCLPlugin, {"sparsity": 0, "freeze_at": 0}, "freeze_at must be in (0, 1], got 0.0"),
    (SparCLPlugin, {"sparsity": 0, "regrow": "magic"}, "regrow must be one of random, gradient, got 'magic'"),
    (
        SparCLPlugin,
        {"sparsity": 0, "importance_lambda": -1},
        "importance_lambda must be a finite number >= 0, got -1",
    ),
    (
        SparCLPlugin,
        {"sparsity": 0, "seed": HUGE_SEED},
        f"seed must be an integer in [0, {MAX_SEED}], got {HUGE_SEED}",
    ),
    (
        SparCLPlugin,
        {"gradient_sparsity": 0, "refresh_every": 0},
        "refresh_every must be an integer >= 1, got 0",
    ),
    # bools are not numbers
    (SparCLPlugin, {"removal_ratio": False}, "removal_ratio must be a number in [0, 1), got False"),
    (SparCLPlugin, {"sparsity": True}, "sparsity must be a number in [0, 1), got True"),
    (SparCLPlugin, {"gradient_sparsity": False}, "gradient_sparsity must be a number in [0, 1), got False"),
    (DDRPlugin, {"stages": True}, "stages must be an integer >= 1, got True"),
    (DGMPlugin, {"refresh_every": np.True_}, "refresh_every must be an integer >= 1, got np.True_"),
    (DDRSettings, {"removal_ratio": np.True_}, "removal_ratio must be a number in [0, 1), got np.True_"),
    (
        TDMSettings,
        {"importance_lambda": False},
        "importance_lambda must be a finite number >= 0, got False",
    ),
    (DDRPlugin, {"stages": np.float64(2.0)}, "stages must be an integer >= 1, got np.float64(2.0)"),
]


@pytest.mark.parametrize(
    ("build", "arguments", "message"),
    REFUSED,
    ids=[f"{build.__name__}-{'-'.join(map(str, arguments.items()))}" for build, arguments, _ in REFUSED],
)
def test_bad_argument_is_refused_at_construction_naming_it_and_its_range(build, arguments, message):
    with pytest.raises(ValueError) as raised:
        build(**arguments)
    assert str(raised.value) == message


def test_numpy_scalars_are_numbers_and_are_stored_as_python_numbers():
    sparcl = SparCLPlugin(
        sparsity=np.float32(0.5),
        removal_ratio=np.float32(0.25),
        gradient_sparsity=np.float64(0.2),
        stages=np.int64(2),
        cutoff=np.float16(0.5),
        refresh_every=np.int32(7),
        update_every=np.float32(0.125),
        seed=np.uint32(MAX_SEED),
    )
    assert (sparcl.tdm.settings.sparsity, sparcl.tdm.settings.update_every) == (0.5, 0.125)
    assert sparcl.tdm.settings.seed == MAX_SEED and type(sparcl.tdm.settings.seed) is int
    assert (sparcl.ddr.settings.removal_ratio, sparcl.ddr.settings.stages) == (0.25, 2)
    assert type(sparcl.ddr.settings.stages) is int and type(sparcl.ddr.settings.removal_ratio) is float
    assert (sparcl.dgm.gradient_sparsity, sparcl.dgm.refresh_every) == (pytest.approx(0.2), 7)
    assert ReservoirReplayPlugin(seed=np.int64(3)).mem_size == 200


def test_the_bounds_themselves_are_accepted():
    assert TDMSettings(update_every=0.001).update_every == 0.001
    assert TDMSettings(seed=MAX_SEED).seed == MAX_SEED


class KeptDataPerEpoch(SupervisedPlugin):
    """Records the training data size of every epoch (DDR cuts ``adapted_dataset`` to the kept set)."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def after_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        self.sizes.append(len(strategy.adapted_dataset))


def test_removal_ratio_near_one_keeps_the_hardest_example_of_each_class_and_trains(tensor_benchmark_factory):
    torch.manual_seed(0)
    benchmark = tensor_benchmark_factory(10, 4, 2, (6,))
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    ddr, epoch_sizes = DDRPlugin(removal_ratio=0.999, **DDR_RULES_OFF), KeptDataPerEpoch()
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        train_mb_size=8,
        train_epochs=3,
        eval_mb_size=64,
        plugins=[ddr, epoch_sizes],
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
    )
    for experience in benchmark.train_stream:
        strategy.train(experience)
        targets = torch.as_tensor(list(experience.dataset.targets))
        kept_labels = targets[ddr.removal.kept_positions].tolist()
        assert sorted(kept_labels) == sorted(experience.classes_in_this_experience)
    assert epoch_sizes.sizes == [20, 20, 2, 20, 20, 2]
    assert [record.kept for record in ddr.stage_counts] == [2, 2]
    assert [[stage.removed for stage in record.stages] for record in ddr.stage_counts] == [[18], [18]]


DIGITS = "benchmark: {name: split_digits}\nmodel: {name: small_cnn}\ntraining: {strategy: naive, epochs: 1}\n"
FOLDER_NAME_RULE = (
    "a plain folder name: letters, digits, '.', '_' and '-', not '.' or '..' (defaults to the file name)"
)

BAD_CONFIGS = [
    (
        DIGITS + "sparcl: {update_every: 0.000001}\n",
        "sparcl.update_every must be a number in [0.001, 1] (fraction of the epochs), got 1e-06",
    ),
    (DIGITS + "name: ../../../escape\n", f"name must be {FOLDER_NAME_RULE}, got '../../../escape'"),
    (DIGITS + "name: ..\n", f"name must be {FOLDER_NAME_RULE}, got '..'"),
    (DIGITS + "name: a/b\n", f"name must be {FOLDER_NAME_RULE}, got 'a/b'"),
    (DIGITS + "name: a\\b\n", f"name must be {FOLDER_NAME_RULE}, got 'a\\\\b'"),
    (DIGITS + "name: /tmp/x\n", f"name must be {FOLDER_NAME_RULE}, got '/tmp/x'"),
    (
        DIGITS + "sparcl:\n",
        "sparcl is empty: write 'sparcl: {}' for the default SparCL settings, "
        "or leave the section out for a dense run",
    ),
    (
        DIGITS + "baseline:\n",
        "baseline is empty: give its method and sparsity, or leave the section out for a dense run",
    ),
    (
        DIGITS + "training: {epochs: 2}\n",
        "not valid YAML (line 4, column 1): duplicate key 'training' (first given on line 3)",
    ),
    (
        DIGITS + "sparcl:\n  sparsity: 0.5\n  removal_ratio: 0\n  sparsity: 0.9\n",
        "not valid YAML (line 7, column 3): duplicate key 'sparsity' (first given on line 5)",
    ),
    (
        "benchmark: {name: split_digits, name: split_fmnist}\n",
        "not valid YAML (line 1, column 33): duplicate key 'name' (first given on line 1)",
    ),
    (
        DIGITS + "sparcl: {removal_ratio: 0, stages: -1}\n",
        "sparcl.stages must be an integer >= 1, got -1",
    ),
    (
        DIGITS + "sparcl: {removal_ratio: false}\n",
        "sparcl.removal_ratio must be a number in [0, 1), got False",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS)
def test_bad_config_value_is_one_config_error_naming_the_key(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == f"{path}: {message}"


def test_a_file_name_that_is_no_folder_name_needs_a_name_key(tmp_path):
    path = tmp_path / "..yaml"
    path.write_text(DIGITS)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == (
        f"{path}: name must be {FOLDER_NAME_RULE}, got '.' (from the file name: set 'name')"
    )
    path.write_text(DIGITS + "name: digits-naive_v1.2\n")
    assert load_config(path).name == "digits-naive_v1.2"


def test_duplicate_keys_in_an_extended_file_name_that_file(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(DIGITS + "model: {name: small_cnn}\n")
    path = tmp_path / "config.yaml"
    path.write_text("extends: base.yaml\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == (
        f"{base}: not valid YAML (line 4, column 1): duplicate key 'model' (first given on line 2)"
    )


def test_a_profile_that_is_not_valid_yaml_is_a_config_error_naming_the_file_and_line(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text("prune_ratios:\n  conv2.weight: 0.5\n  conv3.weight: [0.5\n")
    path = tmp_path / "config.yaml"
    path.write_text(DIGITS + "sparcl: {profile: profile.yaml}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == (
        f"{path}: sparcl.profile file {str(profile)!r} is not valid YAML (line 4, column 1): "
        "expected ',' or ']', but got '<stream end>'"
    )


def test_cli_refuses_a_name_that_leaves_the_output_folder_and_writes_nothing(tmp_path, capsys):
    configs = tmp_path / "configs"
    configs.mkdir()
    path = configs / "config.yaml"
    path.write_text(DIGITS + "name: ../../../escape\n")
    out = tmp_path / "a" / "b" / "runs"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err == (
        f"sparcl-bench: error: {path}: name must be {FOLDER_NAME_RULE}, got '../../../escape'\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs"]


@pytest.mark.parametrize("path_of", [Path, str])
def test_shipped_style_names_are_accepted(tmp_path, path_of):
    path = tmp_path / "sparcl_der_0.75_buf200.yaml"
    path.write_text(DIGITS)
    assert load_config(path_of(path)).name == "sparcl_der_0.75_buf200"
