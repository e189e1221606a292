"""Avalanche metrics for SparCL's claims: training FLOPs, sparsity, kept data and Task-IL accuracy.

Each ``*_metrics()`` helper returns a list of PluginMetrics to unpack into ``EvaluationPlugin``;
all of them also work without any SparCL plugin (a dense run reports dense FLOPs and sparsity 0).
"""

from avalanche_sparcl.metrics.data import KeptData, data_metrics
from avalanche_sparcl.metrics.flop_counter import FlopBreakdown, TrainingFlopCounter
from avalanche_sparcl.metrics.flops import TrainFlops, flops_metrics
from avalanche_sparcl.metrics.sparsity import GradientSparsity, WeightSparsity, sparsity_metrics
from avalanche_sparcl.metrics.task_il import (
    TaskILAccuracy,
    TaskILExperienceForgetting,
    TaskILStreamForgetting,
    task_il_accuracy_metrics,
)

__all__ = [
    "FlopBreakdown",
    "GradientSparsity",
    "KeptData",
    "TaskILAccuracy",
    "TaskILExperienceForgetting",
    "TaskILStreamForgetting",
    "TrainFlops",
    "TrainingFlopCounter",
    "WeightSparsity",
    "data_metrics",
    "flops_metrics",
    "sparsity_metrics",
    "task_il_accuracy_metrics",
]
