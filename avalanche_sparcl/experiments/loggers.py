"""Avalanche's CSV and TensorBoard loggers, made to survive a checkpoint.

Avalanche's own reopen their files when unpickled: the CSV files are truncated and a new event file
starts next to the old one, which still holds the events of the interrupted experience. The ones here
cut their files back to their length at checkpoint time, so a resumed run's logs hold what an
uninterrupted run's hold.

At the end of a run, ``write_run_views`` adds TensorBoard views for comparing runs in a ``summary``
sub-folder: an HParams session, series over experiences and an accuracy-vs-FLOPs figure.
"""

from __future__ import annotations

import math
import shutil
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


SUMMARY_RUN = "summary"
"""The sub-folder of a run's TensorBoard folder that holds the views written at its end: its HParams
session, series over experiences and the accuracy-vs-FLOPs figure. The run's own event files stay as
they were (a resumed run's are checked against an uninterrupted one's)."""

EXPERIENCE_TAGS = {
    "class_il_accuracy": "PerExperience/ClassIL_Acc_SeenExperiences",
    "task_il_accuracy": "PerExperience/TaskIL_Acc_SeenExperiences",
    "train_flops": "PerExperience/TrainFLOPs",
}
"""Series over experiences (step = experience index) written at the end of a run."""

FIGURE_TAG = "Summary/accuracy_vs_train_flops"


def flat_hparams(values: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """``values`` flattened to the ``section.key`` scalars the HParams dashboard shows.

    Lists and other values become their text; None (an unused section or option) is left out.
    """
    flat: dict[str, bool | int | float | str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        elif value is not None:
            flat[name] = str(value)
    return flat


def seen_mean(matrix: list[list[float]]) -> list[float]:
    """Mean accuracy over the experiences trained so far, after each experience (a matrix row each)."""
    return [sum(row[: index + 1]) / (index + 1) for index, row in enumerate(matrix)]


def accuracy_vs_flops_over_experiences(
    flops: list[float], class_il: list[float], task_il: list[float], title: str
) -> Any:
    """A figure of Class-IL and Task-IL accuracy (%) against cumulative training FLOPs, one point per
    experience, each numbered."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    from avalanche_sparcl.experiments.report_plots import series_style

    figure, axis = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    for index, (values, label) in enumerate(((class_il, "Class-IL"), (task_il, "Task-IL"))):
        style = series_style(index)
        axis.plot(flops, [100 * v for v in values], marker=style.marker, color=style.colour, label=label)
    for experience, (x, y) in enumerate(zip(flops, class_il, strict=True)):  # numbered on the Class-IL line
        axis.annotate(str(experience), (x, 100 * y), textcoords="offset points", xytext=(4, 4))
    axis.xaxis.set_major_formatter(EngFormatter(sep=" "))
    axis.set_xlabel("cumulative training FLOPs")
    axis.set_ylabel("accuracy on the experiences seen so far (%)")
    axis.set_ylim(0, 105)
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend(title="after experience (numbered)", fontsize="small")
    return figure


def write_run_views(
    loggers: list[Any],
    hparams: dict[str, Any],
    final: dict[str, float],
    class_il_matrix: list[list[float]],
    task_il_matrix: list[list[float]],
    flops_after_experience: list[float],
    title: str,
) -> None:
    """TensorBoard views for comparing runs, written at the end of a run into the ``summary`` sub-folder
    of its TensorboardLogger's folder (nothing without one, e.g. on data-parallel ranks other than 0):

    - an HParams session (``SummaryWriter.add_hparams``): the config's values (``flat_hparams``)
      against the final ``hparam/<key>`` of ``final`` (Class-IL and Task-IL accuracy, training FLOPs);
    - series over experiences (step = experience index): accuracy on the experiences seen so far and
      cumulative training FLOPs;
    - a figure of accuracy against training FLOPs over the experiences.

    The folder is written anew, so a run finished again after a kill keeps one session.
    """
    logger = next((logger for logger in loggers if isinstance(logger, TensorboardLogger)), None)
    if logger is None or not class_il_matrix:
        return
    folder = Path(logger.writer.get_logdir()) / SUMMARY_RUN
    shutil.rmtree(folder, ignore_errors=True)
    series = {
        "class_il_accuracy": seen_mean(class_il_matrix),
        "task_il_accuracy": seen_mean(task_il_matrix),
        "train_flops": list(flops_after_experience[: len(class_il_matrix)]),
    }
    last = len(class_il_matrix) - 1
    metrics = {f"hparam/{key}": float(value) for key, value in final.items() if not math.isnan(value)}
    with SummaryWriter(str(folder)) as writer:
        for key, values in series.items():
            for experience, value in enumerate(values):
                writer.add_scalar(EXPERIENCE_TAGS[key], value, experience)
        figure = accuracy_vs_flops_over_experiences(
            series["train_flops"], series["class_il_accuracy"], series["task_il_accuracy"], title
        )
        writer.add_figure(FIGURE_TAG, figure, global_step=last, close=True)
        # "." puts the session into this run's folder, next to the series and the figure
        writer.add_hparams(flat_hparams(hparams), metrics, run_name=".", global_step=last)
