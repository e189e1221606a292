"""Training FLOPs as an Avalanche metric: per experience and cumulative over the run.

SparCL's claim is efficiency (Sec. 5, "up to 23x fewer training FLOPs"), so dense baselines and
sparse runs are measured by the same counter (:mod:`avalanche_sparcl.metrics.flop_counter`): every
pass made while the strategy trains counts (buffer samples, DER's end-of-experience logit pass, a
plugin's probe), evaluation passes do not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricResult, MetricValue
from avalanche.evaluation.metric_utils import get_metric_name

from avalanche_sparcl.distributed import is_distributed, sum_across_ranks, unwrap
from avalanche_sparcl.metrics.flop_counter import FlopBreakdown, TrainingFlopCounter
from avalanche_sparcl.metrics.masks import (
    GRADIENT_MASKS,
    WEIGHT_MASKS,
    KeptCounts,
    strategy_masks,
    weight_gradient_kept,
)

if TYPE_CHECKING:
    from avalanche.training.templates import SupervisedTemplate

BREAKDOWN_NAMES = {
    "forward": "TrainFLOPs_Forward",
    "input_gradient": "TrainFLOPs_InputGradient",
    "weight_gradient": "TrainFLOPs_WeightGradient",
    "other": "TrainFLOPs_Other",
}


class TrainFlops(PluginMetric[float]):
    """Sparsity-aware training FLOPs; ``result()`` is the run total so far.

    Emits after each training experience: ``TrainFLOPs_Exp`` (that experience, including passes a
    strategy makes when it ends), ``TrainFLOPs_Total`` (the whole run: the figure to compare between
    runs) and, with ``breakdown``, the run total of each part (forward, input gradient, weight
    gradient, other dense operations). With ``epoch``, also ``TrainFLOPs_Epoch`` after each training
    epoch: the passes made within it (in data-parallel training, this process's passes).

    In data-parallel training each rank counts its own passes; at the end of every experience the
    ranks' counts are summed into the job's (identical on every rank, so a checkpoint of any rank
    holds them) and the per-rank counters restart. Between experience ends ``result()`` adds this
    rank's passes since the last one to the job's total.
    """

    supports_distributed = True  # per-rank counts are summed at every experience end

    def __init__(
        self, experience: bool = True, total: bool = True, breakdown: bool = False, epoch: bool = False
    ):
        super().__init__()
        self.emit_epoch = epoch
        self.emit_experience = experience
        self.emit_total = total
        self.emit_breakdown = breakdown
        self.counter: TrainingFlopCounter | None = None
        self._kept_counts = KeptCounts()
        self._gradient_kept_counts = KeptCounts()
        self._at_last_experience = FlopBreakdown()
        self._at_epoch_start = 0.0
        self._job_folded = FlopBreakdown()  # data-parallel: the job's counts at the last experience end
        self._counting_before_eval: list[bool] = []

    def result(self) -> float:
        return self.breakdown().total

    def breakdown(self) -> FlopBreakdown:
        """The run's FLOPs so far, by part."""
        if self.counter is None:
            return FlopBreakdown()
        return add_breakdowns(self._job_folded, self.counter.breakdown())

    def reset(self) -> None:
        if self.counter is not None:
            self.counter.reset()
        self._at_last_experience = FlopBreakdown()
        self._job_folded = FlopBreakdown()

    def before_training(self, strategy: SupervisedTemplate) -> None:
        """Hook the model and start counting."""
        if self.counter is None:
            self.counter = TrainingFlopCounter(unwrap(strategy.model))
        self.counter.attach(unwrap(strategy.model))
        self.counter.counting = True

    def before_training_exp(self, strategy: SupervisedTemplate) -> None:
        """Follow a model the strategy adapted or replaced."""
        self.counter.attach(unwrap(strategy.model))
        self._refresh_weight_density(strategy)

    def before_training_epoch(self, strategy: SupervisedTemplate) -> None:
        self._at_epoch_start = self.result()

    def after_training_epoch(self, strategy: SupervisedTemplate) -> MetricResult:
        if not self.emit_epoch:
            return None
        self._settle(strategy)
        name = get_metric_name("TrainFLOPs_Epoch", strategy, add_task=False)
        epoch_flops = self.result() - self._at_epoch_start
        return [MetricValue(self, name, epoch_flops, strategy.clock.train_iterations)]

    def before_training_iteration(self, strategy: SupervisedTemplate) -> None:
        """Read the weight masks after the plugins updated them for this iteration."""
        self._refresh_weight_density(strategy)

    def after_update(self, strategy: SupervisedTemplate) -> None:
        """Book this step's weight gradients with the gradient masks applied to them: after the
        optimizer step, as masks may be built or applied by a step pre-hook."""
        self._settle(strategy)

    def after_training_exp(self, strategy: SupervisedTemplate) -> MetricResult:
        self._settle(strategy)
        if is_distributed():
            self._fold_ranks()
        so_far = self.breakdown()
        experience = so_far - self._at_last_experience
        self._at_last_experience = so_far
        position = strategy.clock.train_iterations
        values = []
        if self.emit_experience:
            name = get_metric_name("TrainFLOPs_Exp", strategy, add_experience=True, add_task=False)
            values.append(MetricValue(self, name, experience.total, position))
        if self.emit_total:
            name = get_metric_name("TrainFLOPs_Total", strategy, add_task=False)
            values.append(MetricValue(self, name, so_far.total, position))
        if self.emit_breakdown:
            for part, metric_name in BREAKDOWN_NAMES.items():
                name = get_metric_name(metric_name, strategy, add_task=False)
                values.append(MetricValue(self, name, getattr(so_far, part), position))
        return values

    def after_training(self, strategy: SupervisedTemplate) -> None:
        self.counter.counting = False

    def before_eval(self, strategy: SupervisedTemplate) -> None:
        """Evaluation passes are not training FLOPs (also when evaluation runs inside training)."""
        if self.counter is not None:
            self._counting_before_eval.append(self.counter.counting)
            self.counter.counting = False

    def after_eval(self, strategy: SupervisedTemplate) -> None:
        if self.counter is not None and self._counting_before_eval:
            self.counter.counting = self._counting_before_eval.pop()

    def _fold_ranks(self) -> None:
        """Sum every rank's counts into the job's total, the same on every rank, and restart the
        per-rank counters (a collective: all ranks call it at the end of each experience)."""
        parts = ("forward", "input_gradient", "weight_gradient", "other")
        local = self.counter.breakdown()
        summed = sum_across_ranks(torch.tensor([getattr(local, part) for part in parts], dtype=torch.float64))
        self._job_folded = add_breakdowns(self._job_folded, FlopBreakdown(*summed.tolist()))
        self.counter.reset()

    def _refresh_weight_density(self, strategy: Any) -> None:
        self.counter.weight_kept = self._kept_counts(strategy_masks(strategy, WEIGHT_MASKS))

    def _settle(self, strategy: Any) -> None:
        gradient_kept = self._gradient_kept_counts(strategy_masks(strategy, GRADIENT_MASKS))
        self.counter.settle_weight_gradients(weight_gradient_kept(self.counter.weight_kept, gradient_kept))

    def __str__(self) -> str:
        return "TrainFLOPs"


def add_breakdowns(first: FlopBreakdown, second: FlopBreakdown) -> FlopBreakdown:
    """Part-wise sum of two breakdowns."""
    return FlopBreakdown(
        first.forward + second.forward,
        first.input_gradient + second.input_gradient,
        first.weight_gradient + second.weight_gradient,
        first.other + second.other,
    )


def flops_metrics(
    *, experience: bool = True, total: bool = True, breakdown: bool = False, epoch: bool = False
) -> list[PluginMetric]:
    """Training-FLOPs metrics for ``EvaluationPlugin`` (one counter, so the hooks run once per layer).

    :param epoch: emit ``TrainFLOPs_Epoch`` after each training epoch, the FLOPs of its passes.
    :param experience: emit ``TrainFLOPs_Exp`` after each training experience.
    :param total: emit ``TrainFLOPs_Total``, the cumulative FLOPs of the run.
    :param breakdown: also emit the cumulative forward, input-gradient, weight-gradient and other FLOPs.
    """
    return [TrainFlops(experience=experience, total=total, breakdown=breakdown, epoch=epoch)]
