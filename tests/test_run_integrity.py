"""A run folder is only reused for the run that produced it, and broken or busy folders fail cleanly.

Every refusal is exit code 2 with one line on stderr that names the file or folder and the way out.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from avalanche_sparcl.experiments.cli import main
from avalanche_sparcl.experiments.config import load_config
from avalanche_sparcl.experiments.runner import RunOptions, run_experiment

CONFIG_DIR = Path(__file__).resolve().parents[1] / "experiments" / "configs"
TINY_SPARCL_DER = """
extends: {base}
training: {{lr: {lr}}}
"""


class SimulatedKillError(Exception):
    pass


def tiny_config(folder: Path, lr: str = "0.03") -> Path:
    """SparCL-DER++ on Split Digits (run with ``--smoke``: two experiences of random tensors)."""
    path = folder / "tiny.yaml"
    base = CONFIG_DIR / "split_digits" / "sparcl_der_0.75_buf200.yaml"
    path.write_text(TINY_SPARCL_DER.format(base=base, lr=lr))
    return path


def smoke_arguments(config_path: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(config_path), "--out", str(out), "--smoke", "--quiet", *extra]


def run_folder(out: Path) -> Path:
    """The one run folder under ``out`` (found, not computed, so the tests run on any layout)."""
    (folder,) = [path for path in out.rglob("seed_0") if path.is_dir()]
    return folder


def interrupted_smoke_run(config_path: Path, out: Path) -> Path:
    """A smoke run stopped right after the checkpoint of its first experience; its run folder."""

    def stop(record):
        raise SimulatedKillError

    with pytest.raises(SimulatedKillError):
        run_experiment(load_config(config_path), 0, RunOptions(out, quiet=True, smoke=True), [stop])
    folder = run_folder(out)
    assert (folder / "checkpoint.pkl").is_file() and not (folder / "results.json").exists()
    return folder


def one_error_line(capsys) -> str:
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.endswith("\n"), error
    return error.rstrip("\n")


def scalar_events(tensorboard_folder: Path) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in the folder's event files, in file and write order."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util.tensor_util import make_ndarray

    events = []
    for path in sorted(tensorboard_folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                number = make_ndarray(value.tensor).item() if value.HasField("tensor") else value.simple_value
                events.append((event.step, value.tag, number))
    return events


# 1: a config edited between an interrupted run and its resume


def test_resuming_with_an_edited_config_is_refused_naming_the_keys(tmp_path, capsys):
    config_path = tiny_config(tmp_path)
    folder = interrupted_smoke_run(config_path, tmp_path / "runs")
    checkpoint = (folder / "checkpoint.pkl").read_bytes()
    tiny_config(tmp_path, lr="0.05")
    assert main(smoke_arguments(config_path, tmp_path / "runs")) == 2
    assert one_error_line(capsys) == (
        f"sparcl-bench: error: {folder} holds an interrupted run of another configuration "
        "(differs in config.training.lr); start it over with --restart, or use another --out"
    )
    assert (folder / "checkpoint.pkl").read_bytes() == checkpoint
    assert main(smoke_arguments(config_path, tmp_path / "runs", "--restart")) == 0
    results = json.loads((folder / "results.json").read_text())
    assert results["config"]["training"]["lr"] == 0.05


def test_run_json_and_results_json_carry_the_identity_and_its_fingerprint(tmp_path):
    from avalanche_sparcl.experiments.fingerprint import fingerprint, run_identity

    config_path = tiny_config(tmp_path)
    folder = interrupted_smoke_run(config_path, tmp_path / "runs")
    identity = run_identity(load_config(config_path), smoke=True)
    expected = {"identity": identity, "fingerprint": fingerprint(identity)}
    assert json.loads((folder / "run.json").read_text()) == expected
    assert main(smoke_arguments(config_path, tmp_path / "runs")) == 0
    results = json.loads((folder / "results.json").read_text())
    assert {key: results[key] for key in expected} == expected


def test_a_checkpoint_without_run_json_is_not_resumed(tmp_path, capsys):
    config_path = tiny_config(tmp_path)
    folder = interrupted_smoke_run(config_path, tmp_path / "runs")
    (folder / "run.json").unlink(missing_ok=True)  # as a checkpoint of an older version has none
    assert main(smoke_arguments(config_path, tmp_path / "runs")) == 2
    assert one_error_line(capsys) == (
        f"sparcl-bench: error: {folder} holds a checkpoint.pkl without run.json, so what produced it "
        "is unknown; start it over with --restart, or use another --out"
    )


# 2: smoke runs and real runs live apart


def test_smoke_runs_and_real_runs_live_apart(tmp_path, capsys):
    from avalanche_sparcl.experiments.runner import run_directory

    path = tmp_path / "er.yaml"
    path.write_text(f"extends: {CONFIG_DIR / 'split_digits' / 'er_buf200.yaml'}\ntraining: {{epochs: 1}}\n")
    out = tmp_path / "runs"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--smoke"]) == 0
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    smoke_line, real_line = capsys.readouterr().out.splitlines()
    config = load_config(path)
    assert run_directory(config, 0, out, smoke=True) == out / "smoke" / "split_digits" / "er" / "seed_0"
    assert run_directory(config, 0, out) == out / "split_digits" / "er" / "seed_0"
    assert smoke_line.endswith(f"-> {out / 'smoke' / 'split_digits' / 'er' / 'seed_0'}")
    assert real_line.endswith(f"-> {out / 'split_digits' / 'er' / 'seed_0'}")
    smoke = json.loads((run_directory(config, 0, out, smoke=True) / "results.json").read_text())
    real = json.loads((run_directory(config, 0, out) / "results.json").read_text())
    assert smoke["smoke"] is True and real["smoke"] is False
    assert smoke["fingerprint"] != real["fingerprint"]
    assert real["train_iterations"] > smoke["train_iterations"]


# 3: a finished run whose config changed


def test_a_finished_run_whose_config_changed_is_refused_and_kept(tmp_path, capsys):
    config_path = tiny_config(tmp_path)
    arguments = smoke_arguments(config_path, tmp_path / "runs")
    assert main(arguments) == 0
    folder = run_folder(tmp_path / "runs")
    results = (folder / "results.json").read_bytes()
    capsys.readouterr()
    tiny_config(tmp_path, lr="0.05")
    assert main(arguments) == 2
    assert one_error_line(capsys) == (
        f"sparcl-bench: error: {folder} holds a finished run of another configuration "
        "(differs in config.training.lr); start it over with --restart, or use another --out"
    )
    assert (folder / "results.json").read_bytes() == results
    tiny_config(tmp_path, lr="0.03")  # back to the config that produced it: skipped, not rerun
    assert main(arguments) == 0
    assert (folder / "results.json").read_bytes() == results


def test_a_finished_run_without_a_fingerprint_is_refused(tmp_path, capsys):
    config_path = tiny_config(tmp_path)
    arguments = smoke_arguments(config_path, tmp_path / "runs")
    assert main(arguments) == 0
    results_file = run_folder(tmp_path / "runs") / "results.json"
    results = json.loads(results_file.read_text())
    del results["fingerprint"]  # as results of an older version have none
    results_file.write_text(json.dumps(results))
    capsys.readouterr()
    assert main(arguments) == 2
    assert one_error_line(capsys) == (
        f"sparcl-bench: error: {results_file.parent} holds a finished run without a fingerprint, so what "
        "produced it is unknown; start it over with --restart, or use another --out"
    )


# 5 and 10: damaged checkpoints and results


def flip_a_byte_in_the_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def foreign_pickle(path: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, path)


def text(path: Path) -> None:
    path.write_text("not a checkpoint\n")


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (flip_a_byte_in_the_middle, "corrupted checkpoint: its SHA-256 differs from the one written with it"),
        (cut_in_half, "truncated checkpoint: {size} of {expected} bytes"),
        (empty, "empty checkpoint file"),
        (foreign_pickle, "not a checkpoint written by avalanche_sparcl.checkpointing.save_checkpoint"),
        (text, "not a checkpoint written by avalanche_sparcl.checkpointing.save_checkpoint"),
    ],
    ids=["flipped-byte", "truncated", "empty", "foreign-pickle", "text"],
)
def test_a_damaged_checkpoint_is_refused_naming_it(tmp_path, capsys, damage, problem):
    config_path = tiny_config(tmp_path)
    checkpoint = interrupted_smoke_run(config_path, tmp_path / "runs") / "checkpoint.pkl"
    expected = checkpoint.stat().st_size
    damage(checkpoint)
    problem = problem.format(size=checkpoint.stat().st_size, expected=expected)
    assert main(smoke_arguments(config_path, tmp_path / "runs")) == 2
    assert one_error_line(capsys) == (
        f"sparcl-bench: error: {checkpoint}: {problem}; start the run over with --restart"
    )
    assert main(smoke_arguments(config_path, tmp_path / "runs", "--restart")) == 0


def test_a_corrupted_results_json_is_refused_naming_it(tmp_path, capsys):
    config_path = tiny_config(tmp_path)
    assert main(smoke_arguments(config_path, tmp_path / "runs")) == 0
    results = run_folder(tmp_path / "runs") / "results.json"
    results.write_text('{"name": "tiny", "class_il')
    capsys.readouterr()
    assert main(smoke_arguments(config_path, tmp_path / "runs")) == 2
    assert one_error_line(capsys) == (
        f"sparcl-bench: error: {results}: not valid JSON (line 1, column 18: Unterminated string starting "
        "at); start the run over with --restart"
    )


# 8: two processes on one run folder

HOLD_THE_LOCK = """
import sys, time
from pathlib import Path
from avalanche_sparcl.experiments.runner import RunLock
with RunLock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(300)
"""


def test_a_second_process_on_the_same_run_folder_is_refused_and_a_dead_ones_lock_is_not(tmp_path, capsys):
    config_path = tiny_config(tmp_path)
    folder = tmp_path / "runs" / "smoke" / "split_digits" / "tiny" / "seed_0"
    folder.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        assert main(smoke_arguments(config_path, tmp_path / "runs")) == 2
        assert one_error_line(capsys) == (
            f"sparcl-bench: error: {folder} is being run by another process (pid {holder.pid}); "
            "wait for it to finish, or use another --out"
        )
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: its run.lock stays behind
        holder.wait()
    assert (folder / "run.lock").read_text().strip() == str(holder.pid)
    assert main(smoke_arguments(config_path, tmp_path / "runs")) == 0
    assert (folder / "results.json").is_file()


# 10: file system errors are one line, not a traceback


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    config_path = tiny_config(tmp_path)
    out = tmp_path / "runs"
    out.write_text("")
    assert main(smoke_arguments(config_path, out)) == 2
    assert one_error_line(capsys) == f"sparcl-bench: error: --out {out} is a file, not a folder"


def test_a_read_only_out_is_one_line(tmp_path, capsys, monkeypatch):
    """Tests run as root, where chmod stops nothing: the folder's creation is refused instead."""
    config_path = tiny_config(tmp_path)
    out = tmp_path / "runs"

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert main(smoke_arguments(config_path, out)) == 2
    error = one_error_line(capsys)
    assert error.startswith(f"sparcl-bench: error: {out}")
    assert error.endswith(": Permission denied")


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_partial_file(
    tmp_path, capsys, monkeypatch
):
    config_path = tiny_config(tmp_path)

    def write_some_then_fail(obj, stream, **kwargs):
        stream.write(b"the first bytes of a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", write_some_then_fail)
    assert main(smoke_arguments(config_path, tmp_path / "runs")) == 2
    folder = run_folder(tmp_path / "runs")
    assert one_error_line(capsys) == (
        f"sparcl-bench: error: {folder / 'checkpoint.pkl'}: No space left on device"
    )
    assert not list(folder.glob("*.partial")) and not (folder / "checkpoint.pkl").exists()


