"""Task-IL accuracy and forgetting from a Class-IL run with one shared head.

The paper reports both settings from the same training run (Tables 1-2): for Task-IL the task is
known at test time, so the scores of classes outside the evaluated experience are masked before the
argmax. Avalanche's metrics never mask, so they measure Class-IL; these sit next to them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from avalanche.evaluation import GenericPluginMetric, PluginMetric
from avalanche.evaluation.metrics import Accuracy, ExperienceForgetting, StreamForgetting
from torch import Tensor

from avalanche_sparcl.logits import mask_other_classes

if TYPE_CHECKING:
    from avalanche.training.templates import SupervisedTemplate


def task_il_scores(strategy: Any) -> Tensor:
    """The evaluated minibatch's scores restricted to the classes of the evaluated experience."""
    return mask_other_classes(strategy.mb_output, strategy.experience.classes_in_this_experience)


class TaskILAccuracy(GenericPluginMetric[float, Accuracy]):
    """Accuracy with the evaluated experience's classes known (Task-IL), at evaluation time."""

    def __init__(self, reset_at: str, emit_at: str, name: str):
        super().__init__(Accuracy(), reset_at=reset_at, emit_at=emit_at, mode="eval")
        self._name = name

    def update(self, strategy: SupervisedTemplate) -> None:
        self._metric.update(task_il_scores(strategy), strategy.mb_y)

    def __str__(self) -> str:
        return self._name


class TaskILExperienceForgetting(ExperienceForgetting):
    """Avalanche's experience forgetting, computed on Task-IL accuracy."""

    def metric_update(self, strategy: SupervisedTemplate) -> None:
        self._current_metric.update(task_il_scores(strategy), strategy.mb_y, 0)

    def __str__(self) -> str:
        return "TaskIL_ExperienceForgetting"


class TaskILStreamForgetting(StreamForgetting):
    """Avalanche's stream forgetting (mean over seen experiences), computed on Task-IL accuracy."""

    def metric_update(self, strategy: SupervisedTemplate) -> None:
        self._current_metric.update(task_il_scores(strategy), strategy.mb_y, 0)

    def __str__(self) -> str:
        return "TaskIL_StreamForgetting"


def task_il_accuracy_metrics(
    *, experience: bool = True, stream: bool = True, forgetting: bool = True
) -> list[PluginMetric]:
    """Task-IL metrics for ``EvaluationPlugin``, to use next to ``accuracy_metrics`` (Class-IL).

    :param experience: emit ``TaskIL_Top1_Acc_Exp`` for each evaluated experience.
    :param stream: emit ``TaskIL_Top1_Acc_Stream`` over the whole evaluated stream.
    :param forgetting: emit ``TaskIL_ExperienceForgetting`` (with ``experience``) and
        ``TaskIL_StreamForgetting`` (with ``stream``).
    """
    metrics: list[PluginMetric] = []
    if experience:
        metrics.append(TaskILAccuracy("experience", "experience", "TaskIL_Top1_Acc_Exp"))
        if forgetting:
            metrics.append(TaskILExperienceForgetting())
    if stream:
        metrics.append(TaskILAccuracy("stream", "stream", "TaskIL_Top1_Acc_Stream"))
        if forgetting:
            metrics.append(TaskILStreamForgetting())
    return metrics
