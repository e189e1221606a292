"""The short-schedule rules: mask updates spaced in optimizer steps, a fixed mask and no data removal
where an experience is too short for them, one warning each, and the one-pass plugin."""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import torch
from avalanche.benchmarks.scenarios.online import split_online_stream
from avalanche.training import Naive
from conftest import small_der

from avalanche_sparcl.models import SmallCNN
from avalanche_sparcl.plugins import DDRPlugin, SparCLPlugin, TDMPlugin
from avalanche_sparcl.sparse.schedule import MaskUpdate, MaskUpdateKind, mask_updates, space_updates

SHRINK, MUTATE = MaskUpdateKind.SHRINK, MaskUpdateKind.MUTATE
DIGITS_MINIBATCHES = 9  # Split Digits: about 270 training images per experience, batch 32


def positions(updates: list[MaskUpdate]) -> list[tuple[float, MaskUpdateKind]]:
    return [(update.position, update.kind) for update in updates]


def test_paper_schedule_is_unchanged_even_with_one_minibatch_per_epoch():
    """Updates every 5 of 50 epochs are whole epochs apart: spacing never drops one."""
    paper = mask_updates(50, 0.1, 0.9)
    assert space_updates(paper, 1, 16) == paper
    assert positions(paper) == [(5.0, SHRINK)] + [(float(epoch), MUTATE) for epoch in range(10, 45, 5)]


def test_three_digits_epochs_keep_one_update_per_epoch_of_steps():
    """27 steps: updates every 0.3 epochs (2.7 steps) thin out to the shrink at epoch 1.2 (step 11)
    and one mutation at 2.4 (step 22), each at least an epoch after the previous one."""
    scheduled = mask_updates(3, 0.1, 0.9)
    assert len(scheduled) == 8
    assert positions(space_updates(scheduled, DIGITS_MINIBATCHES, 16)) == [(1.2, SHRINK), (2.4, MUTATE)]


def test_steps_alone_can_space_updates_within_an_epoch():
    """One epoch of 40 minibatches, updates every 4 steps: kept at steps 16 and 32 (the first is the
    shrink, whichever update of the schedule it was)."""
    scheduled = mask_updates(1, 0.1, 0.9)
    assert positions(space_updates(scheduled, 40, 16)) == [(0.4, SHRINK), (0.8, MUTATE)]


def test_one_digits_epoch_has_no_room_for_an_update():
    assert space_updates(mask_updates(1, 0.1, 0.9), DIGITS_MINIBATCHES, 16) == []


def test_long_epochs_and_rule_off_keep_every_update():
    scheduled = mask_updates(1, 0.1, 0.9)
    assert space_updates(scheduled, 375, 16) == scheduled  # Split Fashion-MNIST: 37.5 steps apart
    assert space_updates(mask_updates(3, 0.1, 0.9), DIGITS_MINIBATCHES, 0) == mask_updates(3, 0.1, 0.9)



def train_recording_warnings(strategy, experiences) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for experience in experiences:
            strategy.train(experience)
    return [str(w.message) for w in caught if "Plugin:" in str(w.message)]


TDM_FIXED_MASK_WARNING = (
    "TDMPlugin: an experience of 9 optimizer steps (1 epoch of 9 minibatches) has no room for a mask "
    "update at least min_update_steps=16 steps or one epoch after its start and before the freeze "
    "(freeze_at=0.9), so the mask stays fixed in such experiences: sparse from the first step, no "
    "expansion, shrink or mutation. min_update_steps=0 forces the scheduled updates; this warning is "
    "given once"
)


def test_one_epoch_experiences_keep_the_initial_mask_and_warn_once(digits_benchmark):
    torch.manual_seed(0)
    model, tdm = SmallCNN(), TDMPlugin(0.75)
    strategy = small_der(model, [tdm], epochs=1)
    experiences = digits_benchmark.train_stream[:3]
    messages = train_recording_warnings(strategy, experiences[:1])
    initial = {name: mask.clone() for name, mask in tdm.masks.items()}
    messages += train_recording_warnings(strategy, experiences[1:])
    assert messages == [TDM_FIXED_MASK_WARNING]
    assert tdm.dynamic_sparsity.fixed_mask_experiences == [0, 1, 2]
    assert tdm.dynamic_sparsity.history == []  # no expansion, shrink or mutation
    assert all(torch.equal(tdm.masks[name], initial[name]) for name in initial)
    params = dict(model.named_parameters())
    assert all(not params[name].detach()[~mask].any() for name, mask in tdm.masks.items())


def test_min_update_steps_0_forces_the_scheduled_updates(digits_benchmark):
    torch.manual_seed(0)
    tdm = TDMPlugin(0.75, min_update_steps=0)
    strategy = small_der(SmallCNN(), [tdm], epochs=1)
    assert train_recording_warnings(strategy, digits_benchmark.train_stream[:1]) == []
    kinds = [record.kind for record in tdm.dynamic_sparsity.history]
    assert kinds == ["expand", "shrink"] + ["mutate"] * 7  # positions 0.1 .. 0.8 of the epoch
    assert tdm.dynamic_sparsity.fixed_mask_experiences == []


