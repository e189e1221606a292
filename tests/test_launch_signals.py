"""``sparcl-bench run --nproc 2`` lives and dies as one command, and reports its errors once.

Killing the command (SIGTERM, SIGINT, SIGKILL) or torch's launcher leaves no process of the run behind;
a stopped rank ends the run after the collective timeout; a user error found by the ranks is one line
and exit code 2; run folders are claimed before launching, and a run folder deleted while it is run
stays held. The kill tests start real two-process runs on Split
Digits and kill them once the ranks are training (Linux: the process tree is read from /proc).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from torch.distributed import run as torch_run

from avalanche_sparcl.experiments import cli, launch
from avalanche_sparcl.experiments.config import load_config
from avalanche_sparcl.experiments.fingerprint import fingerprint, run_identity
from avalanche_sparcl.experiments.run_folder import RUN_FOLDERS_HELD_BY

CONFIG_DIR = Path(__file__).resolve().parents[1] / "experiments" / "configs"
LONG_RUN = """
extends: {base}
training: {{epochs: 1000}}
"""
"""Split Digits ER with 1000 epochs per experience: still training whenever a test kills it."""
COMMAND = [sys.executable, "-m", "avalanche_sparcl.experiments.cli"]
STARTUP_S = 400  # four Python processes importing torch and Avalanche on a busy 2-core machine
GONE_WITHIN_S = 10

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, parent = stat[stat.rindex(")") + 2 :].split()[:2]
            table[int(entry.name)] = (int(parent), state)
    return table


def descendants(pid: int) -> list[int]:
    table = process_table()
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, (parent, _) in table.items() if parent in frontier]
        found += children
        frontier = children
    return found


def alive(pids: list[int]) -> list[int]:
    table = process_table()
    return [pid for pid in pids if pid in table and table[pid][1] != "Z"]  # a zombie has ended


def start_long_run(tmp_path: Path, **environment: str) -> tuple[subprocess.Popen, Path]:
    """A two-process run, started in a session of its own; its training log once the ranks train."""
    config = tmp_path / "long.yaml"
    config.write_text(LONG_RUN.format(base=CONFIG_DIR / "split_digits" / "er_buf200.yaml"))
    out = tmp_path / "runs"
    arguments = ["run", str(config), "--nproc", "2", "--quiet", "--out", str(out)]
    with (tmp_path / "stderr").open("w") as stderr:
        process = subprocess.Popen(
            [*COMMAND, *arguments], stderr=stderr, start_new_session=True, env={**os.environ, **environment}
        )
    return process, out / "split_digits" / "long" / "seed_0" / "csv" / "training_results.csv"


def wait_until_training(process: subprocess.Popen, training_log: Path, tmp_path: Path) -> list[int]:
    """Wait for a first training epoch logged by rank 0 (a row after the header); the launcher and
    ranks then running."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended before training: {(tmp_path / 'stderr').read_text()}")
        if training_log.is_file() and len(training_log.read_text().splitlines()) >= 2:
            tree = descendants(process.pid)
            if len(alive(tree)) >= 3:  # the launcher and two ranks
                return tree
        time.sleep(0.2)
    pytest.fail(f"no training within {STARTUP_S} s")


def wait_until_gone(pids: list[int]) -> float:
    """Seconds until none of ``pids`` is alive (at most GONE_WITHIN_S + 1)."""
    started = time.monotonic()
    while alive(pids) and time.monotonic() - started < GONE_WITHIN_S + 1:
        time.sleep(0.1)
    return time.monotonic() - started


def kill_leftovers(pids: list[int]) -> None:
    for pid in alive(pids):
        os.kill(pid, signal.SIGKILL)


