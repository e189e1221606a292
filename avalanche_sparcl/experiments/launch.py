"""``sparcl-bench run --nproc N``: the command run again in N processes, tied to the command's life.

The processes: the command -> the launcher (``python -m avalanche_sparcl.experiments.launch launcher``,
torch's elastic agent, in a session of its own) -> N ranks (``... launch rank``, each in a session of
its own, as torch starts them). What ties them:

- Signals: the command forwards SIGINT, SIGTERM and SIGHUP to the launcher (as SIGTERM, which torch's
  agent passes on to the ranks) and waits for it, so it returns only once no rank is left.
- A parent that dies: the launcher and each rank ask the kernel to signal them when their parent ends
  (``PR_SET_PDEATHSIG`` on Linux; elsewhere a thread polls the parent's pid), so a command killed with
  SIGKILL, or a killed launcher, leaves no rank training on its own.
- A rank that stops: every collective gives up after ``SPARCL_COLLECTIVE_TIMEOUT_S`` seconds (default
  300; torch's own default is 30 minutes), so the other ranks fail and the launcher ends the run.
- Errors: the command locks and checks every run folder before launching and holds them until the
  launcher ends (rank 0 takes them as its command's, see ``run_folder.RunLock``). The lines the ranks
  print as ``sparcl-bench: ...`` (a user error, a failed training) are recorded, not printed, and the
  command prints them once (rank 0's, or the lowest rank's that has any) and exits with the ranks'
  exit code; torch's failure report is not shown.

Only the standard library is imported at module level: the ranks set up their tie to the launcher
before importing torch and Avalanche, which takes seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from avalanche_sparcl.experiments.grid import GridRun
    from avalanche_sparcl.experiments.options import RunOptions

MODULE = "avalanche_sparcl.experiments.launch"
PARENT_PID = "SPARCL_BENCH_PARENT_PID"
"""The pid a launched process expects as its parent: if it has another one, its parent already died."""
MESSAGES = "SPARCL_BENCH_MESSAGES"
"""The folder where each rank records its ``sparcl-bench: ...`` lines for the command to print once."""
COLLECTIVE_TIMEOUT = "SPARCL_COLLECTIVE_TIMEOUT_S"
DEFAULT_COLLECTIVE_TIMEOUT_S = 300.0
MESSAGE_PREFIX = "sparcl-bench: "
FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
SHUTDOWN_TIMEOUT_S = 5
"""How long torch's agent waits for a rank to end after SIGTERM before it sends SIGKILL (torch: 30 s);
a rank has nothing to save on the way out (every file it writes is replaced atomically)."""
PR_SET_PDEATHSIG = 1


def collective_timeout() -> timedelta:
    """How long a collective waits for the other ranks: ``SPARCL_COLLECTIVE_TIMEOUT_S`` (seconds,
    default 300), so that a rank that stops or hangs ends the run in minutes, not torch's 30."""
    from avalanche_sparcl.experiments.config import ConfigError

    text = os.environ.get(COLLECTIVE_TIMEOUT)
    if text is None:
        return timedelta(seconds=DEFAULT_COLLECTIVE_TIMEOUT_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < 1e9:
        raise ConfigError(f"{COLLECTIVE_TIMEOUT} must be a number of seconds > 0, got {text!r}")
    return timedelta(seconds=seconds)


def join_process_group(device: str) -> None:
    """Join the launcher's process group: gloo on CPU, NCCL (one GPU per process) on CUDA, with
    collectives bounded by :func:`collective_timeout`."""
    import torch.distributed as dist
    from avalanche.distributed import DistributedHelper, distributed_helper

    timeout = collective_timeout()
    use_cuda = device == "cuda"

    def init_process_group(*args: Any, **kwargs: Any) -> None:
        dist.init_process_group(*args, **kwargs, timeout=timeout)

    # Avalanche 0.6's init_distributed takes no timeout: give its call of init_process_group one
    original = distributed_helper.init_process_group
    distributed_helper.init_process_group = init_process_group
    try:
        DistributedHelper.init_distributed(0, backend="nccl" if use_cuda else "gloo", use_cuda=use_cuda)
    finally:
        distributed_helper.init_process_group = original


def without_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` less its ``--nproc N`` or ``--nproc=N``."""
    kept: list[str] = []
    skip_value = False
    for argument in argv:
        if skip_value:
            skip_value = False
        elif argument == "--nproc":
            skip_value = True
        elif not argument.startswith("--nproc="):
            kept.append(argument)
    return kept


def launcher_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """The launcher's command line; the ranks get ``argv`` without ``--nproc`` (and know they are
    ranks from torch's ``LOCAL_RANK``)."""
    return [sys.executable, "-m", MODULE, "launcher", str(nproc), *without_nproc(argv)]


def torch_launcher_arguments(nproc: int, argv: Sequence[str]) -> list[str]:
    """What the launcher gives torch's ``torch.distributed.run``: ``nproc`` ranks on this machine,
    each running ``argv`` (the command's arguments) as a rank of this module."""
    return [
        "--standalone",
        f"--nproc_per_node={nproc}",
        f"--shutdown_timeout={SHUTDOWN_TIMEOUT_S}",
        "--signals_to_handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT",
        "-m",
        MODULE,
        "rank",
        *argv,
    ]


def launch_processes(
    nproc: int,
    argv: Sequence[str],
    runs: Sequence[GridRun],
    options: RunOptions,
) -> int:
    """Run the command in ``nproc`` processes and wait for all of them; the exit code.

    Each run folder is claimed and checked here first (a locked, another run's or a damaged folder
    exits 2 before anything starts), and held until the ranks are done.
    """
    from avalanche_sparcl.experiments.fingerprint import run_identity
    from avalanche_sparcl.experiments.run_folder import RUN_FOLDERS_HELD_BY, claim_run_folder

    collective_timeout()  # a bad value is a user error before launching
    with contextlib.ExitStack() as held, tempfile.TemporaryDirectory(prefix="sparcl-bench-") as messages:
        for run in runs:
            claim_run_folder(run.folder, run_identity(run.config, options.smoke, nproc), options, held)
        environment = {
            **os.environ,
            PARENT_PID: str(os.getpid()),
            RUN_FOLDERS_HELD_BY: str(os.getpid()),
            MESSAGES: messages,
        }
        code, received = run_tied(launcher_command(nproc, argv), environment)
        lines = recorded_lines(Path(messages))
    for line in lines:
        print(line, file=sys.stderr)
    if received == signal.SIGINT:
        raise KeyboardInterrupt
    if received is not None:
        return 128 + received
    if code != 0 and not lines:
        print(f"{MESSAGE_PREFIX}error: {describe_exit(code)}", file=sys.stderr)
    return code


def describe_exit(code: int) -> str:
    """What a data-parallel run's exit code says, when no rank said why."""
    if code > 128 and code - 128 in signal.valid_signals():
        return f"a data-parallel process was ended by {signal.Signals(code - 128).name}"
    return f"a data-parallel process failed with exit code {code}"


def run_tied(command: list[str], environment: dict[str, str]) -> tuple[int, int | None]:
    """Run ``command`` in a session of its own and wait for it, forwarding SIGINT, SIGTERM and SIGHUP
    to it as SIGTERM; its exit code (128 + N for a signal N) and the signal received, if any."""
    received: list[int] = []
    process: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for name in FORWARDED_SIGNALS:
            if hasattr(signal, name):
                previous[getattr(signal, name)] = signal.signal(getattr(signal, name), forward)
    try:
        process = subprocess.Popen(command, env=environment, start_new_session=True)
        if received:  # a signal came before there was a process to forward it to
            process.terminate()
        code = process.wait()
    finally:
        if process is not None and process.poll() is None:  # only on an exception while waiting
            process.terminate()
            process.wait()
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
    return (128 - code if code < 0 else code), (received[0] if received else None)


def recorded_lines(folder: Path) -> list[str]:
    """The lines recorded by the lowest rank that recorded any, each once: every rank meets the same
    error (a decision of rank 0's, or one all ranks agree on), worded for the rank that saw it first."""
    files = sorted(folder.glob("rank*"), key=lambda path: int(path.name[len("rank") :]))
    for path in files:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        if lines:
            return list(dict.fromkeys(lines))
    return []


def die_with_parent(signum: int) -> None:
    """Have this process get ``signum`` when its parent ends, and end now if it already has (it was
    started by ``PARENT_PID``): a launched process never outlives the one that started it."""
    expected = os.environ.get(PARENT_PID)
    if not (sys.platform.startswith("linux") and _set_parent_death_signal(signum)):
        parent = os.getppid()
        threading.Thread(target=_watch_parent, args=(parent, signum), daemon=True).start()
    if expected is not None and os.getppid() != int(expected):
        os.kill(os.getpid(), signum)


def _set_parent_death_signal(signum: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, signum: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signum)


class MessageRecorder:
    """A rank's stderr: the command's own one-line messages (``sparcl-bench: ...``) go to a file, for
    the command to print once for all ranks; everything else (progress, warnings, tracebacks) passes
    through."""

    def __init__(self, stream: TextIO, path: Path) -> None:
        self.stream = stream
        self.path = path
        self.line: str | None = None  # the recorded line being written
        self.at_line_start = True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            if self.line is None and self.at_line_start and piece.startswith(MESSAGE_PREFIX):
                self.line = ""
            if self.line is None:
                self.stream.write(piece)
            else:
                self.line += piece
                if piece.endswith("\n"):
                    with open(self.path, "a", encoding="utf-8") as record:
                        record.write(self.line)
                    self.line = None
            self.at_line_start = piece.endswith("\n")
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def launcher_main(nproc: int, argv: list[str]) -> int:
    """The launcher: torch's elastic agent running ``nproc`` ranks; exits with the first failed
    rank's exit code, without torch's failure report."""
    die_with_parent(signal.SIGTERM)
    os.environ[PARENT_PID] = str(os.getpid())  # what the ranks check
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # what torch's launcher sets, without its banner
    import logging

    from torch.distributed import run as torch_run
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)  # the command reports failures
    try:
        torch_run.run(torch_run.parse_args(torch_launcher_arguments(nproc, argv)))
    except ChildFailedError as failed:
        codes = [failed.failures[rank].exitcode for rank in sorted(failed.failures)]
        code = next((code for code in codes if code > 0), codes[0] if codes else 1)
        return 128 - code if code < 0 else code
    except SignalException as stopped:
        return 128 + int(stopped.sigval)
    return 0


def rank_main(argv: list[str]) -> int:
    """A rank: ``sparcl-bench`` itself, ended with its launcher, its own messages recorded."""
    die_with_parent(signal.SIGKILL)
    if MESSAGES in os.environ:
        path = Path(os.environ[MESSAGES]) / f"rank{os.environ.get('RANK', '0')}"
        sys.stderr = MessageRecorder(sys.stderr, path)  # type: ignore[assignment]
    from avalanche_sparcl.experiments.cli import TRAINING_FAILED, main

    try:
        return main(argv)
    except RuntimeError as error:  # torch raises its collective timeouts as RuntimeError
        if "timeout" not in str(error).lower() and "timed out" not in str(error).lower():
            raise
        print(
            f"{MESSAGE_PREFIX}training failed: rank {os.environ.get('RANK', '?')} waited more than "
            f"{collective_timeout().total_seconds():g} s ({COLLECTIVE_TIMEOUT}) for the other ranks, so one "
            f"of them stopped or hangs ({str(error).strip()}); the last checkpoint is kept",
            file=sys.stderr,
        )
        # Python's normal exit tears down the process group, whose broken gloo pairs can end the rank in
        # std::terminate (SIGABRT, "terminate called without an active exception") instead of this code
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(TRAINING_FAILED)


if __name__ == "__main__":
    if sys.argv[1] == "launcher":
        sys.exit(launcher_main(int(sys.argv[2]), sys.argv[3:]))
    sys.exit(rank_main(sys.argv[2:]))
