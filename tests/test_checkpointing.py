"""Checkpoint and resume: kills at any moment resume to the uninterrupted result, writes are atomic."""

import errno
import hashlib
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from avalanche.checkpointing import save_checkpoint as avalanche_save_checkpoint
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from checkpoint_driver import (
    KILL_AFTER_SAVING,
    KILL_WHILE_SAVING,
    build_strategy,
    differences,
    final_state,
    flops_metric,
    one_thread,
    run,
    sparcl_plugin,
)

from avalanche_sparcl import atomic_files
from avalanche_sparcl.atomic_files import partial_path
from avalanche_sparcl.checkpointing import (
    HEADER_LENGTH,
    CheckpointError,
    load_checkpoint,
    make_torch_optimizers_picklable,
    maybe_resume,
    save_checkpoint,
)
from avalanche_sparcl.plugins.ddr import KeptExamplesUpdate

DRIVER = Path(__file__).with_name("checkpoint_driver.py")


def start_driver(checkpoint: Path, result: Path, **kill: str) -> subprocess.Popen:
    """The driver in a new process (one thread, warnings off), with a kill point from ``kill``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **kill}
    for name in (KILL_AFTER_SAVING, KILL_WHILE_SAVING):
        if name not in kill:
            env.pop(name, None)
    command = [sys.executable, str(DRIVER), "--checkpoint", str(checkpoint), "--result", str(result)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> int:
    _, stderr = process.communicate(timeout=300)
    if process.returncode not in (0, -signal.SIGKILL):
        pytest.fail(f"driver failed with {process.returncode}:\n{stderr[-3000:]}")
    return process.returncode


def next_experience_in(checkpoint: Path) -> int:
    """Load ``checkpoint`` into a fresh strategy, as a resuming run does; the next experience index."""
    _, strategy = build_strategy()
    _, next_experience = load_checkpoint(strategy, checkpoint)
    return next_experience


def test_runs_killed_while_saving_and_between_experiences_resume_to_the_uninterrupted_result(tmp_path):
    """3 experiences; run A is killed while writing checkpoint 1, run B resumes from checkpoint 0 and is
    killed right after saving checkpoint 1, run C resumes from it and finishes: all in new processes."""
    checkpoint = tmp_path / "interrupted" / "checkpoint.pkl"
    result = tmp_path / "interrupted.pt"
    killed_while_saving = start_driver(checkpoint, result, **{KILL_WHILE_SAVING: "1"})
    with one_thread():  # the uninterrupted run, in this process while A runs
        expected = run(tmp_path / "uninterrupted" / "checkpoint.pkl")

    assert finish(killed_while_saving) == -signal.SIGKILL
    # the kill hit the write of checkpoint 1, into a partial file named after the process
    assert partial_path(checkpoint, pid=killed_while_saving.pid).stat().st_size > 0
    assert next_experience_in(checkpoint) == 1  # checkpoint 0 is intact

    assert finish(start_driver(checkpoint, result, **{KILL_AFTER_SAVING: "1"})) == -signal.SIGKILL
    assert not list(checkpoint.parent.glob("*.partial"))  # a save removes a dead process's leftover
    assert next_experience_in(checkpoint) == 2

    assert finish(start_driver(checkpoint, result)) == 0
    resumed = torch.load(result, weights_only=False)
    assert differences(expected, resumed) == []
    # per experience: expand, shrink at 0.3 epochs, 7 mutations at 0.6, ..., 2.4 (frozen from 2.7)
    assert len(expected["mask_history"]) == 3 * 9
    assert [[stage["epoch"] for stage in record["stages"]] for record in expected["ddr_history"]] == [[2]] * 3


def test_every_plugin_state_round_trips_and_stays_connected(tmp_path):
    """After a load the plugins, model, optimizer and metrics point at each other as before a save."""
    benchmark, strategy = build_strategy()
    with one_thread():
        strategy.train(benchmark.train_stream[0])
    before = final_state(strategy)
    save_checkpoint(strategy, tmp_path / "checkpoint.pkl")

    _, fresh = build_strategy(seed=5)
    resumed, next_experience = load_checkpoint(fresh, tmp_path / "checkpoint.pkl")
    assert resumed is fresh and next_experience == 1
    assert differences(before, final_state(resumed)) == []
    sparcl = sparcl_plugin(resumed)
    parameters = dict(resumed.model.named_parameters())
    assert sparcl.tdm.engine.gradient_masking is sparcl.dgm.gradient_masking
    assert all(param is parameters[name] for name, param in sparcl.tdm.dynamic_sparsity.params.items())
    assert all(param is parameters[name] for name, param in sparcl.dgm.gradient_masking.params.items())
    assert resumed.optimizer.param_groups[0]["params"] == list(resumed.model.parameters())
    assert isinstance(resumed.storage_policy.update, KeptExamplesUpdate)
    assert resumed.storage_policy.update.plugin is sparcl.ddr
    assert flops_metric(resumed).counter.model is resumed.model
    assert len(resumed.model._forward_hooks) == 1  # the FLOPs counter's hooks came along
    # kept-count caches key on tensor versions, which restart at 0 when unpickled: they start empty
    assert flops_metric(strategy)._kept_counts._cache != {}
    assert flops_metric(resumed)._kept_counts._cache == {}


def tiny_strategy() -> Naive:
    model = torch.nn.Linear(3, 2)
    return Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        evaluator=EvaluationPlugin(loggers=[]),
    )


def test_a_failed_write_leaves_the_previous_checkpoint_untouched_and_no_partial_file(tmp_path, monkeypatch):
    strategy = tiny_strategy()
    checkpoint = save_checkpoint(strategy, tmp_path / "run" / "checkpoint.pkl")
    saved = checkpoint.read_bytes()

    def fail_halfway(obj, stream, **kwargs):
        stream.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(strategy, checkpoint)
    monkeypatch.undo()
    assert checkpoint.read_bytes() == saved
    assert not list(checkpoint.parent.glob("*.partial"))
    assert load_checkpoint(tiny_strategy(), checkpoint)[1] == 0


class FillsUp:
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, stream, room: int) -> None:
        self.stream, self.room = stream, room

    def write(self, data) -> int:
        self.room -= memoryview(data).nbytes
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.stream.write(data)

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def __enter__(self):
        return self

    def __exit__(self, *exception) -> None:
        self.stream.close()


def test_a_full_disk_inside_torch_save_raises_the_os_error_naming_the_checkpoint(tmp_path, monkeypatch):
    """torch's zip writer turns a failing write into 'RuntimeError: unexpected pos'; the OSError is what
    the caller sees, naming the checkpoint, and no partial file is left."""
    checkpoint = tmp_path / "checkpoint.pkl"
    monkeypatch.setattr(atomic_files, "open", lambda *args: FillsUp(open(*args), room=300), raising=False)
    with pytest.raises(OSError) as raised:
        save_checkpoint(tiny_strategy(), checkpoint)
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(checkpoint))
    assert str(raised.value) == f"[Errno 28] No space left on device: {str(checkpoint)!r}"
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_starts_with_the_sha256_and_length_of_what_follows(tmp_path):
    data = save_checkpoint(tiny_strategy(), tmp_path / "checkpoint.pkl").read_bytes()
    header, payload = data[:HEADER_LENGTH], data[HEADER_LENGTH:]
    digest = hashlib.sha256(payload).hexdigest()
    assert header == f"avalanche-sparcl checkpoint v1 sha256={digest} bytes={len(payload):020d}\n".encode()


def flip_a_byte_in_the_middle(data: bytes) -> bytes:
    return data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1 :]


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (flip_a_byte_in_the_middle, "corrupted checkpoint: its SHA-256 differs from the one written with it"),
        (lambda data: data + b"\0", "corrupted checkpoint: its SHA-256 differs from the one written with it"),
        (lambda data: data[:-1], "truncated checkpoint: {short} of {full} bytes"),
        (lambda data: data[:10], "truncated checkpoint: 10 bytes, not even its header"),
        (lambda data: data.replace(b"sha256=", b"sha256:", 1), "corrupted checkpoint: its header is damaged"),
        (lambda data: b"", "empty checkpoint file"),
        (lambda data: data[HEADER_LENGTH:], "not a checkpoint written by {ours}"),
        (lambda data: pickle.dumps({"strategy": None}), "not a checkpoint written by {ours}"),
    ],
    ids=[
        "flipped-byte",
        "extra-byte",
        "truncated",
        "truncated-header",
        "header",
        "empty",
        "headerless",
        "foreign",
    ],
)
def test_a_damaged_checkpoint_raises_checkpoint_error_and_leaves_the_strategy_alone(
    tmp_path, damage, problem
):
    checkpoint = save_checkpoint(tiny_strategy(), tmp_path / "checkpoint.pkl")
    full = checkpoint.stat().st_size
    checkpoint.write_bytes(damage(checkpoint.read_bytes()))
    strategy = tiny_strategy()
    model = strategy.model
    with pytest.raises(CheckpointError) as raised:
        maybe_resume(strategy, checkpoint)
    ours = "avalanche_sparcl.checkpointing.save_checkpoint"
    assert str(raised.value) == f"{checkpoint}: " + problem.format(short=full - 1, full=full, ours=ours)
    assert isinstance(raised.value, ValueError) and strategy.model is model


def test_partial_file_names_differ_between_processes(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    assert partial_path(path) == tmp_path / f"checkpoint.pkl.{os.getpid()}.partial"
    assert partial_path(path, pid=1) != partial_path(path)


def test_the_optimizer_workaround_is_needed_idempotent_and_applied_by_save(tmp_path, monkeypatch):
    """torch.optim deletes its submodules; without them Avalanche's own save fails for any strategy."""
    strategy = tiny_strategy()
    submodules = [name for name in sys.modules if name.startswith("torch.optim.") and name.count(".") == 2]
    for name in submodules:  # as torch/optim/__init__.py leaves them
        monkeypatch.delattr(torch.optim, name.rpartition(".")[2], raising=False)
    with pytest.raises(pickle.PicklingError, match="Can't pickle sentinel"):
        avalanche_save_checkpoint(strategy, str(tmp_path / "plain.pkl"))
    save_checkpoint(strategy, tmp_path / "ours.pkl")
    assert torch.optim.sgd is sys.modules["torch.optim.sgd"]
    make_torch_optimizers_picklable()
    assert torch.optim.sgd is sys.modules["torch.optim.sgd"]
    avalanche_save_checkpoint(strategy, str(tmp_path / "plain.pkl"))


def test_resume_without_a_checkpoint_starts_at_the_first_experience(tmp_path):
    _, strategy = build_strategy()
    plugins = strategy.plugins
    assert maybe_resume(strategy, tmp_path / "missing.pkl") == (strategy, 0)
    assert strategy.plugins is plugins
    with pytest.raises(FileNotFoundError) as error:
        load_checkpoint(strategy, tmp_path / "missing.pkl")
    assert str(error.value) == f"no checkpoint at {str(tmp_path / 'missing.pkl')!r}"
