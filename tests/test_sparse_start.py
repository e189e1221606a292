"""How the masked layers start: the kept weights' scale, ERK layer densities and the first
experience's sparsity ramp (exact counts, and the variance of the initial kept weights)."""

import math

import pytest
import torch
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from avalanche_sparcl.benchmarks import split_digits
from avalanche_sparcl.metrics import flops_metrics
from avalanche_sparcl.models import SmallCNN
from avalanche_sparcl.plugins import TDMPlugin
from avalanche_sparcl.sparse.dynamic import DynamicSparsity, TDMSettings
from avalanche_sparcl.sparse.layers import erk_sparsities
from avalanche_sparcl.sparse.masks import kept_count

SMALL_CNN_MASKED = {"conv2.weight": (64, 32, 3, 3), "conv3.weight": (64, 64, 3, 3)}


def conv_engine(sparsity: float, seed: int = 0, **options) -> tuple[DynamicSparsity, torch.Tensor]:
    """An engine on one conv weight of torch's default initialisation, and that weight before masking."""
    torch.manual_seed(seed)
    weight = nn.Conv2d(64, 64, 3).weight
    initial = weight.detach().clone()
    engine = DynamicSparsity({"w": weight}, {"w": sparsity}, TDMSettings(sparsity, **options))
    return engine, initial


def test_erk_spreads_the_same_total_over_small_cnn_layers():
    """Density proportional to sum(shape)/prod(shape): conv2 (fewer inputs) stays denser."""
    sparsities = erk_sparsities(SMALL_CNN_MASKED, 0.75)
    assert sparsities["conv2.weight"] == pytest.approx(1 - 102 / 18432 * 13824 / (102 + 134))
    kept = sum((1 - sparsities[name]) * math.prod(shape) for name, shape in SMALL_CNN_MASKED.items())
    assert kept == pytest.approx(0.25 * (18432 + 36864))
    assert round(sparsities["conv2.weight"], 4) == 0.6758
    assert round(sparsities["conv3.weight"], 4) == 0.7871


def test_erk_keeps_layers_dense_that_the_rule_would_make_denser_than_dense():
    sparsities = erk_sparsities({"small": (4, 4), "large": (400, 400)}, 0.5)
    assert sparsities["small"] == 0.0
    assert sparsities["large"] == pytest.approx(1 - (0.5 * 160016 - 16) / 160000)


def test_settings_give_erk_sparsities_to_the_default_layers():
    params = {name: torch.zeros(shape) for name, shape in SMALL_CNN_MASKED.items()}
    assert TDMSettings(0.75).sparsities_of(params) == dict.fromkeys(SMALL_CNN_MASKED, 0.75)
    assert TDMSettings(0.75, layer_densities="erk").sparsities_of(params) == erk_sparsities(
        SMALL_CNN_MASKED, 0.75
    )


def test_weight_variance_scaling_gives_kept_weights_the_dense_initialisation_variance():
    """Magnitude selection keeps a uniform initialisation's tail (2.3x its variance at 75%); the
    scaling brings each unit's kept weights back to its dense weights' mean square."""
    plain, initial = conv_engine(0.75, kept_scale="none")
    scaled, same_initial = conv_engine(0.75, kept_scale="weight_variance")
    assert torch.equal(initial, same_initial)
    assert torch.equal(plain.masks["w"], scaled.masks["w"])
    mask = scaled.masks["w"]
    assert int(mask.sum()) == kept_count(mask.numel(), 0.75) == 9216
    dense_variance = 1 / (3 * 64 * 9)  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    unscaled = plain.params["w"].detach()[mask].pow(2).mean().item()
    assert unscaled / dense_variance == pytest.approx(2.31, abs=0.03)
    kept = scaled.params["w"].detach()
    assert kept[mask].pow(2).mean().item() / dense_variance == pytest.approx(1.0, abs=0.03)
    rows, row_masks = kept.reshape(64, -1), mask.reshape(64, -1)
    for row, row_mask, dense_row in zip(rows, row_masks, initial.reshape(64, -1), strict=True):
        assert row[row_mask].pow(2).mean().item() == pytest.approx(dense_row.pow(2).mean().item(), rel=1e-5)
    assert not kept[~mask].any()


def test_unit_variance_scaling_keeps_each_units_squared_sum():
    scaled, initial = conv_engine(0.9, kept_scale="unit_variance")
    kept = scaled.params["w"].detach().reshape(64, -1)
    assert int(scaled.masks["w"].sum()) == kept_count(kept.numel(), 0.9)
    assert torch.allclose(kept.pow(2).sum(1), initial.reshape(64, -1).pow(2).sum(1), rtol=1e-5)


def test_auto_rescales_when_the_first_experience_is_short():
    """The default decides at the first experience: 3 epochs of 9 steps (27 < 256) rescale as
    weight_variance does, 2 epochs of 128 (256) and an unknown length leave the weights as drawn."""
    scaled, initial = conv_engine(0.75, kept_scale="weight_variance")
    for steps, rescaled in (((3, 9), True), ((2, 128), False), ((3, None), False)):
        engine, _ = conv_engine(0.75)
        assert engine.settings.kept_scale == "auto"
        mask = engine.masks["w"]
        assert torch.equal(engine.params["w"].detach(), initial * mask)  # not yet decided
        engine.start_experience(n_epochs=steps[0], iterations_per_epoch=steps[1])  # expands, at zero
        expected = scaled.params["w"] if rescaled else initial * mask
        assert torch.equal(engine.params["w"].detach(), expected.detach())
        assert engine.kept_scale_rule == ("weight_variance" if rescaled else "none")
        engine.start_experience(n_epochs=1, iterations_per_epoch=1)  # decided once, never again
        assert engine.kept_scale_rule == ("weight_variance" if rescaled else "none")


