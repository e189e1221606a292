"""The TDM engine driven by a plain loop: exact counts, CWI choice, settings validation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from avalanche_sparcl.sparse.dynamic import DynamicSparsity, TDMSettings
from avalanche_sparcl.sparse.importance import ContinualWeightImportance, layer_groups
from avalanche_sparcl.sparse.masks import kept_count


def make_engine(shapes, sparsity=0.75, **options):
    torch.manual_seed(0)
    params = {f"w{i}": torch.nn.Parameter(torch.randn(shape)) for i, shape in enumerate(shapes)}
    return DynamicSparsity(params, dict.fromkeys(params, sparsity), TDMSettings(sparsity, **options))


def test_initial_mask_keeps_the_largest_magnitudes_and_zeroes_the_rest():
    torch.manual_seed(0)
    weight = torch.randn(40, 25)
    engine = DynamicSparsity(
        {"w": torch.nn.Parameter(weight.clone())}, {"w": 0.9}, TDMSettings(0.9, kept_scale="none")
    )
    mask = engine.masks["w"]
    assert int(mask.sum()) == 100
    assert weight.abs()[mask].min() >= weight.abs()[~mask].max()
    assert torch.equal(engine.params["w"].detach(), weight * mask)
    settings = TDMSettings(0.9, kept_scale="weight_variance")
    scaled = DynamicSparsity({"w": torch.nn.Parameter(weight.clone())}, {"w": 0.9}, settings)
    assert torch.equal(scaled.masks["w"], mask)  # rescaled: the same kept weights, smaller, per row
    ratios = scaled.params["w"].detach()[mask] / weight[mask]
    assert (ratios > 0).all() and (ratios < 1).all()


def test_cwi_prunes_by_weight_plus_mean_gradient_not_by_magnitude_alone():
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    importance = ContinualWeightImportance({"w": param}, gradient_weight=0.5)
    for gradient in ([8.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 2.0]):
        param.grad = torch.tensor(gradient)
        importance.accumulate()
    # mean |g| = [6, 0, 0, 1]  ->  CWI = [4, 2, 3, 4.5]
    assert importance.scores("w").tolist() == [4.0, 2.0, 3.0, 4.5]
    importance.reset()
    assert importance.scores("w").tolist() == [1.0, 2.0, 3.0, 4.0]


def test_shrink_prunes_the_lowest_importance_among_kept_weights():
    param = torch.nn.Parameter(torch.arange(1.0, 101.0))
    engine = DynamicSparsity({"w": param}, {"w": 0.5}, TDMSettings(0.5, expand_ratio=0.1))
    engine.start_experience(n_epochs=10)
    assert int(engine.masks["w"].sum()) == 60
    regrown = engine.masks["w"][:50].nonzero().squeeze(1)
    param.grad = torch.zeros(100)
    param.grad[regrown] = 1000.0  # the regrown weights got large gradients: CWI keeps them
    engine.observe_gradients()
    assert engine.step(epoch=1, iteration=0, iterations_per_epoch=1).value == "shrink"
    kept = engine.masks["w"]
    assert int(kept.sum()) == 50
    assert kept[regrown].all()
    assert kept[50:].sum() == 40 and not kept[50:60].any()  # the 10 smallest old weights went


@settings(max_examples=40, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 30), st.integers(1, 30)), min_size=1, max_size=3),
    sparsity=st.floats(0.05, 0.95),
    expand=st.floats(0, 0.05),
    mutate=st.floats(0, 0.05),
    n_epochs=st.integers(1, 12),
    iterations_per_epoch=st.integers(1, 5),
    n_experiences=st.integers(1, 3),
)
def test_every_update_hits_its_exact_count(
    shapes, sparsity, expand, mutate, n_epochs, iterations_per_epoch, n_experiences
):
    expand, mutate = min(expand, sparsity), min(mutate, sparsity, 1 - sparsity)
    engine = make_engine(shapes, sparsity, expand_ratio=expand, mutate_ratio=mutate)
    target = {n: kept_count(p.numel(), sparsity) for n, p in engine.params.items()}
    for _ in range(n_experiences):
        engine.start_experience(n_epochs)
        expanded = {n: target[n] + round(p.numel() * expand) for n, p in engine.params.items()}
        assert engine.kept() == expanded
        for epoch in range(n_epochs):
            for iteration in range(iterations_per_epoch):
                for param in engine.params.values():
                    param.grad = torch.randn_like(param)
                before = {n: m.clone() for n, m in engine.masks.items()}
                kind = engine.step(epoch, iteration, iterations_per_epoch)
                if kind is not None:
                    assert engine.kept() == target
                    if kind.value == "mutate":
                        for name, param in engine.params.items():
                            swap = min(
                                round(param.numel() * mutate), target[name], param.numel() - target[name]
                            )
                            assert int((before[name] & ~engine.masks[name]).sum()) == swap
                engine.observe_gradients()
                engine.mask_gradients()
                for name, param in engine.params.items():
                    assert not param.grad[~engine.masks[name]].any()
                    assert not param.detach()[~engine.masks[name]].any()
        engine.finish_experience()
        assert engine.kept() == target


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sparsity": 1.0}, "sparsity must be in [0, 1), got 1.0"),
        ({"sparsity": float("nan")}, "sparsity must be in [0, 1), got nan"),
        ({"sparsity": -0.1}, "sparsity must be in [0, 1), got -0.1"),
        ({"sparsity": "high"}, "sparsity must be a number in [0, 1), got 'high'"),
        ({"expand_ratio": -0.01}, "expand_ratio must be in [0, 0.75], got -0.01"),
        ({"expand_ratio": 0.8}, "expand_ratio must be in [0, 0.75], got 0.8"),
        ({"mutate_ratio": 0.3}, "mutate_ratio must be in [0, 0.25], got 0.3"),
        ({"update_every": 0}, "update_every must be in [0.001, 1], got 0.0"),
        ({"freeze_at": 1.5}, "freeze_at must be in (0, 1], got 1.5"),
        ({"importance_lambda": -1}, "importance_lambda must be a finite number >= 0, got -1"),
        ({"seed": 1.5}, "seed must be an integer in [0, 4294967295], got 1.5"),
        ({"regrow": "magnitude"}, "regrow must be one of random, gradient, got 'magnitude'"),
        (
            {"profile": {"a.weight": 0.5}, "mutate_ratio": 0.6},
            "mutate_ratio must be in [0, 0.5], got 0.6",
        ),
    ],
)
def test_settings_reject_bad_values_naming_argument_and_range(options, message):
    with pytest.raises(ValueError) as error:
        TDMSettings(**options)
    assert str(error.value) == message


def test_gradient_regrowth_picks_the_pruned_weights_with_the_largest_mean_gradient():
    """RigL-style baseline: magnitude prune (lambda 0) and gradient regrow on the same core."""
    param = torch.nn.Parameter(torch.arange(1.0, 11.0))
    settings = TDMSettings(0.5, importance_lambda=0, expand_ratio=0, mutate_ratio=0.2, regrow="gradient")
    engine = DynamicSparsity({"w": param}, {"w": 0.5}, settings)
    assert engine.masks["w"].nonzero().squeeze(1).tolist() == [5, 6, 7, 8, 9]
    engine.start_experience(n_epochs=10)
    param.grad = torch.tensor([0.0, 3.0, 0.0, 1.0, 2.0, 0, 0, 0, 0, 0])
    engine.observe_gradients()
    engine.step(epoch=1, iteration=0, iterations_per_epoch=1)  # shrink: nothing to shrink
    param.grad = torch.tensor([0.0, 3.0, 0.0, 1.0, 2.0, 0, 0, 0, 0, 0])
    engine.observe_gradients()
    assert engine.step(epoch=2, iteration=0, iterations_per_epoch=1).value == "mutate"
    assert engine.masks["w"].nonzero().squeeze(1).tolist() == [1, 4, 7, 8, 9]


def observed_iterations(engine, n_iterations):
    """Iterations of one epoch whose gradients feed CWI, driving the engine as TDMPlugin does."""
    param = engine.params["w0"]
    observed = []
    for iteration in range(n_iterations):
        engine.step(epoch=0, iteration=iteration, iterations_per_epoch=n_iterations)
        before = engine.importance.window_iterations
        param.grad = torch.ones_like(param)
        engine.observe_gradients()
        if engine.importance.window_iterations > before:
            observed.append(iteration)
    return observed


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"importance_window": 4}, [5, 6, 7, 8, 14, 15, 16, 17]),  # the 4 steps before steps 9 and 18
        ({"importance_window": 0}, list(range(18))),  # every step until the last update
        ({"importance_window": 4, "importance_lambda": 0}, []),  # magnitude prune, random regrow
        (
            {"importance_window": 4, "importance_lambda": 0, "regrow": "gradient"},
            [5, 6, 7, 8, 14, 15, 16, 17],
        ),
    ],
)
def test_cwi_accumulates_only_in_the_window_before_each_mask_update(options, expected):
    # 20 iterations per epoch: updates before step 9 (0.45 epochs, the shrink) and step 18 (0.9)
    engine = make_engine([(10, 10)], update_every=0.45, freeze_at=0.95, min_update_steps=0, **options)
    engine.start_experience(n_epochs=1, iterations_per_epoch=20)
    assert [round(u.position, 2) for u in engine.schedule.updates] == [0.45, 0.9]
    assert observed_iterations(engine, 20) == expected


def test_an_update_reads_the_mean_gradient_of_its_window_only():
    engine = make_engine(
        [(4,)], 0.5, expand_ratio=0.5, update_every=0.5, importance_window=2, min_update_steps=0
    )
    engine.start_experience(n_epochs=1, iterations_per_epoch=8)  # shrink before step 4
    param = engine.params["w0"]
    with torch.no_grad():
        param.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    seen = []
    for iteration, gradient in enumerate([[50.0, 0, 0, 0]] * 2 + [[0, 0, 4.0, 8.0], [0, 0, 8.0, 4.0]]):
        engine.step(epoch=0, iteration=iteration, iterations_per_epoch=8)
        param.grad = torch.tensor(gradient)
        engine.observe_gradients()
        seen.append(engine.importance.window_iterations)
    assert seen == [0, 0, 1, 2]  # steps 0 and 1 lie outside the 2-step window
    # CWI over the window: |w| + 0.5 * mean |g| = [1, 1, 4, 4]; steps 0-1's gradient of 50 is unread
    assert engine.step(epoch=0, iteration=4, iterations_per_epoch=8).value == "shrink"
    assert engine.masks["w0"].tolist() == [False, False, True, True]


def test_cwi_accumulates_in_groups_no_larger_than_the_largest_layer():
    sizes = {"a": 3, "b": 1, "c": 2, "d": 4, "e": 1}
    assert layer_groups(list(sizes), sizes) == [["a", "b"], ["c"], ["d"], ["e"]]
    assert layer_groups([], {}) == []


def test_cwi_sums_gradients_at_the_kept_weights_only():
    options = {"expand_ratio": 0.01, "importance_window": 0, "update_every": 0.5, "min_update_steps": 0}
    engine = make_engine([(10, 20)], sparsity=0.75, **options)
    engine.start_experience(n_epochs=1, iterations_per_epoch=10)  # the shrink comes before step 5
    kept = engine.masks["w0"].flatten().nonzero().squeeze(1)
    assert kept.numel() == 50 + 2  # 25% of 200, expanded by 1% of the layer
    param = engine.params["w0"]
    seen = []
    for iteration in range(3):
        engine.step(epoch=0, iteration=iteration, iterations_per_epoch=10)
        param.grad = torch.randn(10, 20, generator=torch.Generator().manual_seed(iteration))
        seen.append(param.grad.abs())
        engine.observe_gradients()
    sums = engine.importance.gradient_sums["w0"]
    assert sums.shape == (52,) and engine.importance.tracked["w0"].dtype == torch.int32
    expected = (sum(seen) / 3).flatten()
    assert torch.allclose(engine.importance.mean_gradient_at("w0", kept), expected[kept])
    dense = engine.importance.mean_gradient("w0").flatten()
    assert torch.allclose(dense[kept], expected[kept]) and dense[~engine.masks["w0"].flatten()].eq(0).all()


def test_cwi_from_a_checkpoint_without_tracked_positions_sums_everywhere():
    param = torch.nn.Parameter(torch.ones(3))
    importance = ContinualWeightImportance({"w": param})
    state = dict(vars(importance))
    del state["tracked"]  # as pickled by version 0.1.0
    restored = ContinualWeightImportance.__new__(ContinualWeightImportance)
    restored.__setstate__(state)
    param.grad = torch.tensor([1.0, -2.0, 3.0])
    restored.accumulate()
    assert restored.gradient_sums["w"].tolist() == [1.0, 2.0, 3.0]
