"""The results record of one run (results.json), declared once for the runner, the report and the tests.

The runner writes exactly these fields; the report reads the ones marked ``reported`` and checks their
JSON types, so a damaged or foreign file gives one line naming the field instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avalanche_sparcl.experiments.config import ConfigError
from avalanche_sparcl.experiments.run_folder import RESULTS_NAME

__all__ = [
    "NESTED_FIELDS",
    "NUMBER",
    "RESULTS_NAME",
    "RESULT_FIELDS",
    "ResultField",
    "read_results",
    "results_record",
]
NUMBER = (int, float)


@dataclass(frozen=True)
class ResultField:
    """One field of results.json: its JSON types and whether the report reads it."""

    types: tuple[type, ...]
    reported: bool = False


RESULT_FIELDS: dict[str, ResultField] = {
    # which run it is (run_folder.run_labels)
    "name": ResultField((str,), reported=True),
    "method": ResultField((str,), reported=True),
    "method_kind": ResultField((str,), reported=True),
    "benchmark": ResultField((str,), reported=True),
    "strategy": ResultField((str,), reported=True),
    "buffer_size": ResultField((int, type(None)), reported=True),
    "sparsity": ResultField(NUMBER, reported=True),
    "seed": ResultField((int,), reported=True),
    "smoke": ResultField((bool,), reported=True),
    "device": ResultField((str,)),
    "config_path": ResultField((str,)),
    "config": ResultField((dict,)),
    "identity": ResultField((dict,)),
    "fingerprint": ResultField((str,)),
    "versions": ResultField((dict,)),
    "machine": ResultField((dict,)),
    # what it measured
    "class_il_accuracy": ResultField(NUMBER, reported=True),
    "task_il_accuracy": ResultField(NUMBER, reported=True),
    "class_il_forgetting": ResultField(NUMBER, reported=True),
    "task_il_forgetting": ResultField(NUMBER),
    "accuracy_matrix": ResultField((dict,), reported=True),
    "world_size": ResultField((int,)),
    "mask_digests": ResultField((list,)),
    "train_flops": ResultField(NUMBER, reported=True),
    "train_flops_after_experience": ResultField((list,)),
    "train_iterations": ResultField((int,)),
    "wall_time_s": ResultField(NUMBER),
    "train_time_s": ResultField(NUMBER),
    "weight_sparsity": ResultField(NUMBER, reported=True),
    "kept_data": ResultField(NUMBER, reported=True),
    "curves": ResultField((dict,), reported=True),
}
"""Every field of results.json, in the order the runner writes them."""
NESTED_FIELDS = {"accuracy_matrix": ("class_il", "task_il"), "curves": ("kept_data", "weight_sparsity")}


def results_record(values: dict[str, Any]) -> dict[str, Any]:
    """The record in field order; a field missing or unknown is the runner's bug, raised as such."""
    unknown, missing = set(values) - set(RESULT_FIELDS), set(RESULT_FIELDS) - set(values)
    if unknown or missing:
        raise RuntimeError(f"results record: unknown fields {sorted(unknown)}, missing {sorted(missing)}")
    return {name: values[name] for name in RESULT_FIELDS}


def read_regular_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file; a ConfigError otherwise.

    Opened without blocking and checked on the open descriptor: reading a named pipe called
    results.json would wait forever for a writer, and a device could be endless.
    """
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{path}: not a regular file ({file_kind(mode)}); a results.json is a file")
        os.set_blocking(descriptor, True)
        with os.fdopen(descriptor, "rb", closefd=False) as stream:
            return stream.read()
    finally:
        os.close(descriptor)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words, for the refusal's message."""
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def read_results(path: Path) -> dict[str, Any]:
    """One results.json, checked enough that the report cannot crash on it; else a one-line ConfigError."""
    try:
        run = json.loads(read_regular_file(path).decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON (not UTF-8 text: {error.reason})") from None
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
            "an interrupted copy? run the config again or delete the file"
        ) from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    if not isinstance(run, dict):
        raise ConfigError(f"{path}: not a JSON object (a results.json holds one)")
    reported = {name: field for name, field in RESULT_FIELDS.items() if field.reported}
    needed = list(reported) + ([] if "fingerprint" in run or "identity" in run else ["config"])
    missing = sorted(key for key in needed if key not in run)
    if missing:
        raise ConfigError(f"{path}: missing keys {', '.join(missing)}")
    for key, field in reported.items():
        value, types = run[key], field.types
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = "a number" if types == NUMBER else " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{path}: {key}: expected {expected}, got {value!r}")
    for key, nested in NESTED_FIELDS.items():
        missing = sorted(name for name in nested if name not in run[key])
        if missing:
            raise ConfigError(f"{path}: {key}: missing keys {', '.join(missing)}")
    return run


@dataclass
class MethodSummary:
    """All seeds of one run identity (one fingerprint): the same config, smoke or not."""

    benchmark: str
    name: str
    method: str
    method_kind: str
    strategy: str
    buffer_size: int | None
    sparsity: float
    runs: list[dict[str, Any]]
    fingerprint: str = ""
    smoke: bool = False
    paths: list[Path] = dataclasses.field(default_factory=list)
    label: str = ""
    """The row name: ``method``, made unique among the rows by ``report.assign_labels``."""
    key: str = ""
    """File name stem of its plots, made unique by ``report.assign_labels``."""

    def values(self, field: str) -> list[float]:
        return [float(run[field]) for run in self.runs]

    def mean(self, field: str) -> float:
        return statistics.fmean(self.values(field))

    def std(self, field: str) -> float:
        values = self.values(field)
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def mean_matrix(self, kind: str) -> np.ndarray:
        return np.mean([np.array(run["accuracy_matrix"][kind], dtype=float) for run in self.runs], axis=0)
