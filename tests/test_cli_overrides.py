"""``sparcl-bench run``'s grid: ``--set`` overrides (checked like the file, part of the run's config
and fingerprint), run folders checked for clashes before anything trains, one progress line per
finished run with the time left, and a ``--help`` that does not wait for Avalanche."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from avalanche_sparcl.experiments import grid
from avalanche_sparcl.experiments.cli import main
from avalanche_sparcl.experiments.config import load_config, parse_override
from avalanche_sparcl.experiments.fingerprint import fingerprint, run_identity
from avalanche_sparcl.experiments.grid import GridProgress, duration_text
from avalanche_sparcl.experiments.options import (
    SMOKE_BATCH_SIZE,
    SMOKE_EXPERIENCES,
    SMOKE_TRAIN_PER_EXPERIENCE,
)

DER = """benchmark: {name: split_digits}
model: {name: small_cnn}
training: {strategy: der, buffer_size: 20, epochs: 3}
"""
ER = DER.replace("strategy: der", "strategy: er")


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


class FakeClock:
    """Returns the given times, one per call."""

    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


# --- --set --------------------------------------------------------------------------------------------


def test_set_epochs_runs_one_epoch_and_results_json_shows_it(tmp_path, capsys, monkeypatch):
    der, er = write(tmp_path, "der.yaml", DER), write(tmp_path, "er.yaml", ER)
    out = tmp_path / "runs"
    # constructed, first run started at 0 and ended at 30 s, the second from 30 to 50
    monkeypatch.setattr(grid, "CLOCK", FakeClock(0, 0, 30, 30, 50))
    argv = ["run", str(der), str(er), "--smoke", "--quiet", "--out", str(out), "--set", "training.epochs=1"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    folders = [out / "smoke" / "split_digits" / name / "seed_0" for name in ("der", "er")]
    assert [line.split(" s ", 1)[1] for line in lines] == [
        f"[1/2, ETA 30s] -> {folders[0]}",
        f"[2/2] -> {folders[1]}",
    ]
    results = json.loads((folders[0] / "results.json").read_text())
    assert results["config"]["training"]["epochs"] == 1
    iterations_per_epoch = SMOKE_TRAIN_PER_EXPERIENCE // SMOKE_BATCH_SIZE
    assert results["train_iterations"] == SMOKE_EXPERIENCES * iterations_per_epoch  # one epoch each
    with_set = run_identity(load_config(der, [parse_override("training.epochs=1")]), smoke=True)
    without = run_identity(load_config(der), smoke=True)
    assert results["fingerprint"] == fingerprint(with_set) != fingerprint(without)

    # the same command again: both runs are finished, so nothing is left to train and no ETA
    monkeypatch.setattr(grid, "CLOCK", FakeClock(100, 100, 101, 101, 102))
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" s ", 1)[1] for line in lines] == [f"[1/2] -> {folders[0]}", f"[2/2] -> {folders[1]}"]


def test_set_values_are_read_as_yaml_and_several_can_be_given(tmp_path):
    path = write(tmp_path, "der.yaml", DER + "sparcl: {}\n")
    overrides = [parse_override(text) for text in ("training.lr=1e-3", "sparcl.sparsity=0.9", "name=short")]
    config = load_config(path, overrides)
    assert (config.training["lr"], config.sparcl["sparsity"], config.name) == (0.001, 0.9, "short")
    assert config.training["epochs"] == 3  # the file's value where nothing is set


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["training.epoch=1"],
            "--set 'training.epoch=1': unknown key 'training.epoch' (did you mean 'epochs'?); accepted keys "
            "in 'training': alpha, batch_size, beta, buffer, buffer_size, epochs, eval_batch_size, lr, "
            "strategy",
        ),
        (
            ["training.epochs=0"],
            "--set 'training.epochs=0': training.epochs must be an integer >= 1 (epochs per experience), "
            "got 0",
        ),
        (
            ["training.strategy=dr"],
            "--set 'training.strategy=dr': training.strategy must be one of naive, er, der, er_ace, got 'dr' "
            "(did you mean 'der'?)",
        ),
        (
            ["lr=0.1"],
            "--set 'lr=0.1': unknown key 'lr' (did you mean 'training.lr'?); accepted keys: "
            "description, name",
        ),
        (
            ["trainig.lr=0.1"],
            "--set 'trainig.lr=0.1': unknown section 'trainig' (did you mean 'training'?); sections: "
            "baseline, benchmark, model, sparcl, training",
        ),
        (["training.epochs"], "--set 'training.epochs': expected KEY=VALUE, e.g. training.epochs=1"),
        (
            ["training.lr=[0.1"],
            "--set 'training.lr=[0.1': the value is not valid YAML (line 1, column 5): "
            "expected ',' or ']', but got '<stream end>'",
        ),
        (
            ["training.epochs=2", "training.strategy=naive"],
            "{config}: training.buffer_size is not accepted for strategy 'naive' (no replay)",
        ),
        (
            ["sparcl.sparsity=0.9"],
            "{config}: --set 'sparcl.sparsity=0.9': the config has no 'sparcl' section (--set changes "
            "values of a config, it adds no section)",
        ),
    ],
    ids=[
        "unknown-key",
        "bad-value",
        "bad-choice",
        "top-level",
        "section",
        "no-equals",
        "yaml",
        "cross",
        "no-section",
    ],
)
def test_a_bad_set_exits_2_with_one_line_before_anything_runs(tmp_path, capsys, overrides, message):
    config = write(tmp_path, "der.yaml", DER)
    out = tmp_path / "runs"
    assert main(["run", str(config), "--smoke", "--out", str(out), "--set", *overrides]) == 2
    assert capsys.readouterr().err == f"sparcl-bench: error: {message.format(config=config)}\n"
    assert not out.exists()


# --- run folders: clashes found before anything trains ------------------------------------------------


@pytest.mark.parametrize("restart", [[], ["--restart"]], ids=["plain", "restart"])
def test_two_configs_with_one_name_exit_2_before_training(tmp_path, capsys, restart):
    first = write(tmp_path, "der.yaml", DER)
    (tmp_path / "other").mkdir()
    second = write(tmp_path / "other", "der.yaml", ER)
    out = tmp_path / "runs"
    assert main(["run", str(first), str(second), "--smoke", "--quiet", "--out", str(out), *restart]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"sparcl-bench: error: {first} and {second} both run in {out / 'smoke' / 'split_digits' / 'der'} "
        "(benchmark split_digits, name 'der'); give one of them another 'name'\n"
    )
    assert (captured.out, out.exists()) == ("", False)


def test_a_name_given_by_set_clashes_too(tmp_path, capsys):
    der, er = write(tmp_path, "der.yaml", DER), write(tmp_path, "er.yaml", ER)
    out = tmp_path / "runs"
    assert main(["run", str(der), str(er), "--out", str(out), "--set", "name=same"]) == 2
    assert capsys.readouterr().err == (
        f"sparcl-bench: error: {der} and {er} both run in {out / 'split_digits' / 'same'} "
        "(benchmark split_digits, name 'same'); give one of them another 'name'\n"
    )


def test_a_config_or_seed_given_twice_exits_2(tmp_path, capsys):
    der = write(tmp_path, "der.yaml", DER)
    out = tmp_path / "runs"
    assert main(["run", str(der), str(tmp_path / "." / "der.yaml"), "--smoke", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"sparcl-bench: error: {tmp_path / '.' / 'der.yaml'} is given twice; each config runs once per seed\n"
    )
    assert main(["run", str(der), "--smoke", "--out", str(out), "--seeds", "0", "1", "0"]) == 2
    assert capsys.readouterr().err == (
        "sparcl-bench: error: --seeds gives seed 0 more than once; each seed runs once per config\n"
    )
    assert not out.exists()


# --- progress ---------------------------------------------------------------------------------------------


def test_progress_estimates_from_the_runs_trained_so_far():
    # five runs; the third was finished before (skipped): it adds no time and needs none
    progress = GridProgress([True, True, False, True, True], clock=FakeClock(0, 0, 100, 100, 300, 300, 301))
    texts = []
    for _ in range(3):
        progress.start_run()
        texts.append(progress.finish_run())
    assert texts == ["[1/5, ETA 5m00s]", "[2/5, ETA 5m00s]", "[3/5, ETA 5m00s]"]


def test_progress_without_a_trained_run_has_no_estimate():
    progress = GridProgress([False, True], clock=FakeClock(0, 0, 1, 1, 4000))
    progress.start_run()
    assert progress.finish_run() == "[1/2]"
    progress.start_run()
    assert progress.finish_run() == "[2/2]"


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0s"), (42.0, "42s"), (59.6, "1m00s"), (250, "4m10s"), (7500, "2h05m")]
)
def test_duration_text(seconds, text):
    assert duration_text(seconds) == text


# --- a fast --help ------------------------------------------------------------------------------------------

HELP_PROBE = """
import sys
from avalanche_sparcl.experiments.cli import main
for argv in (["--help"], ["run", "--help"], ["--version"]):
    try:
        main(argv)
    except SystemExit as exit:
        assert exit.code == 0, exit.code
print(sorted(name for name in sys.modules if name.split(".")[0] in ("avalanche", "torch")))
"""


def test_help_and_version_import_neither_avalanche_nor_torch():
    done = subprocess.run([sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, check=True)
    assert "--set KEY=VALUE [KEY=VALUE ...]" in done.stdout
    assert done.stdout.splitlines()[-1] == "[]"
