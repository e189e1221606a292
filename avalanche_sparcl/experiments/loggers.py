"""Avalanche's CSV and TensorBoard loggers, made to survive a checkpoint.

Avalanche's own reopen their files when unpickled: the CSV files are truncated and a new event file
starts next to the old one, which still holds the events of the interrupted experience. The ones here
cut their files back to their length at checkpoint time and continue them, so a resumed run's logs
hold what an uninterrupted run's hold.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

from avalanche.logging import CSVLogger, TensorboardLogger
from tensorboard.summary.writer.event_file_writer import EventFileWriter, _AsyncWriter
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.writer import FileWriter

from avalanche_sparcl.distributed import rank


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


class AppendingEventFileWriter(EventFileWriter):
    """TensorBoard's event file writer, continuing an existing event file.

    Its base class always starts a new file (and writes a file-version event into it); this one
    only appends records to ``event_file``, the way the base class writes them.
    """

    def __init__(self, event_file: Path, max_queue_size: int = 10, flush_secs: int = 120) -> None:
        self._logdir = str(event_file.parent)
        self._file_name = str(event_file)
        self._general_file_writer = open(event_file, "ab")  # noqa: SIM115 (closed by close())
        self._async_writer = _AsyncWriter(RecordWriter(self._general_file_writer), max_queue_size, flush_secs)


class AppendingSummaryWriter(SummaryWriter):
    """torch's SummaryWriter, writing into one existing event file instead of a new one."""

    def __init__(self, event_file: Path, filename_suffix: str = "") -> None:
        self.event_file = Path(event_file)
        super().__init__(str(self.event_file.parent), filename_suffix=filename_suffix)

    def _get_file_writer(self) -> FileWriter:
        if self.all_writers is None or self.file_writer is None:
            file_writer = FileWriter.__new__(FileWriter)  # its __init__ would start a new event file
            file_writer.event_writer = AppendingEventFileWriter(
                self.event_file, self.max_queue, self.flush_secs
            )
            self.file_writer = file_writer
            self.all_writers = {file_writer.get_logdir(): file_writer}
        return self.file_writer


class ResumableTensorboardLogger(TensorboardLogger):
    """Avalanche's TensorboardLogger, whose event file survives a checkpoint.

    Avalanche's own opens a new event file when unpickled, next to the old one, which still holds the
    events of the interrupted experience: TensorBoard then shows that experience twice. This one cuts
    its file back to its length at checkpoint time and continues it, as ResumableCSVLogger does.
    """

    def __getstate__(self) -> dict[str, Any]:
        self.writer.flush()
        event_file = Path(self.writer._get_file_writer().event_writer._file_name)
        return {
            "event_file": str(event_file),
            "length": event_file.stat().st_size,
            "filename_suffix": self.writer.filename_suffix,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        event_file = Path(state["event_file"])
        if rank() != 0:  # data-parallel: the file is rank 0's; this copy is dropped (train_and_evaluate)
            return
        if event_file.is_file() and event_file.stat().st_size >= state["length"]:
            with open(event_file, "ab") as stream:
                stream.truncate(state["length"])
            self.writer = AppendingSummaryWriter(event_file, state["filename_suffix"])
            weakref.finalize(self, SummaryWriter.close, self.writer)
        else:  # the file was removed or cut short since: start a new one
            self.writer = self._make_writer(event_file.parent, state["filename_suffix"])
