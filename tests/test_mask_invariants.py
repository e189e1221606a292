"""Property tests of the mask core that the example-based tests leave open: score-based regrowth,
the schedule cursor, per-layer ratios with both regrowth criteria, and a mid-run checkpoint."""

import dill
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from avalanche_sparcl.sparse.dynamic import DynamicSparsity, TDMSettings
from avalanche_sparcl.sparse.masks import grow_highest, kept_count, top_k_mask
from avalanche_sparcl.sparse.schedule import ExperienceSchedule, MaskUpdateKind, mask_updates

shapes = st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple)


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes,
    density=st.floats(0, 1),
    avoid_fraction=st.floats(0, 1),
    grow_fraction=st.floats(0, 1.2),
    seed=st.integers(0, 2**16),
)
def test_grow_highest_takes_the_best_free_positions_and_avoided_ones_last(
    shape, density, avoid_fraction, grow_fraction, seed
):
    generator = torch.Generator().manual_seed(seed)
    numel = torch.Size(shape).numel()
    mask = top_k_mask(torch.rand(shape, generator=generator), round(density * numel))
    avoid = ~mask & (torch.rand(shape, generator=generator) < avoid_fraction)
    scores = torch.rand(shape, generator=generator)
    free, preferred = ~mask, ~mask & ~avoid
    n_grow = round(grow_fraction * int(free.sum()))
    grown = grow_highest(mask, scores, n_grow, avoid=avoid)
    assert int(grown.sum()) == min(n_grow, int(free.sum()))
    assert not (grown & mask).any()
    if n_grow <= int(preferred.sum()):
        assert not (grown & avoid).any()
        pool = preferred
    else:
        assert grown[preferred].all()
        pool = avoid
    taken, passed_over = grown & pool, pool & ~grown
    if taken.any() and passed_over.any():
        assert scores[taken].min() >= scores[passed_over].max()


@settings(max_examples=80, deadline=None)
@given(
    n_epochs=st.integers(1, 30),
    update_every=st.floats(0.01, 1),
    freeze_at=st.floats(0.01, 1),
    iterations_per_epoch=st.integers(1, 12),
)
def test_the_cursor_fires_every_reachable_update_once_in_order(
    n_epochs, update_every, freeze_at, iterations_per_epoch
):
    updates = mask_updates(n_epochs, update_every, freeze_at)
    schedule = ExperienceSchedule(updates)
    fired = []
    for epoch in range(n_epochs):
        for iteration in range(iterations_per_epoch):
            before = schedule.next_index
            kind = schedule.due(epoch, iteration, iterations_per_epoch)
            assert (kind is None) == (schedule.next_index == before)
            if kind is not None:
                fired.append((kind, updates[before : schedule.next_index]))
    last_iteration = n_epochs - 1 + (iterations_per_epoch - 1) / iterations_per_epoch
    reachable = [update for update in updates if update.position <= last_iteration + 1e-9]
    assert [update for _, batch in fired for update in batch] == reachable  # later: finish_experience
    for kind, batch in fired:
        shrink_in_batch = MaskUpdateKind.SHRINK in [update.kind for update in batch]
        assert kind is (MaskUpdateKind.SHRINK if shrink_in_batch else MaskUpdateKind.MUTATE)
    positions = [update.position for update in updates]
    assert positions == sorted(set(positions))


def per_layer_engine(shapes, sparsities, expand, mutate, regrow, importance_lambda, seed):
    """An engine over random weights with one sparsity per layer; ratios clipped to what all allow."""
    torch.manual_seed(seed)
    params = {f"w{i}": torch.nn.Parameter(torch.randn(shape)) for i, shape in enumerate(shapes)}
    layer_sparsity = dict(zip(params, sparsities, strict=False))
    expand = min(expand, *layer_sparsity.values())
    mutate = min(mutate, *(min(s, 1 - s) for s in layer_sparsity.values()))
    options = {"importance_lambda": importance_lambda, "regrow": regrow, "seed": seed}
    tdm_settings = TDMSettings(
        min(layer_sparsity.values()), expand_ratio=expand, mutate_ratio=mutate, **options
    )
    return DynamicSparsity(params, layer_sparsity, tdm_settings)


