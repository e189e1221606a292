"""Loggers for your own Avalanche scripts: resumable CSV and TensorBoard logs, and a CSV of SparCL's metrics.

Avalanche's ``CSVLogger`` and ``TensorboardLogger`` reopen their files when a checkpoint is loaded
(``avalanche.checkpointing.maybe_load_checkpoint``): the CSV files are truncated and a new event file
starts next to the old one, which still holds the events of the interrupted experience. The loggers
here cut their files back to their length at checkpoint time, so a resumed run's logs hold what an
uninterrupted run's hold: no row lost, no point twice.

``SparCLCSVLogger`` writes what Avalanche's CSV logger leaves out: training FLOPs, weight and gradient
sparsity and the kept share of the data, per epoch and per experience (from the metrics of
``avalanche_sparcl.metrics``; a metric that is not in the evaluator leaves its column empty).
"""

from __future__ import annotations

import csv
import weakref
from pathlib import Path
from typing import Any, TextIO

from avalanche.logging import BaseLogger, CSVLogger, TensorboardLogger
from torch.utils.tensorboard import SummaryWriter

from avalanche_sparcl.distributed import rank

EVENT_FILES = "events.out.tfevents.*"


class ResumableFiles:
    """Pickles an open file attribute as its length, and on unpickling cuts the file back to it and
    reopens it for appending (the rows written after the checkpoint belong to the interrupted
    experience, which is trained again)."""

    FILES: dict[str, str] = {}
    """Attribute holding an open text file -> its name in ``log_folder``."""

    log_folder: str | Path

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["file_lengths"] = {}
        for attribute in self.FILES:
            stream = getattr(self, attribute)
            stream.flush()
            state["file_lengths"][attribute] = stream.tell()
            state[attribute] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        lengths = state.pop("file_lengths")
        self.__dict__.update(state)
        if rank() != 0:  # data-parallel: the files are rank 0's; this copy is dropped
            return
        for attribute, file_name in self.FILES.items():
            path = Path(self.log_folder) / file_name
            with open(path, "a") as stream:
                stream.truncate(lengths[attribute])
            setattr(self, attribute, open(path, "a"))  # noqa: SIM115


class ResumableCSVLogger(ResumableFiles, CSVLogger):
    """Avalanche's CSVLogger (``training_results.csv``, ``eval_results.csv``), whose files are appended
    to on resume, not truncated."""

    FILES = {"training_file": "training_results.csv", "eval_file": "eval_results.csv"}


EPOCH_COLUMNS = (
    "training_exp",
    "epoch",
    "iteration",
    "train_flops",
    "weight_sparsity",
    "gradient_sparsity",
    "kept_data",
)
EXPERIENCE_COLUMNS = (
    "training_exp",
    "iteration",
    "train_flops",
    "train_flops_total",
    "weight_sparsity",
    "kept_data",
)
EPOCH_METRICS = {
    "TrainFLOPs_Epoch": "train_flops",
    "WeightSparsity": "weight_sparsity",
    "GradientSparsity": "gradient_sparsity",
    "KeptData_Epoch": "kept_data",
}
EXPERIENCE_METRICS = {
    "TrainFLOPs_Exp": "train_flops",
    "TrainFLOPs_Total": "train_flops_total",
    "KeptData_Exp": "kept_data",
}


