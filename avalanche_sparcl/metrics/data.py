"""Fraction of an experience's training data kept, per epoch.

Dynamic data removal (SparCL Sec. 4.2) shrinks ``strategy.adapted_dataset`` between epochs; the
kept fraction times the epochs is the share of training steps a run still pays for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricResult, MetricValue
from avalanche.evaluation.metric_utils import get_metric_name
from avalanche.evaluation.metrics import Mean

if TYPE_CHECKING:
    from avalanche.training.templates import SupervisedTemplate


def kept_data_fraction(strategy: SupervisedTemplate, n_examples: int | None = None) -> float:
    """Training examples used in this epoch over the ``n_examples`` of the experience (by default
    those of ``strategy.experience``, which DDR narrows to the kept ones once it removed some)."""
    return len(strategy.adapted_dataset) / (n_examples or len(strategy.experience.dataset))


class KeptData(PluginMetric[float]):
    """Emits ``KeptData_Epoch`` after each epoch and, with ``experience``, ``KeptData_Exp``
    (the mean over the experience's epochs) after each experience.

    The fraction is read at the start of the epoch, after the plugins changed the data for it.
    """

    supports_distributed = True  # every rank holds the whole kept set, not its shard

    def __init__(self, epoch: bool = True, experience: bool = True):
        super().__init__()
        self.emit_epoch = epoch
        self.emit_experience = experience
        self._epoch_fraction = 0.0
        self._experience_mean = Mean()
        self._experience_size: int | None = None

    def result(self) -> float:
        return self._epoch_fraction

    def reset(self) -> None:
        self._epoch_fraction = 0.0
        self._experience_mean.reset()

    def before_training_exp(self, strategy: SupervisedTemplate) -> None:
        self.reset()
        self._experience_size = len(strategy.experience.dataset)  # before any removal

    def before_training_epoch(self, strategy: SupervisedTemplate) -> None:
        self._epoch_fraction = kept_data_fraction(strategy, self._experience_size)
        self._experience_mean.update(self._epoch_fraction)

    def after_training_epoch(self, strategy: SupervisedTemplate) -> MetricResult:
        if not self.emit_epoch:
            return None
        name = get_metric_name("KeptData_Epoch", strategy, add_task=False)
        return [MetricValue(self, name, self._epoch_fraction, strategy.clock.train_iterations)]

    def after_training_exp(self, strategy: SupervisedTemplate) -> MetricResult:
        if not self.emit_experience:
            return None
        name = get_metric_name("KeptData_Exp", strategy, add_experience=True, add_task=False)
        return [MetricValue(self, name, self._experience_mean.result(), strategy.clock.train_iterations)]

    def __str__(self) -> str:
        return "KeptData"


def data_metrics(*, epoch: bool = True, experience: bool = True) -> list[PluginMetric]:
    """Kept-data metrics for ``EvaluationPlugin``.

    :param epoch: emit ``KeptData_Epoch``, the fraction of the experience's data used in each epoch.
    :param experience: emit ``KeptData_Exp``, its mean over the experience's epochs.
    """
    return [KeptData(epoch=epoch, experience=experience)]
