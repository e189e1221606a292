"""The run folder: where a run lives, what it is called, whose it is, and who may use it.

A folder is only reused for the run that produced it: ``run.json`` (written before training) and
results.json carry the run's identity and fingerprint (see ``fingerprint``), a checkpoint is resumed
and a finished run skipped only on an equal fingerprint, and ``run.lock`` (with a lock keyed by the
folder's path outside it) keeps a second process out while one runs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from avalanche_sparcl.atomic_files import PARTIAL_SUFFIX
from avalanche_sparcl.checkpointing import write_text_atomically
from avalanche_sparcl.experiments.config import ExperimentConfig
from avalanche_sparcl.experiments.fingerprint import differing_keys, fingerprint
from avalanche_sparcl.experiments.options import RunOptions

CHECKPOINT_NAME = "checkpoint.pkl"
RESULTS_NAME = "results.json"
MODEL_NAME = "model.pt"
"""The trained model, weights-only, written just before results.json (see ``trained_model``)."""
RUN_NAME = "run.json"
"""The identity and fingerprint of the run a folder's checkpoint belongs to, written before training."""
LOCK_NAME = "run.lock"
LOGGER_FOLDERS = ("tensorboard", "csv")
WAYS_OUT = "start it over with --restart, or use another --out"

STRATEGY_LABELS = {"naive": "Naive", "er": "ER", "der": "DER++", "er_ace": "ER-ACE"}
METHOD_PREFIXES = {"sparcl": "SparCL", "static": "Static", "set": "SET", "rigl": "RigL"}


class RunFolderError(ValueError):
    """A run folder that cannot serve the requested run (another run's, damaged, or in use); the
    command line prints it as one line (exit 2)."""


def run_directory(config: ExperimentConfig, seed: int, out_dir: Path, smoke: bool = False) -> Path:
    """``<out>/<benchmark>/<config name>/seed_<seed>``: one folder per run; ``--smoke`` runs live
    under ``<out>/smoke/`` so they never pass for (or mix with) real ones."""
    base = Path(out_dir) / "smoke" if smoke else Path(out_dir)
    return base / config.benchmark["name"] / config.name / f"seed_{seed}"


def method_label(config: ExperimentConfig) -> str:
    """'DER++', 'SparCL-DER++ 0.75', 'RigL-DER++ 0.90', ...: the row name in tables and plots."""
    strategy = STRATEGY_LABELS[config.training["strategy"]]
    if config.method_kind == "dense":
        return strategy
    prefix = METHOD_PREFIXES[config.method_kind]
    suffix = ""
    if config.sparcl is not None:
        parts = [
            part
            for part, on in (
                ("TDM", config.sparsity > 0),
                ("DDR", config.sparcl["removal_ratio"] > 0),
                ("DGM", config.sparcl["gradient_sparsity"] > 0),
            )
            if on
        ]
        prefix = prefix if len(parts) == 3 else "+".join(parts)
        suffix = " masked head" if config.sparcl["masked_head"] else ""
        if not parts:  # a dense run with the masked head only
            return f"{strategy}{suffix}"
    return f"{prefix}-{strategy} {config.sparsity:.2f}{suffix}"


def run_labels(config: ExperimentConfig, seed: int, identity: dict[str, Any], device: str) -> dict[str, Any]:
    """The keys of results.json that say which run it is (the others say what it measured)."""
    return {
        "name": config.name,
        "method": method_label(config),
        "method_kind": config.method_kind,
        "benchmark": config.benchmark["name"],
        "strategy": config.training["strategy"],
        "buffer_size": config.training["buffer_size"],
        "sparsity": config.sparsity,
        "seed": seed,
        "smoke": identity["smoke"],
        "device": device,
        "config_path": str(config.path),
        "config": config.to_dict(),
        "identity": identity,
        "fingerprint": fingerprint(identity),
    }


def write_holder(descriptor: int) -> None:
    """Write this process's pid into the lock file, for the message another process gets."""
    os.ftruncate(descriptor, 0)
    os.lseek(descriptor, 0, os.SEEK_SET)
    os.write(descriptor, f"{os.getpid()}\n".encode())


RUN_FOLDERS_HELD_BY = "SPARCL_BENCH_RUN_FOLDERS_HELD_BY"
"""Set by ``sparcl-bench run --nproc`` for the processes it launches: the pid of the command, which
holds their run folders' locks (see ``launch``), so rank 0 takes a lock held by that pid as its own."""


def folder_key_lock(run_dir: Path) -> Path:
    """The lock file outside ``run_dir`` that holds it, keyed by its absolute path: deleting the run
    folder (and run.lock with it) while a run is going does not let a second process start on it."""
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    folder = Path(tempfile.gettempdir()) / f"sparcl-bench-locks-{user}"
    folder.mkdir(mode=0o700, exist_ok=True)
    key = hashlib.sha256(os.path.realpath(run_dir).encode("utf-8", "surrogateescape")).hexdigest()
    return folder / f"{key[:32]}.lock"