class SparCLCSVLogger(ResumableFiles, BaseLogger):
    """SparCL's metrics as CSV, resumable like :class:`ResumableCSVLogger`.

    ``sparcl_epochs.csv``: one row per training epoch with that epoch's training FLOPs
    (``TrainFLOPs_Epoch``, from ``flops_metrics(epoch=True)``), the weight sparsity at its end, the
    share of zero gradient entries applied in it and the kept share of the experience's data.
    ``sparcl_experiences.csv``: one row per training experience with its FLOPs (passes made when it
    ends included), the run's FLOPs so far, the weight sparsity at its end and the mean kept share.
    """

    FILES = {"epoch_file": "sparcl_epochs.csv", "experience_file": "sparcl_experiences.csv"}

    def __init__(self, log_folder: str | Path = "csvlogs") -> None:
        super().__init__()
        self.log_folder = str(log_folder)
        Path(self.log_folder).mkdir(parents=True, exist_ok=True)
        self.epoch_file = self._start(self.FILES["epoch_file"], EPOCH_COLUMNS)
        self.experience_file = self._start(self.FILES["experience_file"], EXPERIENCE_COLUMNS)
        self.last_weight_sparsity: float | None = None

    def _start(self, file_name: str, columns: tuple[str, ...]) -> TextIO:
        stream = open(Path(self.log_folder) / file_name, "w", newline="")  # noqa: SIM115
        csv.writer(stream).writerow(columns)
        stream.flush()
        return stream

    def log_single_metric(self, name: str, value: Any, x_plot: int) -> None:
        """Rows are written from the epoch and experience callbacks, not per value."""

    def after_training_epoch(self, strategy: Any, metric_values: list[Any], **kwargs: Any) -> None:
        row = self._values(metric_values, EPOCH_METRICS)
        if row.get("weight_sparsity") is not None:
            self.last_weight_sparsity = row["weight_sparsity"]
        row.update(
            training_exp=strategy.experience.current_experience,
            epoch=strategy.clock.train_exp_epochs,
            iteration=strategy.clock.train_iterations,
        )
        self._write(self.epoch_file, EPOCH_COLUMNS, row)

    def after_training_exp(self, strategy: Any, metric_values: list[Any], **kwargs: Any) -> None:
        row = self._values(metric_values, EXPERIENCE_METRICS)
        row.update(
            training_exp=strategy.experience.current_experience,
            iteration=strategy.clock.train_iterations,
            weight_sparsity=self.last_weight_sparsity,
        )
        self._write(self.experience_file, EXPERIENCE_COLUMNS, row)

    @staticmethod
    def _values(metric_values: list[Any], columns: dict[str, str]) -> dict[str, Any]:
        """The values of this callback's metrics, by column (the name's part before the first '/')."""
        row: dict[str, Any] = {}
        for metric_value in metric_values:
            column = columns.get(metric_value.name.split("/", 1)[0])
            if column is not None:
                row[column] = float(metric_value.value)
        return row

    @staticmethod
    def _write(stream: TextIO, columns: tuple[str, ...], row: dict[str, Any]) -> None:
        csv.writer(stream).writerow(["" if row.get(column) is None else row[column] for column in columns])
        stream.flush()

    def close(self) -> None:
        self.epoch_file.close()
        self.experience_file.close()


class ResumableTensorboardLogger(TensorboardLogger):
    """Avalanche's TensorboardLogger, continuing its run's steps on resume without repeating any.

    On resume the event files are cut back to their length at checkpoint time (event files started
    after it are removed), and a new one is started with ``purge_step`` just past the last step logged
    before the checkpoint, so TensorBoard also discards any later events it still finds.
    """

    def __init__(self, tb_log_dir: str | Path = "./tb_data", filename_suffix: str = "") -> None:
        self.last_step: int | None = None
        super().__init__(tb_log_dir, filename_suffix)

    def log_single_metric(self, name: str, value: Any, x_plot: int) -> None:
        """Avalanche's, remembering the last step so a resumed run knows where to continue."""
        super().log_single_metric(name, value, x_plot)
        self.last_step = x_plot if self.last_step is None else max(self.last_step, x_plot)

    def __getstate__(self) -> dict[str, Any]:
        self.writer.flush()
        log_dir = Path(self.writer.get_logdir())
        return {
            "log_dir": str(log_dir),
            "file_lengths": {path.name: path.stat().st_size for path in log_dir.glob(EVENT_FILES)},
            "filename_suffix": self.writer.filename_suffix,
            "last_step": self.last_step,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "event_file" in state:  # a checkpoint of the version that continued one event file
            event_file = Path(state["event_file"])
            state = {
                "log_dir": str(event_file.parent),
                "file_lengths": {event_file.name: state["length"]},
                "filename_suffix": state["filename_suffix"],
                "last_step": None,
            }
        self.last_step = state["last_step"]
        if rank() != 0:  # data-parallel: the files are rank 0's; this copy is dropped
            return
        log_dir = Path(state["log_dir"])
        log_dir.mkdir(parents=True, exist_ok=True)
        lengths = state["file_lengths"]
        for path in log_dir.glob(EVENT_FILES):
            if path.name not in lengths:  # started after the checkpoint: only events it does not know of
                path.unlink()
            elif path.stat().st_size > lengths[path.name]:
                with open(path, "ab") as stream:
                    stream.truncate(lengths[path.name])
        purge_step = None if self.last_step is None else self.last_step + 1
        self.writer = SummaryWriter(
            str(log_dir), filename_suffix=state["filename_suffix"], purge_step=purge_step
        )
        weakref.finalize(self, SummaryWriter.close, self.writer)
