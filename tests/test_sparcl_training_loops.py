"""SparCLPlugin under Avalanche's other ways to drive training: one train() call over a list of
experiences, several train() calls (the same experience again included) and periodic evaluation."""

import math

import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training import DER
from avalanche.training.plugins import EvaluationPlugin
from checkpoint_driver import build_strategy, differences, final_state, one_thread
from conftest import RULES_OFF

from avalanche_sparcl import SparCLPlugin
from avalanche_sparcl.models import SmallCNN
from avalanche_sparcl.sparse.masks import kept_count


def test_one_train_call_over_a_list_equals_one_call_per_experience():
    results = []
    for by_list in (True, False):
        benchmark, strategy = build_strategy()
        stream = benchmark.train_stream[:2]
        with one_thread():
            if by_list:
                strategy.train(stream)
            else:
                for experience in stream:
                    strategy.train(experience)
        results.append(final_state(strategy))
    assert differences(results[0], results[1]) == []
    assert [record["experience"] for record in results[0]["ddr_history"]] == [0, 1]


def test_periodic_evaluation_and_repeated_train_calls_keep_every_part_exact(digits_benchmark):
    torch.manual_seed(0)
    model = SmallCNN(width=16)
    sparcl = SparCLPlugin(
        sparsity=0.75, removal_ratio=0.3, gradient_sparsity=0.2, refresh_every=4, **RULES_OFF
    )
    strategy = DER(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        mem_size=60,
        train_mb_size=32,
        train_epochs=3,
        eval_every=1,
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
        plugins=[sparcl],
    )
    trained = [0, 1, 1]  # experience 1 twice, in separate train() calls
    for index in trained:
        strategy.train(digits_benchmark.train_stream[index], eval_streams=[digits_benchmark.test_stream[:2]])

    evaluations = strategy.evaluator.get_all_metrics()["Top1_Acc_Stream/eval_phase/test_stream/Task000"][0]
    assert len(evaluations) == len(trained) * (1 + 3)  # before training and after each epoch
    expand_experiences = [r.experience for r in sparcl.tdm.dynamic_sparsity.history if r.kind == "expand"]
    assert expand_experiences == [0, 1, 2]
    sizes = [len(digits_benchmark.train_stream[index].dataset) for index in trained]
    assert [(r.experience, r.n_examples) for r in sparcl.ddr.stage_counts] == list(
        zip(trained, sizes, strict=True)
    )
    assert [r.kept for r in sparcl.ddr.stage_counts] == [n - math.floor(0.3 * n + 0.5) for n in sizes]
    # 3 epochs leave room for one two-epoch window: a single stage at epoch 2 of every experience
    assert [[stage.epoch for stage in r.stages] for r in sparcl.ddr.stage_counts] == [[2]] * 3
    assert sorted(sparcl.masks) == ["conv2.weight", "conv3.weight"]
    params = dict(model.named_parameters())
    for name, mask in sparcl.masks.items():
        assert int(mask.sum()) == kept_count(mask.numel(), 0.75)
        assert not params[name].detach()[~mask].any()
        gradient_mask = sparcl.gradient_masks[name]
        assert int(gradient_mask.sum()) == kept_count(kept_count(mask.numel(), 0.75), 0.2)
