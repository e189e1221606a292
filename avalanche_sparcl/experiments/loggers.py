"""The runner's TensorBoard views, written at the end of a run.

The resumable loggers themselves are public, in ``avalanche_sparcl.loggers``; they are re-exported
here for the runner (and for checkpoints that name them by this module).

At the end of a run, ``write_run_views`` adds TensorBoard views for comparing runs in a ``summary``
sub-folder: an HParams session, series over experiences and an accuracy-vs-FLOPs figure.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from avalanche.logging import TensorboardLogger
from torch.utils.tensorboard import SummaryWriter

from avalanche_sparcl.loggers import (
    EVENT_FILES,
    ResumableCSVLogger,
    ResumableTensorboardLogger,
    SparCLCSVLogger,
)

__all__ = [
    "EVENT_FILES",
    "ResumableCSVLogger",
    "ResumableTensorboardLogger",
    "SparCLCSVLogger",
    "write_run_views",
]

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
