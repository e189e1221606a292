"""Avalanche's CSV and TensorBoard loggers, made to survive a checkpoint.

Avalanche's own reopen their files when unpickled: the CSV files are truncated and a new event file
starts next to the old one, which still holds the events of the interrupted experience. The ones here
cut their files back to their length at checkpoint time, so a resumed run's logs hold what an
uninterrupted run's hold.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

from avalanche.logging import CSVLogger, TensorboardLogger
from torch.utils.tensorboard import SummaryWriter

from avalanche_sparcl.distributed import rank

EVENT_FILES = "events.out.tfevents.*"


class ResumableCSVLogger(CSVLogger):
    """Avalanche's CSVLogger, whose files are appended to on resume, not truncated.

    Each file is first cut back to its length at checkpoint time, dropping the rows of the interrupted
    experience, which is trained again.
    """

    FILES = {"training_file": "training_results.csv", "eval_file": "eval_results.csv"}

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
        if rank() != 0:  # data-parallel: the files are rank 0's; this copy is dropped (train_and_evaluate)
            return
        for attribute, file_name in self.FILES.items():
            path = Path(self.log_folder) / file_name
            with open(path, "a") as stream:
                stream.truncate(lengths[attribute])
            setattr(self, attribute, open(path, "a"))  # noqa: SIM115


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
        if rank() != 0:  # data-parallel: the files are rank 0's; this copy is dropped (train_and_evaluate)
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