def test_three_digits_epochs_update_at_epochs_1_2_and_2_4(digits_benchmark):
    torch.manual_seed(0)
    tdm = TDMPlugin(0.75)
    strategy = small_der(SmallCNN(), [tdm], epochs=3)
    assert train_recording_warnings(strategy, digits_benchmark.train_stream[:1]) == []
    history = [(record.position, record.kind) for record in tdm.dynamic_sparsity.history]
    assert history == [(0.0, "expand"), (1.2222222222222223, "shrink"), (2.4444444444444446, "mutate")]


DDR_SHORT_WARNING = (
    "DDRPlugin: an experience of 45 optimizer steps (5 epochs of 9 minibatches) is shorter than "
    "min_experience_steps=256: the network still needs every example, so no data is removed from such "
    "experiences; min_experience_steps=0 forces removal; removal_ratio=0 turns DDR off; this warning "
    "is given once"
)


def test_ddr_keeps_all_data_of_short_experiences_and_warns_once(digits_benchmark):
    torch.manual_seed(0)
    ddr = DDRPlugin()
    strategy = small_der(SmallCNN(), [ddr], epochs=5)
    messages = train_recording_warnings(strategy, digits_benchmark.train_stream[:2])
    assert messages == [DDR_SHORT_WARNING]
    assert [record.stages for record in ddr.stage_counts] == [[], []]


@pytest.mark.parametrize(("epochs", "options"), [(5, {"min_experience_steps": 0}), (10, {})])
def test_ddr_removes_with_the_rule_off_or_from_ten_epochs(digits_benchmark, epochs, options):
    """10 epochs of 9 minibatches (90 steps) are long enough; 5 epochs only with the rule off."""
    torch.manual_seed(0)
    ddr = DDRPlugin(**options)
    strategy = small_der(SmallCNN(), [ddr], epochs=epochs)
    assert train_recording_warnings(strategy, digits_benchmark.train_stream[:1]) == []
    size = len(digits_benchmark.train_stream[0].dataset)
    stages = ddr.stage_counts[0].stages
    assert [stage.epoch for stage in stages] == [2, 4] if epochs == 10 else [2]
    assert sum(stage.removed for stage in stages) == round(0.3 * size)


def test_ddr_ten_epochs_of_one_minibatch_still_remove():
    """The epoch escape: 10 epochs always leave room (two-epoch windows, six epochs after the cutoff)."""
    from avalanche_sparcl.data_removal import DDRSettings, DynamicDataRemoval

    removal = DynamicDataRemoval(DDRSettings())
    assert [stage.epoch for stage in removal.start_experience(0, 40, 10, iterations_per_epoch=1)] == [2, 4]
    assert removal.start_experience(1, 40, 9, iterations_per_epoch=28) == []  # 252 steps
    assert [stage.epoch for stage in removal.start_experience(2, 40, 9, iterations_per_epoch=29)] == [3]


def test_one_epoch_default_plugin_trains_exactly_like_one_pass(digits_benchmark):
    """At one epoch TDM's and DDR's rules reduce SparCLPlugin() to SparCLPlugin.one_pass(), which keeps
    DGM on at any length: same weights as the default plugin with DGM's rule off."""
    results = []
    for plugin_factory in (partial(SparCLPlugin, min_gradient_masking_steps=0), SparCLPlugin.one_pass):
        torch.manual_seed(0)
        model, plugin = SmallCNN(), plugin_factory()
        strategy = small_der(model, [plugin], epochs=1)
        messages = train_recording_warnings(strategy, digits_benchmark.train_stream[:2])
        results.append((model.state_dict(), messages, plugin))
    (default_state, default_messages, _), (one_pass_state, one_pass_messages, one_pass) = results
    assert all(torch.equal(default_state[key], one_pass_state[key]) for key in default_state)
    assert [message.split(":")[0] for message in default_messages] == ["DDRPlugin", "TDMPlugin"]
    assert one_pass_messages == []
    assert one_pass.ddr is None and one_pass.dgm is not None
    assert one_pass.tdm.settings.expand_ratio == 0.0 and one_pass.tdm.settings.update_every == 1.0


def test_one_pass_on_an_online_stream_is_sparse_from_the_first_step(digits_benchmark):
    """Avalanche's online stream: each experience is one minibatch of 32, trained once."""
    torch.manual_seed(0)
    model, plugin = SmallCNN(), SparCLPlugin.one_pass(0.9)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.03),
        train_mb_size=32,
        train_epochs=1,
        evaluator=None,
        plugins=[plugin],
    )
    stream = split_online_stream(digits_benchmark.train_stream[:1], experience_size=32, seed=0)
    mini_experiences = list(stream)
    assert len(mini_experiences) == 9
    initial_masks = None
    for experience in mini_experiences:
        strategy.train(experience)
        if initial_masks is None:
            initial_masks = {name: mask.clone() for name, mask in plugin.masks.items()}
    params = dict(model.named_parameters())
    for name, mask in plugin.masks.items():
        assert torch.equal(mask, initial_masks[name])
        assert int(mask.sum()) == round(0.1 * mask.numel())
        assert not params[name].detach()[~mask].any()
    applied = plugin.gradient_masks
    assert sorted(applied) == sorted(plugin.masks)
    assert all(int(applied[name].sum()) == round(0.8 * int(plugin.masks[name].sum())) for name in applied)