@linux_only
@pytest.mark.parametrize(
    ("kill", "signum"),
    [(os.kill, signal.SIGTERM), (os.killpg, signal.SIGINT), (os.killpg, signal.SIGKILL)],
    ids=["SIGTERM", "SIGINT to its process group (Ctrl-C)", "SIGKILL to its process group"],
)
def test_killing_the_command_leaves_no_process_of_the_run(tmp_path, kill, signum):
    process, training_log = start_long_run(tmp_path)  # the leader of a process group of its own
    tree: list[int] = []
    try:
        tree = wait_until_training(process, training_log, tmp_path)
        kill(process.pid, signum)
        gone_after = wait_until_gone([process.pid, *tree])
        assert alive([process.pid, *tree]) == []
        assert gone_after <= GONE_WITHIN_S
        process.wait(timeout=5)
        if signum == signal.SIGTERM:
            assert process.returncode == 128 + signal.SIGTERM
        elif signum == signal.SIGKILL:
            assert process.returncode == -signal.SIGKILL
        else:  # as one process answers Ctrl-C, once
            assert process.returncode == cli.INTERRUPTED
            stderr = (tmp_path / "stderr").read_text().splitlines()
            assert stderr[-1] == cli.interrupted_message("run")
            assert stderr.count(cli.interrupted_message("run")) == 1
    finally:
        kill_leftovers([process.pid, *tree])
        process.wait()


@linux_only
def test_killing_the_launcher_ends_the_ranks_and_the_command_says_so(tmp_path):
    process, training_log = start_long_run(tmp_path)
    tree: list[int] = []
    try:
        tree = wait_until_training(process, training_log, tmp_path)
        (launcher,) = [pid for pid in tree if process_table()[pid][0] == process.pid]
        os.kill(launcher, signal.SIGKILL)
        assert wait_until_gone([process.pid, *tree]) <= GONE_WITHIN_S
        assert process.wait(timeout=5) == 128 + signal.SIGKILL
        assert (tmp_path / "stderr").read_text().splitlines()[-1] == (
            "sparcl-bench: error: a data-parallel process was ended by SIGKILL"
        )
    finally:
        kill_leftovers([process.pid, *tree])
        process.wait()


def rank_of(pid: int) -> str | None:
    """A launched process's RANK (None for the launcher, which has none)."""
    for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if entry.startswith(b"RANK="):
            return entry[len(b"RANK=") :].decode()
    return None


@linux_only
def test_a_stopped_rank_ends_the_run_after_the_collective_timeout(tmp_path):
    process, training_log = start_long_run(tmp_path, **{launch.COLLECTIVE_TIMEOUT: "5"})
    tree: list[int] = []
    try:
        tree = wait_until_training(process, training_log, tmp_path)
        (rank1,) = [pid for pid in tree if rank_of(pid) == "1"]
        os.kill(rank1, signal.SIGSTOP)
        stopped = time.monotonic()
        # rank 0 waits 5 s; torch's agent then gives the stopped rank 30 s to end before SIGKILL
        code = process.wait(timeout=240)
        assert (code, time.monotonic() - stopped < 120) == (1, True), (tmp_path / "stderr").read_text()
        assert alive(tree) == []
        last_line = (tmp_path / "stderr").read_text().splitlines()[-1]
        assert last_line.startswith(
            "sparcl-bench: training failed: rank 0 waited more than 5 s (SPARCL_COLLECTIVE_TIMEOUT_S) for "
            "the other ranks, so one of them stopped or hangs ("
        )
        assert last_line.endswith("); the last checkpoint is kept")
    finally:
        kill_leftovers([process.pid, *tree])
        process.wait()


def smoke_arguments(config: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(config), "--smoke", "--quiet", "--out", str(out), *extra]


SMOKE_CONFIG = CONFIG_DIR / "split_digits" / "der_buf200.yaml"


def smoke_run_folder(out: Path) -> Path:
    return out / "smoke" / "split_digits" / "der_buf200" / "seed_0"


def write_run_record(run_dir: Path, world_size: int) -> None:
    identity = run_identity(load_config(SMOKE_CONFIG), smoke=True, world_size=world_size)
    record = {"identity": identity, "fingerprint": fingerprint(identity)}
    (run_dir / "run.json").write_text(json.dumps(record))