class RunLock:
    """Holds a run folder for one process, from before it reads the folder until the run ends.

    ``filelock`` locks on ``run.lock`` and on a file keyed by the folder's path outside it (in the
    temporary folder, see :func:`folder_key_lock`): OS locks, which are dropped however the process
    ends, so the files a killed run leaves behind (with the holder's pid, for the message) block
    nobody. Where the platform has no such lock, taking it raises instead of running unguarded.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.key_path = folder_key_lock(Path(run_dir))
        self.locks = [
            FileLock(path, timeout=0, preserve_lock_file=True, on_acquired=write_holder)
            for path in (self.key_path, self.path)
        ]

    def __enter__(self) -> RunLock:
        held_by_command = os.environ.get(RUN_FOLDERS_HELD_BY)
        for lock in self.locks:
            try:
                lock.acquire()
            except Timeout:
                try:
                    holder = Path(lock.lock_file).read_text().strip() or "unknown"
                except OSError:  # Windows: the holder's lock also keeps others from reading
                    holder = "unknown"
                if holder == held_by_command:
                    continue  # the command that launched this process holds the folder for it
                self.__exit__()
                raise RunFolderError(
                    f"{self.path.parent} is being run by another process (pid {holder}); "
                    "wait for it to finish, or use another --out"
                ) from None
        return self

    def __exit__(self, *exception: object) -> None:
        for lock in reversed(self.locks):
            lock.release()


def read_json_record(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path`` (None if there is no file); RunFolderError if it is damaged."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        problem = f"not valid JSON (not UTF-8 text: {error.reason})"
    except json.JSONDecodeError as error:
        problem = f"not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
    else:
        if isinstance(record, dict):
            return record
        problem = f"not a JSON object but a {type(record).__name__}"
    raise RunFolderError(f"{path}: {problem}; start the run over with --restart")


def finished_results(run_dir: Path) -> dict[str, Any] | None:
    """The results of a run that already finished (its results.json is written last), else None."""
    return read_json_record(run_dir / RESULTS_NAME)


def check_same_run(run_dir: Path, stored: dict[str, Any], identity: dict[str, Any], what: str) -> None:
    """RunFolderError unless ``stored`` (run.json or results.json) has the requested fingerprint."""
    if "fingerprint" not in stored:
        raise RunFolderError(
            f"{run_dir} holds {what} without a fingerprint, so what produced it is unknown; {WAYS_OUT}"
        )
    if stored["fingerprint"] == fingerprint(identity):
        return
    keys = differing_keys(stored.get("identity") or {}, identity) or ["fingerprint"]
    raise RunFolderError(
        f"{run_dir} holds {what} of another configuration (differs in {', '.join(keys)}); {WAYS_OUT}"
    )


def clear_run_folder(run_dir: Path) -> None:
    """Remove what an earlier run wrote (results, checkpoint, identity, logs), before a fresh start."""
    for name in (RESULTS_NAME, CHECKPOINT_NAME, MODEL_NAME, RUN_NAME):
        (run_dir / name).unlink(missing_ok=True)
    for leftover in run_dir.glob(f"*{PARTIAL_SUFFIX}"):
        leftover.unlink(missing_ok=True)
    for name in LOGGER_FOLDERS:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)


def claim_run_folder(
    run_dir: Path, identity: dict[str, Any], options: RunOptions, folder_held: contextlib.ExitStack
) -> tuple[dict[str, Any] | None, bool]:
    """Lock ``run_dir`` for the run (until ``folder_held`` closes) and say what to do: the finished
    run's results (nothing to train), or whether to resume from its checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    folder_held.enter_context(RunLock(run_dir))
    if not options.restart and (done := finished_results(run_dir)) is not None:
        check_same_run(run_dir, done, identity, "a finished run")
        return done, False
    resume = not options.restart and (run_dir / CHECKPOINT_NAME).is_file()
    if resume:
        stored = read_json_record(run_dir / RUN_NAME)
        if stored is None:
            raise RunFolderError(
                f"{run_dir} holds a {CHECKPOINT_NAME} without {RUN_NAME}, so what produced it is "
                f"unknown; {WAYS_OUT}"
            )
        check_same_run(run_dir, stored, identity, "an interrupted run")
    else:
        clear_run_folder(run_dir)
        record = {"identity": identity, "fingerprint": fingerprint(identity)}
        write_text_atomically(run_dir / RUN_NAME, json.dumps(record, indent=2, allow_nan=True) + "\n")
    return None, resume
