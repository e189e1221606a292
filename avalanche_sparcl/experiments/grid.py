"""The grid of runs one ``sparcl-bench run`` command makes (configs x seeds): their folders, checked
for clashes before anything trains, and one progress line per finished run with the time left."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from avalanche_sparcl.experiments.config import ConfigError, ExperimentConfig
from avalanche_sparcl.experiments.run_folder import RESULTS_NAME, run_directory


@dataclass(frozen=True)
class GridRun:
    """One run of the grid: a config, a seed and the folder it runs in."""

    config: ExperimentConfig
    seed: int
    folder: Path


def grid_runs(
    configs: Sequence[ExperimentConfig], seeds: Sequence[int], out: Path, smoke: bool
) -> list[GridRun]:
    """Every run of the command, in the order they run; ConfigError if two would share a folder.

    Checked before anything trains: otherwise the second of two configs with the same benchmark and
    name would be refused only after the first trained, or, with ``--restart``, would delete the
    first one's results and both would report success for one folder.
    """
    repeated = sorted({seed for seed in seeds if list(seeds).count(seed) > 1})
    if repeated:
        raise ConfigError(f"--seeds gives seed {repeated[0]} more than once; each seed runs once per config")
    runs: list[GridRun] = []
    owners: dict[Path, ExperimentConfig] = {}
    for config in configs:
        for seed in seeds:
            folder = run_directory(config, seed, out, smoke)
            other = owners.setdefault(folder, config)
            if other is not config:
                if other.path.resolve() == config.path.resolve():
                    raise ConfigError(f"{config.path} is given twice; each config runs once per seed")
                raise ConfigError(
                    f"{other.path} and {config.path} both run in {folder.parent} (benchmark "
                    f"{config.benchmark['name']}, name {config.name!r}); give one of them another 'name'"
                )
            runs.append(GridRun(config, seed, folder))
    return runs


CLOCK: Callable[[], float] = time.monotonic
"""What ``GridProgress`` measures runs with (a test puts a fake clock here)."""


def duration_text(seconds: float) -> str:
    """'42s', '4m10s' or '2h05m': a time left, short enough for the end of a line."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class GridProgress:
    """'[3/12, ETA 4m10s]' after each finished run of a grid.

    The time left is the mean duration of the runs trained so far times the runs still to train.
    Runs whose folder already holds results (skipped unless ``--restart``) count as done but take no
    time, so they stay out of both, and the estimate is not dragged down by them.
    """

    def __init__(self, trains: Sequence[bool], clock: Callable[[], float] | None = None) -> None:
        self.trains = list(trains)
        self.clock = CLOCK if clock is None else clock
        self.trained_seconds: list[float] = []
        self.done = 0
        self.started = self.clock()

    def start_run(self) -> None:
        """Mark the start of the next run."""
        self.started = self.clock()

    def finish_run(self) -> str:
        """Mark the end of the current run; the progress text for its line."""
        if self.trains[self.done]:
            self.trained_seconds.append(self.clock() - self.started)
        self.done += 1
        text = f"[{self.done}/{len(self.trains)}"
        to_train = sum(self.trains[self.done :])
        if to_train and self.trained_seconds:
            mean = sum(self.trained_seconds) / len(self.trained_seconds)
            text += f", ETA {duration_text(mean * to_train)}"
        return text + "]"


def trains(run: GridRun, restart: bool) -> bool:
    """Whether the run will train (its folder holds no results.json, or ``--restart``)."""
    return restart or not (run.folder / RESULTS_NAME).is_file()
