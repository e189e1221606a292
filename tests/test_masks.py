"""Exact-count mask operations."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from avalanche_sparcl.sparse.masks import (
    clear_optimizer_state,
    grow_highest,
    grow_random,
    kept_count,
    prune_lowest,
    random_grow_positions,
    top_k_mask,
)

shapes = st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple)


def test_kept_count_rounds_the_number_of_zeros():
    assert kept_count(1000, 0.75) == 250
    assert kept_count(10, 0.95) == 0  # round(9.5) = 10 zeros (Python rounds half to even)
    assert kept_count(7, 0.5) == 3  # round(3.5) = 4 zeros
    assert kept_count(18432, 0.9) == 1843


@settings(max_examples=60, deadline=None)
@given(shape=shapes, sparsity=st.floats(0, 0.99), seed=st.integers(0, 2**16))
def test_top_k_mask_keeps_exactly_the_largest(shape, sparsity, seed):
    scores = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    k = kept_count(scores.numel(), sparsity)
    mask = top_k_mask(scores, k)
    assert mask.shape == scores.shape and mask.dtype == torch.bool
    assert int(mask.sum()) == k
    if 0 < k < scores.numel():
        assert scores[mask].min() >= scores[~mask].max()


@settings(max_examples=60, deadline=None)
@given(shape=shapes, density=st.floats(0.05, 1), fraction=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_prune_lowest_removes_exactly_the_lowest_kept(shape, density, fraction, seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(shape, generator=generator)
    mask = top_k_mask(torch.rand(shape, generator=generator), max(1, round(density * scores.numel())))
    n_prune = round(fraction * int(mask.sum()))
    pruned = prune_lowest(mask, scores, n_prune)
    assert int(pruned.sum()) == n_prune
    assert not (pruned & ~mask).any(), "only kept positions can be pruned"
    survivors = mask & ~pruned
    if n_prune and survivors.any():
        assert scores[pruned].max() <= scores[survivors].min()


def test_prune_lowest_cannot_prune_more_than_is_kept():
    mask = torch.tensor([True, False, True, False])
    pruned = prune_lowest(mask, torch.zeros(4), 10)
    assert pruned.tolist() == [True, False, True, False]


@settings(max_examples=60, deadline=None)
@given(shape=shapes, density=st.floats(0, 0.95), grow_fraction=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_grow_random_grows_exactly_from_pruned_positions(shape, density, grow_fraction, seed):
    generator = torch.Generator().manual_seed(seed)
    mask = top_k_mask(torch.rand(shape, generator=generator), round(density * torch.Size(shape).numel()))
    free = int((~mask).sum())
    n_grow = round(grow_fraction * free)
    grown = grow_random(mask, n_grow, generator)
    assert int(grown.sum()) == n_grow
    assert not (grown & mask).any()


def test_grow_random_avoids_just_pruned_positions_while_it_can():
    mask = torch.zeros(10, dtype=torch.bool)
    avoid = torch.zeros(10, dtype=torch.bool)
    avoid[:6] = True
    grown = grow_random(mask, 4, torch.Generator().manual_seed(1), avoid=avoid)
    assert grown.tolist() == [False] * 6 + [True] * 4
    grown = grow_random(mask, 7, torch.Generator().manual_seed(1), avoid=avoid)
    assert int(grown.sum()) == 7 and grown[6:].all()


def test_grow_random_is_reproducible_for_a_seed():
    mask = torch.zeros(1000, dtype=torch.bool)
    first = grow_random(mask, 50, torch.Generator().manual_seed(3))
    second = grow_random(mask, 50, torch.Generator().manual_seed(3))
    other = grow_random(mask, 50, torch.Generator().manual_seed(4))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_clear_optimizer_state_zeroes_momentum_at_positions_only():
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    param.grad = torch.ones(4)
    optimizer.step()
    clear_optimizer_state(optimizer, param, torch.tensor([True, False, False, True]))
    assert optimizer.state[param]["momentum_buffer"].tolist() == [0.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("optimizer_class", [torch.optim.Adam, torch.optim.AdamW])
def test_clear_optimizer_state_covers_adam_moments(optimizer_class):
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = optimizer_class([param], lr=0.1)
    param.grad = torch.ones(3)
    optimizer.step()
    clear_optimizer_state(optimizer, param, torch.tensor([False, True, False]))
    state = optimizer.state[param]
    assert state["exp_avg"][1] == 0 and state["exp_avg_sq"][1] == 0
    assert state["exp_avg"][0] != 0 and state["exp_avg_sq"][2] != 0


def test_grow_highest_takes_the_best_scored_pruned_positions_outside_avoid_first():
    mask = torch.tensor([True, False, False, False, False, False])
    scores = torch.tensor([9.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    avoid = torch.tensor([False, True, False, False, False, False])
    assert grow_highest(mask, scores, 2, avoid=avoid).tolist() == [False, False, True, True, False, False]
    grown_all = grow_highest(mask, scores, 5, avoid=avoid)
    assert grown_all.tolist() == [False, True, True, True, True, True]


@pytest.mark.parametrize(("n_kept", "n_grow"), [(10, 3), (10, 25)])  # rejection sampling; rank all free
def test_random_regrowth_picks_every_pruned_position_equally_often(n_kept, n_grow):
    mask = torch.zeros(40, dtype=torch.bool)
    mask[torch.randperm(40, generator=torch.Generator().manual_seed(0))[:n_kept]] = True
    generator = torch.Generator().manual_seed(1)
    counts = torch.zeros(40)
    rounds = 3000
    for _ in range(rounds):
        grown = random_grow_positions(mask, n_grow, generator)
        assert grown.numel() == n_grow and grown.unique().numel() == n_grow
        counts[grown] += 1
    assert counts[mask].sum() == 0
    expected = rounds * n_grow / (40 - n_kept)  # 300 and 2500
    assert ((counts[~mask] - expected).abs() < 0.15 * expected).all(), counts[~mask].tolist()


def test_random_regrowth_takes_avoided_positions_only_after_all_others():
    mask = torch.zeros(100, dtype=torch.bool)
    mask[:50] = True
    avoid = torch.arange(50, 90)  # 10 pruned positions are not avoided
    grown = random_grow_positions(mask, 4, torch.Generator().manual_seed(0), avoid=avoid)
    assert sorted(grown.tolist())[0] >= 90 and grown.numel() == 4
    grown = random_grow_positions(mask, 15, torch.Generator().manual_seed(0), avoid=avoid)
    assert grown.numel() == 15 and grown.unique().numel() == 15
    assert set(range(90, 100)) <= set(grown.tolist())  # all 10 free ones, then 5 of the avoided
    assert all(50 <= position < 90 for position in set(grown.tolist()) - set(range(90, 100)))