def test_a_user_error_found_by_the_ranks_is_one_line_and_exit_code_2(tmp_path, capsys):
    """A damaged checkpoint of the same run is only found when the ranks load it."""
    out = tmp_path / "runs"
    run_dir = smoke_run_folder(out)
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pkl").write_bytes(b"not a checkpoint")
    write_run_record(run_dir, world_size=1)
    assert cli.main(smoke_arguments(SMOKE_CONFIG, out)) == 2  # what one process says
    one_process_line = capsys.readouterr().err
    assert one_process_line.startswith("sparcl-bench: error: ") and one_process_line.count("\n") == 1
    write_run_record(run_dir, world_size=2)
    arguments = smoke_arguments(SMOKE_CONFIG, out, "--nproc", "2")
    done = subprocess.run([*COMMAND, *arguments], capture_output=True, text=True, timeout=STARTUP_S)
    assert (done.returncode, done.stderr, done.stdout) == (2, one_process_line, "")


HOLD_THE_LOCK = """
import sys, time
from pathlib import Path
from avalanche_sparcl.experiments.run_folder import RunLock
with RunLock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(300)
"""


def hold_the_lock(run_dir: Path) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline() == "locked\n"
    return holder


def refuse_to_launch(monkeypatch) -> None:
    """Fail the test if the command starts a process."""
    monkeypatch.setattr(subprocess, "Popen", lambda *arguments, **options: pytest.fail("launched"))


def test_a_locked_run_folder_is_refused_before_launching(tmp_path, capsys, monkeypatch):
    out = tmp_path / "runs"
    run_dir = smoke_run_folder(out)
    run_dir.mkdir(parents=True)
    holder = hold_the_lock(run_dir)
    refuse_to_launch(monkeypatch)
    try:
        assert cli.main(smoke_arguments(SMOKE_CONFIG, out, "--nproc", "2")) == 2
    finally:
        holder.kill()
        holder.wait()
    assert capsys.readouterr().err == (
        f"sparcl-bench: error: {run_dir} is being run by another process (pid {holder.pid}); "
        "wait for it to finish, or use another --out\n"
    )


def test_another_runs_folder_is_refused_before_launching(tmp_path, capsys, monkeypatch):
    refuse_to_launch(monkeypatch)
    out = tmp_path / "runs"
    run_dir = smoke_run_folder(out)
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pkl").write_bytes(b"")
    write_run_record(run_dir, world_size=1)  # the one-process run's checkpoint
    assert cli.main(smoke_arguments(SMOKE_CONFIG, out, "--nproc", "2")) == 2
    assert capsys.readouterr().err == (
        f"sparcl-bench: error: {run_dir} holds an interrupted run of another configuration (differs in "
        "world_size); start it over with --restart, or use another --out\n"
    )


def test_a_run_folder_deleted_while_it_is_run_stays_held(tmp_path, capsys):
    out = tmp_path / "runs"
    run_dir = smoke_run_folder(out)
    run_dir.mkdir(parents=True)
    holder = hold_the_lock(run_dir)
    try:
        shutil.rmtree(out)  # run.lock with it
        assert cli.main(smoke_arguments(SMOKE_CONFIG, out)) == 2
    finally:
        holder.kill()
        holder.wait()
    assert capsys.readouterr().err == (
        f"sparcl-bench: error: {run_dir} is being run by another process (pid {holder.pid}); "
        "wait for it to finish, or use another --out\n"
    )
    assert not (run_dir / "run.json").exists()