def test_none_leaves_the_kept_weights_as_drawn():
    plain, initial = conv_engine(0.75, kept_scale="none")
    plain.start_experience(n_epochs=1, iterations_per_epoch=9)
    assert torch.equal(plain.params["w"].detach(), initial * plain.masks["w"])


def ramp_engine(steps: int = 4) -> tuple[DynamicSparsity, torch.nn.Parameter]:
    param = torch.nn.Parameter(torch.arange(1.0, 101.0))
    engine = DynamicSparsity(
        {"w": param}, {"w": 0.75}, TDMSettings(0.75, ramp_steps=steps, min_update_steps=0)
    )
    return engine, param


def test_ramp_prunes_the_first_experience_from_dense_along_the_cubic():
    """100 weights to 25 over 4 steps: 25 + round(75 * (1 - t/4)^3) = 100, 57, 34, 26, 25."""
    engine, param = ramp_engine()
    assert engine.kept() == {"w": 100}  # dense until the ramp starts
    engine.start_experience(n_epochs=2)
    kept = []
    for iteration in range(6):
        engine.step(epoch=0, iteration=iteration, iterations_per_epoch=10)
        kept.append(engine.kept()["w"])
    assert kept == [100, 57, 34, 26, 25, 25]
    assert [record.kind for record in engine.history] == ["ramp"] * 4
    assert [record.pruned["w"] for record in engine.history] == [43, 23, 8, 1]
    assert engine.masks["w"].nonzero().squeeze(1).tolist() == list(range(75, 100))  # the largest
    assert not param.detach()[:75].any()
    assert engine.ramp_step == -1


def test_updates_due_during_the_ramp_lapse_and_later_ones_run():
    """Two epochs of 10 steps, updates every 0.2 epochs up to 0.9: the ramp owns steps 0-4, the
    shrink due at step 4 lapses, the mutation at step 6 swaps within the target."""
    engine, _ = ramp_engine()
    engine.start_experience(n_epochs=2, iterations_per_epoch=10)
    kinds = []
    for step in range(20):
        kind = engine.step(epoch=step // 10, iteration=step % 10, iterations_per_epoch=10)
        kinds.append(None if kind is None else kind.value)
    assert kinds[:5] == [None] * 5
    assert [record.kind for record in engine.history[4:]] == ["mutate"] * 6
    assert engine.kept() == {"w": 25}


def test_only_the_first_experience_ramps():
    engine, _ = ramp_engine()
    engine.start_experience(n_epochs=1)
    for iteration in range(5):
        engine.step(epoch=0, iteration=iteration, iterations_per_epoch=5)
    engine.finish_experience()
    engine.start_experience(n_epochs=1)
    assert engine.ramp_step == -1
    assert engine.history[-1].kind == "expand" and engine.kept() == {"w": 26}


def test_a_first_experience_shorter_than_the_ramp_ends_at_the_target():
    engine, _ = ramp_engine(steps=10)
    engine.start_experience(n_epochs=1)
    for iteration in range(3):
        engine.step(epoch=0, iteration=iteration, iterations_per_epoch=3)
    assert engine.kept()["w"] > 25
    engine.finish_experience()
    assert engine.kept() == {"w": 25}


def test_the_ramps_denser_steps_are_counted_in_train_flops():
    """One epoch of Split Digits' first experience in minibatches of 32 with a 6-step ramp: step i
    costs conv2 its kept share ramp_kept(i) / numel of a dense step, the later ones the target's."""
    torch.manual_seed(0)
    experience = split_digits(n_experiences=5, seed=0).train_stream[0]
    model = SmallCNN()
    tdm = TDMPlugin(sparsity=0.75, ramp_steps=6, expand_ratio=0.0, mutate_ratio=0.0)
    flops = flops_metrics()[0]
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        train_mb_size=32,
        train_epochs=1,
        plugins=[tdm],
        evaluator=EvaluationPlugin(flops),
    )
    strategy.train(experience)
    samples = len(experience.dataset)
    batches = [min(32, samples - start) for start in range(0, samples, 32)]
    engine = tdm.dynamic_sparsity
    numel = 64 * 32 * 9
    kept = [engine.ramp_kept("conv2.weight", step) for step in range(len(batches))]
    assert kept[:8] == [18432, 12608, 8704, 6336, 5120, 4672, 4608, 4608]  # 4608 + 13824 (1 - i/6)^3
    per_sample = 2 * 64 * 32 * 9 * 64  # conv2's MACs per 8x8 image, twice
    expected = per_sample + sum(
        per_sample * batch * k / numel for batch, k in zip(batches, kept, strict=True)
    )
    assert flops.counter.per_layer()["conv2.weight"].forward == pytest.approx(expected, rel=1e-12)
    assert [record.kind for record in engine.history] == ["ramp"] * 6