def train_steps(engine, n_epochs, iterations_per_epoch, gradients, start=0, stop=None):
    """Drive the engine like a training loop over one experience, from step ``start`` to ``stop``."""
    steps = [(epoch, iteration) for epoch in range(n_epochs) for iteration in range(iterations_per_epoch)]
    kinds = []
    for epoch, iteration in steps[start:stop]:
        for param in engine.params.values():
            param.grad = torch.randn(param.shape, generator=gradients)
        kinds.append(engine.step(epoch, iteration, iterations_per_epoch))
        engine.observe_gradients()
        engine.mask_gradients()
        with torch.no_grad():
            for param in engine.params.values():
                param -= 0.1 * param.grad
        engine.mask_weights()
    return kinds


layer_shapes = st.lists(st.tuples(st.integers(1, 20), st.integers(1, 20)), min_size=1, max_size=3)
layer_sparsities = st.lists(st.floats(0.05, 0.95), min_size=3, max_size=3)


@settings(max_examples=40, deadline=None)
@given(
    shapes=layer_shapes,
    sparsities=layer_sparsities,
    expand=st.floats(0, 0.05),
    mutate=st.floats(0, 0.05),
    regrow=st.sampled_from(["random", "gradient"]),
    importance_lambda=st.sampled_from([0.0, 0.5, 3.0]),
    n_epochs=st.integers(1, 6),
    iterations_per_epoch=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_per_layer_ratios_hit_their_exact_counts_with_both_regrowth_criteria(
    shapes, sparsities, expand, mutate, regrow, importance_lambda, n_epochs, iterations_per_epoch, seed
):
    engine = per_layer_engine(shapes, sparsities, expand, mutate, regrow, importance_lambda, seed)
    target = {
        name: kept_count(param.numel(), engine.sparsities[name]) for name, param in engine.params.items()
    }
    assert engine.kept() == target
    gradients = torch.Generator().manual_seed(seed)
    for _ in range(2):
        engine.start_experience(n_epochs)
        expand_ratio = engine.settings.expand_ratio
        assert engine.kept() == {
            n: target[n] + round(p.numel() * expand_ratio) for n, p in engine.params.items()
        }
        kinds = train_steps(engine, n_epochs, iterations_per_epoch, gradients)
        if any(kind is not None for kind in kinds):
            assert engine.kept() == target
        engine.finish_experience()
        assert engine.kept() == target
        for name, param in engine.params.items():
            assert engine.masks[name].dtype == torch.bool and engine.masks[name].shape == param.shape
            assert not param.detach()[~engine.masks[name]].any()


@settings(max_examples=25, deadline=None)
@given(
    shapes=layer_shapes,
    sparsities=layer_sparsities,
    regrow=st.sampled_from(["random", "gradient"]),
    n_epochs=st.integers(1, 5),
    iterations_per_epoch=st.integers(1, 4),
    saved_after=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_an_engine_pickled_mid_experience_continues_exactly_like_the_original(
    shapes, sparsities, regrow, n_epochs, iterations_per_epoch, saved_after, seed
):
    """Masks, CWI window, schedule cursor and regrowth generator survive a dill round trip."""
    engine = per_layer_engine(shapes, sparsities, 0.05, 0.05, regrow, 0.5, seed)
    gradients = torch.Generator().manual_seed(seed)
    engine.start_experience(n_epochs)
    split = round(saved_after * n_epochs * iterations_per_epoch)
    train_steps(engine, n_epochs, iterations_per_epoch, gradients, stop=split)
    restored = dill.loads(dill.dumps(engine))
    restored_gradients = torch.Generator()
    restored_gradients.set_state(gradients.get_state())
    for copy, source in ((engine, gradients), (restored, restored_gradients)):
        train_steps(copy, n_epochs, iterations_per_epoch, source, start=split)
        copy.finish_experience()
        copy.start_experience(n_epochs)
        train_steps(copy, n_epochs, iterations_per_epoch, source)
    assert [repr(record) for record in restored.history] == [repr(record) for record in engine.history]
    assert torch.equal(restored.generator.get_state(), engine.generator.get_state())
    for name in engine.params:
        assert torch.equal(restored.masks[name], engine.masks[name])
        assert torch.equal(restored.params[name], engine.params[name])
