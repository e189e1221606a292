"""Weight and gradient sparsity actually applied during training, from the plugins' masks.

Reported per epoch, so TDM's expand / shrink / mutate cycle (SparCL Sec. 4.1) and DGM's gradient
masks (Sec. 4.3) are visible next to accuracy. A dense run reports sparsity 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricResult, MetricValue
from avalanche.evaluation.metric_utils import get_metric_name
from avalanche.evaluation.metrics import Mean

from avalanche_sparcl.metrics.masks import (
    GRADIENT_MASKS,
    WEIGHT_MASKS,
    KeptCounts,
    strategy_masks,
    weight_gradient_kept,
)

if TYPE_CHECKING:
    from avalanche.training.templates import SupervisedTemplate


def sparsity(kept: dict[str, tuple[int, int]]) -> float:
    """Fraction of zeroed entries over all the given masks (0 when nothing is masked)."""
    total = sum(numel for _, numel in kept.values())
    return 0.0 if total == 0 else 1.0 - sum(k for k, _ in kept.values()) / total


class WeightSparsity(PluginMetric[float]):
    """Sparsity of the masked weights at the end of each training epoch.

    Emits ``WeightSparsity`` over all masked layers and, with ``per_layer``,
    ``WeightSparsity_Layer/<parameter name>`` for each.
    """

    def __init__(self, per_layer: bool = True):
        super().__init__()
        self.per_layer = per_layer
        self._kept_counts = KeptCounts()
        self._kept: dict[str, tuple[int, int]] = {}

    def result(self) -> float:
        return sparsity(self._kept)

    def reset(self) -> None:
        self._kept = {}

    def after_training_epoch(self, strategy: SupervisedTemplate) -> MetricResult:
        self._kept = self._kept_counts(strategy_masks(strategy, WEIGHT_MASKS))
        position = strategy.clock.train_iterations
        values = [MetricValue(self, get_metric_name(self, strategy, add_task=False), self.result(), position)]
        if self.per_layer:
            for layer, kept in self._kept.items():
                name = get_metric_name(f"WeightSparsity_Layer/{layer}", strategy, add_task=False)
                values.append(MetricValue(self, name, sparsity({layer: kept}), position))
        return values

    def __str__(self) -> str:
        return "WeightSparsity"


class GradientSparsity(PluginMetric[float]):
    """Share of the masked layers' weight-gradient entries zeroed, averaged over an epoch's steps.

    The kept entries of a step are a plugin's gradient mask where there is one (DGM), else the
    weight mask (pruned weights get no gradient). Emitted as ``GradientSparsity`` after each epoch.
    """

    def __init__(self) -> None:
        super().__init__()
        self._weight_kept_counts = KeptCounts()
        self._gradient_kept_counts = KeptCounts()
        self._mean = Mean()

    def result(self) -> float:
        return self._mean.result()

    def reset(self) -> None:
        self._mean.reset()

    def before_training_epoch(self, strategy: SupervisedTemplate) -> None:
        self.reset()

    def after_backward(self, strategy: SupervisedTemplate) -> None:
        """Read the masks after the plugins applied them to this step's gradients."""
        weight_kept = self._weight_kept_counts(strategy_masks(strategy, WEIGHT_MASKS))
        gradient_kept = self._gradient_kept_counts(strategy_masks(strategy, GRADIENT_MASKS))
        self._mean.update(sparsity(weight_gradient_kept(weight_kept, gradient_kept)))

    def after_training_epoch(self, strategy: SupervisedTemplate) -> MetricResult:
        name = get_metric_name(self, strategy, add_task=False)
        return [MetricValue(self, name, self.result(), strategy.clock.train_iterations)]

    def __str__(self) -> str:
        return "GradientSparsity"


def sparsity_metrics(
    *, weights: bool = True, per_layer: bool = True, gradients: bool = True
) -> list[PluginMetric]:
    """Sparsity metrics for ``EvaluationPlugin``.

    :param weights: emit ``WeightSparsity`` over all masked layers after each epoch.
    :param per_layer: with ``weights``, also one ``WeightSparsity_Layer/<name>`` per masked layer.
    :param gradients: emit ``GradientSparsity``, the epoch's mean share of zeroed weight gradients.
    """
    metrics: list[PluginMetric] = []
    if weights:
        metrics.append(WeightSparsity(per_layer=per_layer))
    if gradients:
        metrics.append(GradientSparsity())
    return metrics