def test_rank_zero_takes_the_folders_its_command_holds(tmp_path, monkeypatch):
    from avalanche_sparcl.experiments.run_folder import RunLock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = hold_the_lock(run_dir)
    try:
        monkeypatch.setenv(RUN_FOLDERS_HELD_BY, str(holder.pid))
        with RunLock(run_dir):
            pass
        monkeypatch.setenv(RUN_FOLDERS_HELD_BY, str(holder.pid + 1))
        with pytest.raises(cli.RunFolderError, match="is being run by another process"), RunLock(run_dir):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_nproc_runs_the_command_under_the_launcher_after_claiming_its_folders(monkeypatch, tmp_path, capsys):
    launched = []
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(
        launch, "run_tied", lambda command, environment: launched.append((command, environment)) or (7, None)
    )
    arguments = smoke_arguments(SMOKE_CONFIG, tmp_path, "--seeds", "0", "--nproc", "2")
    assert cli.main(arguments) == 7
    ((command, environment),) = launched
    worker_arguments = smoke_arguments(SMOKE_CONFIG, tmp_path, "--seeds", "0")
    assert command == [
        sys.executable,
        "-m",
        "avalanche_sparcl.experiments.launch",
        "launcher",
        "2",
        *worker_arguments,
    ]
    assert environment[RUN_FOLDERS_HELD_BY] == environment[launch.PARENT_PID] == str(os.getpid())
    run_dir = smoke_run_folder(tmp_path)
    assert sorted(path.name for path in run_dir.iterdir()) == ["run.json", "run.lock"]  # claimed
    assert capsys.readouterr().err == "sparcl-bench: error: a data-parallel process failed with exit code 7\n"


def test_torchs_launcher_runs_each_rank_as_this_module():
    arguments = torch_run.parse_args(launch.torch_launcher_arguments(2, ["run", "x.yaml", "--smoke"]))
    assert (arguments.nproc_per_node, arguments.standalone, arguments.module) == ("2", True, True)
    assert (arguments.training_script, arguments.training_script_args) == (
        "avalanche_sparcl.experiments.launch",
        ["rank", "run", "x.yaml", "--smoke"],
    )
    assert arguments.shutdown_timeout == launch.SHUTDOWN_TIMEOUT_S


def test_the_ranks_messages_are_recorded_and_printed_once(tmp_path, capsys):
    for rank, message in ((10, "error: bad"), (2, "training failed: nan (on another rank)"), (1, "")):
        recorder = launch.MessageRecorder(sys.stderr, tmp_path / f"rank{rank}")
        recorder.write("progress 1/2\n")
        for _ in range(2 if message else 0):
            print(f"sparcl-bench: {message}", file=recorder)  # as cli.main prints it
        recorder.write("a traceback line\n")
    assert capsys.readouterr().err == "progress 1/2\na traceback line\n" * 3
    assert launch.recorded_lines(tmp_path) == ["sparcl-bench: training failed: nan (on another rank)"]
    assert launch.recorded_lines(tmp_path / "nothing") == []


def test_the_collective_timeout_is_bounded_and_configurable(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv(launch.COLLECTIVE_TIMEOUT, raising=False)
    assert launch.collective_timeout().total_seconds() == 300
    monkeypatch.setenv(launch.COLLECTIVE_TIMEOUT, "2.5")
    assert launch.collective_timeout().total_seconds() == 2.5
    monkeypatch.setenv(launch.COLLECTIVE_TIMEOUT, "0")
    refuse_to_launch(monkeypatch)
    assert cli.main(smoke_arguments(SMOKE_CONFIG, tmp_path, "--nproc", "2")) == 2
    assert capsys.readouterr().err == (
        "sparcl-bench: error: SPARCL_COLLECTIVE_TIMEOUT_S must be a number of seconds > 0, got '0'\n"
    )


JOIN_ONE_PROCESS_GROUP = """
import socket, os
with socket.socket() as free:
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
import torch, torch.distributed as dist
from avalanche_sparcl.experiments.launch import join_process_group
join_process_group("cpu")
print(dist.group.WORLD._get_backend(torch.device("cpu")).options._timeout.total_seconds())
"""


def test_the_process_group_waits_for_a_collective_the_configured_time():
    environment = {**os.environ, launch.COLLECTIVE_TIMEOUT: "7"}
    done = subprocess.run(
        [sys.executable, "-c", JOIN_ONE_PROCESS_GROUP], env=environment, capture_output=True, text=True
    )
    assert (done.returncode, done.stdout) == (0, "7.0\n"), done.stderr
