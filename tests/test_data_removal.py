"""DDR's core: forgetting statistics, tie-break, exact-count selection and the stage schedule."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from avalanche_sparcl.data_removal import (
    MIN_WINDOW_EPOCHS,
    DDRSettings,
    DynamicDataRemoval,
    ForgettingStatistics,
    RemovalStage,
    removal_schedule,
    removal_target,
    select_easiest,
)


def logits_for(predictions: list[int], n_classes: int = 3) -> torch.Tensor:
    """Logits whose argmax is each given class."""
    return 5.0 * torch.nn.functional.one_hot(torch.tensor(predictions), n_classes).float()


def test_paper_schedule_removes_750_of_10000_at_epochs_5_10_15_20():
    assert removal_schedule(10000, 50, DDRSettings()) == [
        RemovalStage(5, 750),
        RemovalStage(10, 750),
        RemovalStage(15, 750),
        RemovalStage(20, 750),
    ]


def test_paper_setting_set_sizes_on_tiny_data():
    """Reference sizes: 100%, 92.5%, 85%, 77.5%, 70% of the experience from epochs 0, 5, 10, 15, 20."""
    n_examples, generator = 80, torch.Generator().manual_seed(0)
    removal = DynamicDataRemoval()
    removal.start_experience(0, n_examples, n_epochs=50)
    sizes = []
    for epoch in range(50):
        removal.remove_due(epoch)
        sizes.append(len(removal.kept_positions))
        kept = removal.kept_positions
        labels = torch.randint(0, 3, (len(kept),), generator=generator)
        removal.observe(kept, torch.randn(len(kept), 3, generator=generator), labels)
    assert [sizes[epoch] for epoch in (0, 5, 10, 15, 20)] == [80, 74, 68, 62, 56]
    assert sizes == [80] * 5 + [74] * 5 + [68] * 5 + [62] * 5 + [56] * 30
    assert [(s.epoch, s.removed, s.kept) for s in removal.current.stages] == [
        (5, 6, 74),
        (10, 6, 68),
        (15, 6, 62),
        (20, 6, 56),
    ]


@pytest.mark.parametrize(
    ("n_epochs", "expected"),
    [
        (1, []),
        (2, []),
        (3, [(2, 30)]),
        (4, [(2, 30)]),
        (5, [(2, 30)]),
        (6, [(2, 30)]),
        (7, [(2, 30)]),
        (8, [(3, 30)]),
        (9, [(3, 30)]),
        (10, [(2, 15), (4, 15)]),
        (11, [(2, 15), (4, 15)]),
        (12, [(2, 15), (4, 15)]),
        (20, [(2, 7), (4, 8), (6, 7), (8, 8)]),
        (50, [(5, 7), (10, 8), (15, 7), (20, 8)]),
        (100, [(10, 7), (20, 8), (30, 7), (40, 8)]),
    ],
)
def test_schedule_for_many_epoch_counts(n_epochs, expected):
    """Every window spans at least two epochs: no stage before epoch 2, stages two or more apart."""
    schedule = removal_schedule(100, n_epochs, DDRSettings())
    assert [(stage.epoch, stage.count) for stage in schedule] == expected


def test_ten_epochs_remove_15_percent_at_epochs_2_and_4_and_train_the_last_epoch_on_70():
    removal = DynamicDataRemoval()
    removal.start_experience(0, 100, n_epochs=10)
    sizes = []
    for epoch in range(10):
        removal.remove_due(epoch)
        sizes.append(len(removal.kept_positions))
        kept = removal.kept_positions
        removal.observe(kept, logits_for([0] * len(kept)), torch.zeros(len(kept), dtype=torch.long))
    assert sizes == [100, 100, 85, 85, 70, 70, 70, 70, 70, 70]


def test_schedule_with_stages_that_do_not_divide_the_cutoff_spreads_them_evenly():
    schedule = removal_schedule(100, 15, DDRSettings(removal_ratio=0.2, stages=4, cutoff=0.5))
    assert [(stage.epoch, stage.count) for stage in schedule] == [(3, 6), (5, 7), (7, 7)]


def test_fewer_examples_to_remove_than_stages_gives_fewer_stages():
    schedule = removal_schedule(5, 50, DDRSettings(removal_ratio=0.4))
    assert schedule == [RemovalStage(10, 1), RemovalStage(20, 1)]


def test_cutoff_one_stops_removing_before_the_last_epoch():
    schedule = removal_schedule(100, 4, DDRSettings(stages=4, cutoff=1.0))
    assert [(stage.epoch, stage.count) for stage in schedule] == [(3, 30)]
    schedule = removal_schedule(100, 7, DDRSettings(stages=4, cutoff=1.0))
    assert [(stage.epoch, stage.count) for stage in schedule] == [(2, 10), (4, 10), (6, 10)]


def test_removal_target_rounds_half_up_and_zero_ratio_removes_nothing():
    assert removal_target(5, 0.3) == 2  # 1.5 -> 2
    assert removal_target(15, 0.3) == 5  # 4.5 -> 5, not banker's 4
    assert removal_target(272, 0.3) == 82
    assert removal_schedule(100, 50, DDRSettings(removal_ratio=0.0)) == []


@settings(max_examples=300, deadline=None)
@given(
    n_examples=st.integers(0, 20000),
    n_epochs=st.integers(1, 200),
    removal_ratio=st.floats(0, 1, exclude_max=True),
    stages=st.integers(1, 12),
    cutoff=st.floats(0, 1, exclude_min=True),
)
def test_schedule_properties(n_examples, n_epochs, removal_ratio, stages, cutoff):
    config = DDRSettings(removal_ratio, stages, cutoff)
    schedule = removal_schedule(n_examples, n_epochs, config)
    target = removal_target(n_examples, removal_ratio)
    if n_epochs <= 2 or target == 0:
        assert schedule == []
        return
    assert schedule
    assert sum(stage.count for stage in schedule) == target == math.floor(removal_ratio * n_examples + 0.5)
    epochs = [stage.epoch for stage in schedule]
    windows = [later - earlier for earlier, later in zip([0, *epochs], epochs, strict=False)]
    assert min(windows) >= MIN_WINDOW_EPOCHS == 2
    assert epochs[-1] <= n_epochs - 1
    assert epochs[-1] <= max(2, cutoff * n_epochs + 1e-6)
    assert 1 <= len(schedule) <= stages
    counts = [stage.count for stage in schedule]
    assert min(counts) >= 1 and max(counts) - min(counts) <= 1


def test_forgetting_events_count_correct_to_wrong_transitions_only():
    statistics = ForgettingStatistics(3)
    labels = torch.tensor([0, 1, 2])
    # example 0: right, wrong, right, wrong -> 2 events; 1: wrong, right, right, right -> 0;
    # 2: never right -> ranked hardest
    for predictions in ([0, 0, 0], [1, 1, 0], [0, 1, 1], [2, 1, 0]):
        statistics.observe(torch.tensor([0, 1, 2]), logits_for(predictions), labels)
    assert statistics.forgetting_events[:3].tolist() == [2, 0, 0]
    score, _ = statistics.difficulty_keys(torch.tensor([0, 1, 2]))
    assert score.tolist() == [2.0, 0.0, math.inf]
    assert statistics.easiest_first(torch.tensor([0, 1, 2])).tolist() == [1, 0, 2]


def test_an_example_forgotten_within_a_window_ranks_harder_than_one_with_higher_loss():
    """The window sees each example twice, so a forgetting event outranks a lower mean loss."""
    statistics = ForgettingStatistics(2)
    labels = torch.tensor([0, 0])
    # example 0: confidently right, then barely wrong; example 1: moderately right twice
    statistics.observe(torch.tensor([0, 1]), torch.tensor([[6.0, 0.0], [0.5, 0.0]]), labels)
    statistics.observe(torch.tensor([0, 1]), torch.tensor([[0.0, 0.1], [0.5, 0.0]]), labels)
    score, mean_loss = statistics.difficulty_keys(torch.tensor([0, 1]))
    assert score.tolist() == [1.0, 0.0]
    assert mean_loss[0] < mean_loss[1]
    assert statistics.easiest_first(torch.tensor([0, 1])).tolist() == [1, 0]


def test_first_stage_at_ten_epochs_ranks_by_the_events_of_its_two_epoch_window():
    """Example 0 has the lowest loss in epoch 0 but is forgotten in epoch 1: example 1 goes first."""
    removal = DynamicDataRemoval(DDRSettings(removal_ratio=0.5, stages=4, cutoff=0.4))
    assert removal.start_experience(0, 4, n_epochs=10) == [RemovalStage(2, 1), RemovalStage(4, 1)]
    labels = torch.zeros(4, dtype=torch.long)
    epoch_logits = [
        torch.tensor([[6.0, 0.0], [0.5, 0.0], [0.2, 0.0], [0.2, 0.0]]),
        torch.tensor([[0.0, 0.1], [0.5, 0.0], [0.2, 0.0], [0.2, 0.0]]),
    ]
    for epoch, logits in enumerate(epoch_logits):
        assert removal.remove_due(epoch) is None
        removal.observe(torch.arange(4), logits, labels)
    assert removal.statistics.forgetting_events[:4].tolist() == [1, 0, 0, 0]
    assert removal.remove_due(2).tolist() == [0, 2, 3]
    assert removal.current.stages[0].removed_positions == (1,)


def test_tie_break_is_mean_loss_not_position_or_arrival_order():
    """With no forgetting event in the window (one observation each), the lowest mean loss decides."""
    n_examples = 6
    statistics = ForgettingStatistics(n_examples)
    labels = torch.zeros(n_examples, dtype=torch.long)
    confidence = torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])  # later positions are easier
    logits = torch.stack([confidence, torch.zeros(n_examples)], dim=1)
    arrival = torch.tensor([3, 0, 5, 1, 4, 2])
    statistics.observe(arrival, logits[arrival], labels[arrival])
    assert statistics.forgetting_events[:n_examples].tolist() == [0] * n_examples
    assert statistics.easiest_first(torch.arange(n_examples)).tolist() == [5, 4, 3, 2, 1, 0]
    assert select_easiest(statistics, torch.arange(n_examples), 2).tolist() == [4, 5]


def test_mean_loss_is_averaged_over_the_window():
    statistics = ForgettingStatistics(2)
    labels = torch.tensor([0, 0])
    # example 0 is confident once and barely right once; example 1 twice moderately right
    statistics.observe(torch.tensor([0, 1]), torch.tensor([[4.0, 0.0], [1.0, 0.0]]), labels)
    statistics.observe(torch.tensor([0, 1]), torch.tensor([[0.1, 0.0], [1.0, 0.0]]), labels)
    _, mean_loss = statistics.difficulty_keys(torch.tensor([0, 1]))
    expected = torch.nn.functional.cross_entropy(
        torch.tensor([[4.0, 0.0], [0.1, 0.0]]), torch.tensor([0, 0]), reduction="none"
    ).mean()
    assert mean_loss[0].item() == pytest.approx(expected.item())
    assert statistics.easiest_first(torch.tensor([0, 1])).tolist() == [1, 0]


def test_exact_ties_fall_back_to_the_lowest_position():
    statistics = ForgettingStatistics(4)
    statistics.observe(torch.tensor([3, 2, 1, 0]), logits_for([0, 0, 0, 0]), torch.zeros(4, dtype=torch.long))
    assert statistics.easiest_first(torch.tensor([2, 0, 3, 1])).tolist() == [0, 1, 2, 3]


def test_unobserved_examples_rank_hardest():
    statistics = ForgettingStatistics(3)
    statistics.observe(torch.tensor([0, 2]), logits_for([1, 1]), torch.tensor([1, 1]))
    assert statistics.easiest_first(torch.arange(3)).tolist() == [0, 2, 1]


def test_replay_rows_with_negative_positions_are_ignored():
    removal = DynamicDataRemoval()
    removal.start_experience(0, 2, n_epochs=10)
    removal.observe(torch.tensor([-1, 1, -1]), logits_for([0, 1, 2]), torch.tensor([0, 1, 2]))
    assert removal.statistics.observations[:2].tolist() == [0, 1]
    assert removal.statistics.correct_count[:2].tolist() == [0, 1]
    assert removal.statistics.difficulty_keys(torch.tensor([0, 1]))[0].tolist() == [float("inf"), 0.0]


@settings(max_examples=100, deadline=None)
@given(
    n_examples=st.integers(1, 300),
    data=st.data(),
)
def test_selection_takes_exactly_the_count_easiest(n_examples, data):
    seed = data.draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    statistics = ForgettingStatistics(n_examples)
    labels = torch.randint(0, 3, (n_examples,), generator=generator)
    for _ in range(data.draw(st.integers(0, 4))):
        order = torch.randperm(n_examples, generator=generator)
        logits = torch.randn(n_examples, 3, generator=generator)
        statistics.observe(order, logits[order], labels[order])
    candidates = torch.randperm(n_examples, generator=generator)[: data.draw(st.integers(0, n_examples))]
    count = data.draw(st.integers(0, len(candidates)))
    chosen = select_easiest(statistics, candidates, count)
    assert len(chosen) == len(set(chosen.tolist())) == count
    assert set(chosen.tolist()) <= set(candidates.tolist())
    score, mean_loss = statistics.difficulty_keys(candidates)
    keys = sorted(zip(score.tolist(), mean_loss.tolist(), candidates.tolist(), strict=True))
    assert sorted(chosen.tolist()) == sorted(position for _, _, position in keys[:count])


def test_select_rejects_a_count_larger_than_the_candidates():
    with pytest.raises(ValueError, match=r"^count must be in \[0, 2\], got 3$"):
        select_easiest(ForgettingStatistics(2), torch.arange(2), 3)


def test_removed_examples_stay_removed_and_statistics_restart_each_stage():
    removal = DynamicDataRemoval(DDRSettings(removal_ratio=0.5, stages=2, cutoff=0.5))
    removal.start_experience(7, 10, n_epochs=8)
    labels = torch.zeros(10, dtype=torch.long)
    kept_sets = []
    for epoch in range(8):
        if removal.remove_due(epoch) is not None:
            assert removal.statistics.observations.sum().item() == 0
        kept_sets.append(set(removal.kept_positions.tolist()))
        kept = removal.kept_positions
        removal.observe(kept, torch.stack([kept.float(), torch.zeros(len(kept))], dim=1), labels[kept])
    assert [len(kept) for kept in kept_sets] == [10, 10, 8, 8, 5, 5, 5, 5]
    assert kept_sets[0] == kept_sets[1] >= kept_sets[2] == kept_sets[3] >= kept_sets[4] == kept_sets[7]
    assert [stage.epoch for stage in removal.current.stages] == [2, 4]
    record = removal.current
    assert (record.experience, record.n_examples, record.kept) == (7, 10, 5)
    # a larger position has a larger margin for its label, so a lower loss: the easiest go first
    assert [stage.removed_positions for stage in record.stages] == [(8, 9), (5, 6, 7)]


def observe_margins(removal: DynamicDataRemoval, labels: torch.Tensor, margins: torch.Tensor) -> None:
    """One epoch over the kept examples, each correct with the given margin for its label."""
    kept = removal.kept_positions
    logits = torch.zeros(len(kept), 3)
    logits[torch.arange(len(kept)), labels[kept]] = margins[kept]
    removal.observe(kept, logits, labels[kept])


def test_a_ratio_near_one_keeps_exactly_the_hardest_example_of_each_class():
    removal = DynamicDataRemoval(DDRSettings(removal_ratio=0.999, stages=1))
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    margins = torch.tensor([3.0, 1.0, 2.0, 5.0, 4.0, 6.0, 0.5, 2.5, 1.5])  # lowest margin: hardest
    assert removal.start_experience(0, 9, n_epochs=3) == [RemovalStage(2, 9)]
    for epoch in range(3):
        removal.remove_due(epoch)
        observe_margins(removal, labels, margins)
    assert removal.kept_positions.tolist() == [1, 4, 6]
    assert [(stage.removed, stage.kept) for stage in removal.current.stages] == [(6, 3)]


def test_examples_never_observed_form_one_group_so_one_is_always_kept():
    removal = DynamicDataRemoval(DDRSettings(removal_ratio=0.999, stages=1))
    removal.start_experience(0, 5, n_epochs=3)
    assert removal.remove_due(2).tolist() == [4]  # unobserved ones tie: the last position ranks hardest


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=40),
    removal_ratio=st.floats(0, 1, exclude_max=True),
    stages=st.integers(1, 4),
    n_epochs=st.integers(3, 9),
    seed=st.integers(0, 2**16),
)
def test_every_class_keeps_an_example_whatever_the_ratio(labels, removal_ratio, stages, n_epochs, seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor(labels)
    removal = DynamicDataRemoval(DDRSettings(removal_ratio, stages, cutoff=1.0))
    removal.start_experience(0, len(labels), n_epochs)
    for epoch in range(n_epochs):
        removal.remove_due(epoch)
        kept = removal.kept_positions
        removal.observe(kept, torch.randn(len(kept), 5, generator=generator), labels[kept])
    assert set(labels[removal.kept_positions].tolist()) == set(labels.tolist())
    removed = len(labels) - len(removal.kept_positions)
    assert removed <= removal_target(len(labels), removal_ratio)
    assert removed == min(removal_target(len(labels), removal_ratio), len(labels) - len(set(labels.tolist())))
