"""Short experiences, fewer than 10 epochs and fewer optimizer steps than each part's threshold (256 for
DDR and the masked head, 64 for DGM): DDR removes nothing, DGM masks no gradient and the masked head is
off, one warning each, so that SparCL on experiences of a few dozen steps trains exactly like TDM alone;
each rule's option forces its part back on, and longer experiences are left as the paper runs them
(tests/test_behaviour_digests.py)."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import small_der
from torch import nn

from avalanche_sparcl.models import SmallCNN
from avalanche_sparcl.plugins import DGMPlugin, ReservoirReplayPlugin, SparCLPlugin
from avalanche_sparcl.settings import (
    FULL_SCHEDULE_EPOCHS,
    SHORT_EXPERIENCE_STEPS,
    SHORT_GRADIENT_MASKING_STEPS,
    default,
    is_short_experience,
)
from avalanche_sparcl.sparse.gradient_masks import GradientMasking

EPOCHS = 3  # Split Digits: 3 epochs of 9 minibatches, 27 steps per experience


def train(plugins: list, experiences) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Final weights and the rule warnings of a seeded SmallCNN trained with DER++ on ``experiences``."""
    torch.manual_seed(0)
    model = SmallCNN()
    strategy = small_der(model, plugins, EPOCHS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for experience in experiences:
            strategy.train(experience)
    messages = [str(w.message) for w in caught if "Plugin: an experience of" in str(w.message)]
    return {name: value.clone() for name, value in model.state_dict().items()}, messages


DGM_SHORT_WARNING = (
    "DGMPlugin: an experience of 27 optimizer steps (3 epochs of 9 minibatches) is shorter than "
    "min_gradient_masking_steps=64: every gradient of the kept weights is needed at so few steps, so "
    "DGM masks no gradient in such experiences; min_gradient_masking_steps=0 forces DGM; this warning "
    "is given once"
)
HEAD_SHORT_WARNING = (
    "MaskedHeadPlugin: an experience of 27 optimizer steps (3 epochs of 9 minibatches) is shorter than "
    "min_masked_head_steps=256: there the current classes need their own examples to compete with the "
    "old ones, so the head is not masked in such experiences; min_masked_head_steps=0 forces it; this "
    "warning is given once"
)
DDR_SHORT_WARNING = (
    "DDRPlugin: an experience of 27 optimizer steps (3 epochs of 9 minibatches) is shorter than "
    "min_experience_steps=256: the network still needs every example, so no data is removed from such "
    "experiences; min_experience_steps=0 forces removal; removal_ratio=0 turns DDR off; this warning is "
    "given once"
)


def test_the_three_rules_share_one_definition_of_short_with_their_own_thresholds():
    assert (SHORT_EXPERIENCE_STEPS, SHORT_GRADIENT_MASKING_STEPS, FULL_SCHEDULE_EPOCHS) == (256, 64, 10)
    names = ("min_experience_steps", "min_gradient_masking_steps", "min_masked_head_steps")
    assert [default(name) for name in names] == [256, 64, 256]
    assert [is_short_experience(9, 28, 256), is_short_experience(9, 29, 256)] == [True, False]
    assert [is_short_experience(10, 1, 256), is_short_experience(3, None, 256)] == [False, False]


def test_short_experiences_train_full_sparcl_exactly_like_tdm_alone(digits_benchmark):
    """Two experiences of 27 steps: the default SparCLPlugin with the masked head gives TDM's weights
    to the bit, with one warning per rule, no gradient mask and no data removed."""
    experiences = digits_benchmark.train_stream[:2]
    sparcl = SparCLPlugin(0.75, masked_head=True)
    full, messages = train([ReservoirReplayPlugin(100), sparcl], experiences)
    tdm_alone, tdm_messages = train(
        [ReservoirReplayPlugin(100), SparCLPlugin(0.75, removal_ratio=0, gradient_sparsity=0)], experiences
    )
    assert sorted(messages) == sorted([DDR_SHORT_WARNING, HEAD_SHORT_WARNING, DGM_SHORT_WARNING])
    assert tdm_messages == []
    assert all(torch.equal(full[name], tdm_alone[name]) for name in full)
    assert sparcl.gradient_masks == {}
    assert [record.stages for record in sparcl.ddr.stage_counts] == [[], []]
    assert sparcl.dgm.gradient_masking.active is False


@pytest.mark.parametrize("forced", [{"min_gradient_masking_steps": 0}, {"min_gradient_masking_steps": 27}])
def test_dgm_masks_an_experience_of_at_least_its_min_steps(digits_benchmark, forced):
    """27 steps meet a threshold of 27 (or 0): each layer applies 80% of its kept weights' gradients."""
    sparcl = SparCLPlugin(0.75, removal_ratio=0, **forced)
    _, messages = train([sparcl], digits_benchmark.train_stream[:1])
    assert messages == []
    applied, kept = sparcl.gradient_masks, sparcl.masks
    assert sorted(applied) == sorted(kept) and len(applied) == 2
    assert all(int(applied[name].sum()) == round(0.8 * int(kept[name].sum())) for name in applied)


def test_standalone_dgm_follows_the_rule_and_its_option(digits_benchmark):
    """DGM without TDM: no gradient mask at 27 steps, every trainable weight layer masked with the
    rule off."""
    short, forced = DGMPlugin(0.2), DGMPlugin(0.2, min_gradient_masking_steps=0)
    _, messages = train([short], digits_benchmark.train_stream[:1])
    assert messages == [DGM_SHORT_WARNING]
    assert short.gradient_masks == {}
    train([forced], digits_benchmark.train_stream[:1])
    assert len(forced.gradient_masks) == 2
    assert all(int(mask.sum()) == round(0.8 * mask.numel()) for mask in forced.gradient_masks.values())


def test_masked_head_forced_on_changes_the_training(digits_benchmark):
    """With ``min_masked_head_steps=0`` the 27-step experiences train on the masked logits again (other
    weights than without the head); DDR and DGM stay off by their rules."""
    experiences = digits_benchmark.train_stream[:2]
    buffer = ReservoirReplayPlugin
    forced, forced_messages = train(
        [buffer(100), SparCLPlugin(0.75, masked_head=True, min_masked_head_steps=0)], experiences
    )
    unmasked, _ = train([buffer(100), SparCLPlugin(0.75, masked_head=False)], experiences)
    assert sorted(forced_messages) == sorted([DDR_SHORT_WARNING, DGM_SHORT_WARNING])
    assert not torch.equal(forced["classifier.weight"], unmasked["classifier.weight"])


def test_gradient_masking_is_active_from_min_steps_or_ten_epochs_and_when_the_length_is_unknown():
    param = nn.Parameter(torch.ones(10))
    masking = GradientMasking({"w": param}, gradient_sparsity=0.5, refresh_every=30, min_steps=256)
    lengths = (((8, 32), True), ((5, 51), False), ((10, 1), True), ((9, None), True), ((None, None), True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for (epochs, minibatches), active in (*lengths, ((1, 9), False)):
            masking.start_experience(epochs, minibatches)
            assert masking.active is active
            param.grad = torch.arange(10.0)
            assert masking.apply() is active
            assert int((param.grad != 0).sum()) == (5 if active else 9)
    assert [str(warning.message)[:60] for warning in caught] == [
        "DGMPlugin: an experience of 255 optimizer steps (5 epochs of"
    ]

