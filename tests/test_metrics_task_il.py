"""Task-IL accuracy and forgetting next to Class-IL from one run; all metrics read back from TensorBoard."""

import math

import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.logging import TensorboardLogger
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from avalanche_sparcl.benchmarks import split_digits
from avalanche_sparcl.logits import mask_other_classes
from avalanche_sparcl.metrics import (
    data_metrics,
    flops_metrics,
    sparsity_metrics,
    task_il_accuracy_metrics,
)
from avalanche_sparcl.models import SmallCNN
from avalanche_sparcl.plugins import TDMPlugin


def test_mask_other_classes_keeps_only_the_experience_columns():
    scores = torch.tensor([[5.0, 1.0, 2.0, 3.0]])
    masked = mask_other_classes(scores, [1, 2, 7])
    assert masked[0, 1:3].tolist() == [1.0, 2.0]
    assert masked[0, 0] == -math.inf and masked[0, 3] == -math.inf
    assert masked.argmax(1).item() == 2


def task_il_accuracy_by_hand(model, experience):
    model.eval()
    data = torch.stack([experience.dataset[i][0] for i in range(len(experience.dataset))])
    targets = torch.tensor([experience.dataset[i][1] for i in range(len(experience.dataset))])
    with torch.no_grad():
        scores = model(data)
    allowed = torch.full_like(scores, -math.inf)
    allowed[:, list(experience.classes_in_this_experience)] = 0
    return int(((scores + allowed).argmax(1) == targets).sum()) / len(targets)


def test_task_il_and_class_il_from_one_run_in_tensorboard(tmp_path):
    torch.manual_seed(0)
    benchmark = split_digits(n_experiences=5, seed=0)
    model = SmallCNN()
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        forgetting_metrics(experience=True, stream=True),
        *flops_metrics(), *sparsity_metrics(), *data_metrics(), *task_il_accuracy_metrics(),
        loggers=[TensorboardLogger(tb_log_dir=str(tmp_path))],
    )
    strategy = Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=64,
        train_epochs=1, plugins=[TDMPlugin(sparsity=0.75)], evaluator=evaluator,
    )
    test_stream = benchmark.test_stream[:2]
    for experience in benchmark.train_stream[:2]:
        strategy.train(experience)
        strategy.eval(test_stream)
    metrics = evaluator.get_all_metrics()

    for index, experience in enumerate(test_stream):
        task_il = metrics[f"TaskIL_Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp00{index}"][1][-1]
        class_il = metrics[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp00{index}"][1][-1]
        assert task_il == pytest.approx(task_il_accuracy_by_hand(model, experience), abs=1e-9)
        assert task_il >= class_il  # knowing the task can only help
    # plain fine-tuning forgets the first classes entirely in Class-IL, much less in Task-IL
    assert metrics["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"][1][-1] < 0.05
    task_il_forgetting = metrics["TaskIL_ExperienceForgetting/eval_phase/test_stream/Task000/Exp000"][1][-1]
    class_il_forgetting = metrics["ExperienceForgetting/eval_phase/test_stream/Task000/Exp000"][1][-1]
    assert task_il_forgetting < class_il_forgetting
    assert "TaskIL_StreamForgetting/eval_phase/test_stream" in metrics
    assert "TaskIL_Top1_Acc_Stream/eval_phase/test_stream/Task000" in metrics

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in (
        "TrainFLOPs_Total/train_phase/train_stream",
        "TrainFLOPs_Exp/train_phase/train_stream/Exp001",
        "WeightSparsity/train_phase/train_stream",
        "WeightSparsity_Layer/conv2.weight/train_phase/train_stream",
        "GradientSparsity/train_phase/train_stream",
        "KeptData_Epoch/train_phase/train_stream",
        "TaskIL_Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000",
        "TaskIL_ExperienceForgetting/eval_phase/test_stream/Task000/Exp000",
        "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000",
    ):
        assert tag in tags, tag
    flops_written = [event.value for event in events.Scalars("TrainFLOPs_Total/train_phase/train_stream")]
    flops_emitted = metrics["TrainFLOPs_Total/train_phase/train_stream"][1]
    assert flops_written == pytest.approx(flops_emitted, rel=1e-6)  # float32 in the event file
    assert flops_written[1] > flops_written[0] > 0
    sparsity_written = events.Scalars("WeightSparsity/train_phase/train_stream")[-1].value
    assert sparsity_written == pytest.approx(last_value(metrics, "WeightSparsity/train_phase/train_stream"))


def last_value(metrics, name):
    return metrics[name][1][-1]
