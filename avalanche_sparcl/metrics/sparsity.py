"""Weight and gradient sparsity as measured on the tensors, for the parameters the plugins mask.

Reported per epoch, so TDM's expand / shrink / mutate cycle (SparCL Sec. 4.1) and DGM's gradient
masks (Sec. 4.3) are visible next to accuracy. The masks only say which parameters to look at: the
values are the exactly-zero entries of the current model's weights and of the gradients the
optimizer applied, so a strategy that defeats the masks (gradient projection after the plugins
masked, a replaced model, a restored state_dict) shows up. A dense run reports sparsity 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricResult, MetricValue
from avalanche.evaluation.metric_utils import get_metric_name
from torch import Tensor

from avalanche_sparcl.metrics.masks import masked_parameters

if TYPE_CHECKING:
    from avalanche.training.templates import SupervisedTemplate


def zero_counts(tensors: dict[str, Tensor]) -> dict[str, tuple[int, int]]:
    """Exactly-zero and total entries of each tensor, with one device synchronisation for all."""
    if not tensors:
        return {}
    nonzero = [torch.count_nonzero(tensor.detach()) for tensor in tensors.values()]
    try:
        counts = torch.stack(nonzero).tolist()
    except RuntimeError:  # tensors on different devices
        counts = [int(count) for count in nonzero]
    return {
        name: (tensor.numel() - int(count), tensor.numel())
        for (name, tensor), count in zip(tensors.items(), counts, strict=True)
    }


def sparsity(counts: dict[str, tuple[int, int]]) -> float:
    """Share of zero entries over all the given (zeros, total) counts; 0 when there are none."""
    total = sum(numel for _, numel in counts.values())
    return 0.0 if total == 0 else sum(zeros for zeros, _ in counts.values()) / total


class WeightSparsity(PluginMetric[float]):
    """Share of exactly-zero weights of the masked parameters at the end of each training epoch.

    Emits ``WeightSparsity`` over all masked parameters and, with ``per_layer``,
    ``WeightSparsity_Layer/<parameter name>`` for each one the current model has.
    """

    supports_distributed = True  # DDP keeps the weights identical on every rank

    def __init__(self, per_layer: bool = True):
        super().__init__()
        self.per_layer = per_layer
        self._zeros: dict[str, tuple[int, int]] = {}

    def result(self) -> float:
        return sparsity(self._zeros)

    def reset(self) -> None:
        self._zeros = {}

    def after_training_epoch(self, strategy: SupervisedTemplate) -> MetricResult:
        self._zeros = zero_counts(masked_parameters(strategy))
        position = strategy.clock.train_iterations
        values = [MetricValue(self, get_metric_name(self, strategy, add_task=False), self.result(), position)]
        if self.per_layer:
            for layer, zeros in self._zeros.items():
                name = get_metric_name(f"WeightSparsity_Layer/{layer}", strategy, add_task=False)
                values.append(MetricValue(self, name, sparsity({layer: zeros}), position))
        return values

    def __str__(self) -> str:
        return "WeightSparsity"


class GradientSparsity(PluginMetric[float]):
    """Share of exactly-zero gradient entries the optimizer applied to the masked parameters in an epoch.

    Measured in ``after_update``: gradient masks may be applied right before ``optimizer.step()``
    and Avalanche zeroes the gradients only at the next iteration, so ``.grad`` there is what the
    step used. Every step is measured, without a host synchronisation: each step adds its
    ``count_nonzero`` results to a counter on the parameters' device, read once at the epoch's end
    (sampling steps would be as cheap but miss the steps right after a mask change). The result is
    zero entries over all entries measured in the epoch, i.e. the mean over its steps, each weighted
    by its entry count (equal weights unless a parameter has no gradient at some step; such a
    parameter is skipped at that step). Emitted as ``GradientSparsity`` after each epoch.
    """

    supports_distributed = True  # the gradients applied are averaged, identical on every rank

    def __init__(self) -> None:
        super().__init__()
        self._nonzero: Tensor | None = None  # on the parameters' device
        self._entries = 0

    def result(self) -> float:
        if self._entries == 0:
            return 0.0
        return (self._entries - int(self._nonzero)) / self._entries

    def reset(self) -> None:
        self._nonzero = None
        self._entries = 0

    def before_training_epoch(self, strategy: SupervisedTemplate) -> None:
        self.reset()

    def after_update(self, strategy: SupervisedTemplate) -> None:
        """Count the nonzero entries of the gradients this step's ``optimizer.step()`` applied."""
        gradients = [p.grad for p in masked_parameters(strategy).values() if p.grad is not None]
        if not gradients:
            return
        device = gradients[0].device
        nonzero = torch.stack([torch.count_nonzero(g.detach()).to(device) for g in gradients]).sum()
        self._nonzero = nonzero if self._nonzero is None else self._nonzero + nonzero.to(self._nonzero.device)
        self._entries += sum(g.numel() for g in gradients)

    def after_training_epoch(self, strategy: SupervisedTemplate) -> MetricResult:
        name = get_metric_name(self, strategy, add_task=False)
        return [MetricValue(self, name, self.result(), strategy.clock.train_iterations)]

    def __str__(self) -> str:
        return "GradientSparsity"


def sparsity_metrics(
    *, weights: bool = True, per_layer: bool = True, gradients: bool = True
) -> list[PluginMetric]:
    """Sparsity metrics for ``EvaluationPlugin``, measured on the parameters the plugins mask.

    :param weights: emit ``WeightSparsity``, the share of zero masked weights, after each epoch.
    :param per_layer: with ``weights``, also one ``WeightSparsity_Layer/<name>`` per masked layer.
    :param gradients: emit ``GradientSparsity``, the epoch's share of zero gradient entries applied.
    """
    metrics: list[PluginMetric] = []
    if weights:
        metrics.append(WeightSparsity(per_layer=per_layer))
    if gradients:
        metrics.append(GradientSparsity())
    return metrics