def test_a_profile_naming_parameters_the_model_lacks_is_refused_before_the_run_folder(tmp_path, capsys):
    profile = tmp_path / "profile.yaml"
    profile.write_text("prune_ratios: {conv1.weight: 0.5, layer1.0.conv1.weight: 0.75}\n")
    config_path = tmp_path / "profiled.yaml"
    base = CONFIG_DIR / "split_digits" / "sparcl_der_0.75_buf200.yaml"
    config_path.write_text(f"extends: {base}\nsparcl: {{profile: {profile}}}\n")
    out = tmp_path / "runs"
    assert main(smoke_arguments(config_path, out)) == 2
    assert one_error_line(capsys) == (
        f"sparcl-bench: error: {config_path}: sparcl.profile does not fit model 'small_cnn': profile "
        "names parameters the model does not have: 'layer1.0.conv1.weight' (did you mean "
        "'conv1.weight' or 'conv3.weight' or 'conv2.weight'?)"
    )
    assert not out.exists()


# smaller ones: TensorBoard event files and the quiet resume


def test_a_resumed_run_continues_its_event_file_without_the_interrupted_experience(tmp_path, monkeypatch):
    """Killed after experience 1 was trained and logged but before its checkpoint: on resume the event
    file is cut back to checkpoint 0 and the run continues in a new one (SummaryWriter's purge_step),
    so together they hold what an uninterrupted run's holds."""
    from avalanche_sparcl.experiments import runner

    config = load_config(tiny_config(tmp_path))
    uninterrupted = run_experiment(config, 0, RunOptions(tmp_path / "a", quiet=True, smoke=True))
    original_save = runner.save_checkpoint
    saves = []

    def killed_before_the_second_save(strategy, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 2:
            raise SimulatedKillError
        return original_save(strategy, path, *args, **kwargs)

    monkeypatch.setattr(runner, "save_checkpoint", killed_before_the_second_save)
    options = RunOptions(tmp_path / "b", quiet=True, smoke=True)
    with pytest.raises(SimulatedKillError):
        run_experiment(config, 0, options)
    monkeypatch.undo()
    folder = run_folder(tmp_path / "b")
    (event_file,) = (folder / "tensorboard").glob("events.out.tfevents.*")
    resumed = run_experiment(config, 0, options)
    event_files = sorted((folder / "tensorboard").glob("events.out.tfevents.*"))
    assert len(event_files) == 2 and event_files[0] == event_file
    expected = scalar_events(run_folder(tmp_path / "a") / "tensorboard")
    assert any(value != 0 for _, _, value in expected)  # the events were read, values included
    assert scalar_events(folder / "tensorboard") == expected
    assert resumed["accuracy_matrix"] == uninterrupted["accuracy_matrix"]


def test_restart_removes_the_old_event_and_csv_files(tmp_path, capsys):
    config_path = tiny_config(tmp_path)
    arguments = smoke_arguments(config_path, tmp_path / "runs")
    assert main(arguments) == 0
    folder = run_folder(tmp_path / "runs")
    (old_event_file,) = (folder / "tensorboard").glob("events.out.tfevents.*")
    (folder / "csv" / "stale.csv").write_text("left over\n")
    assert main([*arguments, "--restart"]) == 0
    (new_event_file,) = (folder / "tensorboard").glob("events.out.tfevents.*")
    assert new_event_file != old_event_file
    assert sorted(path.name for path in (folder / "csv").iterdir()) == [
        "eval_results.csv",
        "sparcl_epochs.csv",
        "sparcl_experiences.csv",
        "training_results.csv",
    ]


def test_a_quiet_resume_prints_no_avalanche_warning(tmp_path, capsys):
    config_path = tiny_config(tmp_path)
    interrupted_smoke_run(config_path, tmp_path / "runs")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(smoke_arguments(config_path, tmp_path / "runs")) == 0
    assert [str(w.message) for w in caught if "No loggers specified" in str(w.message)] == []
    assert capsys.readouterr().err == ""


def test_the_cli_reports_no_traceback_for_an_unexpected_file_system_error(tmp_path, capsys, monkeypatch):
    """An OSError anywhere in a run (here: results.json cannot be written) is one line, exit 2."""
    from avalanche_sparcl.experiments import runner

    original_write = runner.write_text_atomically

    def refuse_results(path, text):
        if Path(path).name == "results.json":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        original_write(path, text)

    monkeypatch.setattr(runner, "write_text_atomically", refuse_results)
    assert main(smoke_arguments(tiny_config(tmp_path), tmp_path / "runs")) == 2
    results = run_folder(tmp_path / "runs") / "results.json"
    assert one_error_line(capsys) == f"sparcl-bench: error: {results}: Read-only file system"


def test_the_demo_reports_a_foreign_run_folder_in_one_line(tmp_path, capsys):
    from avalanche_sparcl.demo import main as demo_main

    run_dir = tmp_path / "runs" / "split_digits" / "der_buf200" / "seed_0"
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text('{"name": "der_buf200"}\n')
    assert demo_main(["--seeds", "0", "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"demo: error: {run_dir} holds a finished run without a fingerprint, so what produced it is "
        "unknown; start it over with --restart, or use another --out\n"
    )
