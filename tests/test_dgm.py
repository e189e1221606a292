"""DGM: exact gradient selection among active weights, standalone and next to TDM."""

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from conftest import DGM_RULES_OFF
from hypothesis import given, settings
from hypothesis import strategies as st

from avalanche_sparcl import DGMPlugin, TDMPlugin
from avalanche_sparcl.models import SmallCNN
from avalanche_sparcl.sparse.gradient_masks import GradientMasking
from avalanche_sparcl.sparse.masks import kept_count, top_k_mask


@settings(max_examples=50, deadline=None)
@given(
    numel=st.integers(1, 400),
    density=st.floats(0.05, 1),
    gradient_sparsity=st.floats(0, 0.99),
    seed=st.integers(0, 2**16),
)
def test_refresh_keeps_exactly_the_largest_active_gradients(numel, density, gradient_sparsity, seed):
    generator = torch.Generator().manual_seed(seed)
    param = torch.nn.Parameter(torch.zeros(numel))
    active = top_k_mask(torch.rand(numel, generator=generator), max(1, round(density * numel)))
    gradient = torch.randn(numel, generator=generator) * active
    param.grad = gradient.clone()
    masking = GradientMasking({"w": param}, gradient_sparsity, refresh_every=30)
    assert masking.apply({"w": active}) is True
    selected = masking.masks["w"]
    n_active = int(active.sum())
    assert int(selected.sum()) == kept_count(n_active, gradient_sparsity)
    assert not (selected & ~active).any()
    if selected.any() and (active & ~selected).any():
        assert gradient.abs()[selected].min() >= gradient.abs()[active & ~selected].max()
    assert torch.equal(param.grad, gradient * selected)


def test_stale_mask_is_reapplied_between_refreshes():
    param = torch.nn.Parameter(torch.zeros(10))
    masking = GradientMasking({"w": param}, gradient_sparsity=0.5, refresh_every=3)
    refreshed = []
    for step in range(7):
        param.grad = torch.arange(10.0) if step < 3 else torch.arange(10.0).flip(0)
        refreshed.append(masking.apply())
        if step < 3:  # selected at step 0: entries 5..9
            assert param.grad.nonzero().squeeze(1).tolist() == [5, 6, 7, 8, 9]
        elif step < 6:  # refreshed at step 3 on the flipped gradient: entries 0..4
            assert param.grad.nonzero().squeeze(1).tolist() == [0, 1, 2, 3, 4]
    assert refreshed == [True, False, False, True, False, False, True]


def test_gradient_sparsity_counts_over_active_weights_not_the_whole_tensor():
    """At 90% weight sparsity, 0.2 still drops 20% of the active gradients (the reference drops none)."""
    param = torch.nn.Parameter(torch.zeros(1000))
    active = torch.zeros(1000, dtype=torch.bool)
    active[:100] = True
    param.grad = torch.rand(1000) * active
    masking = GradientMasking({"w": param}, gradient_sparsity=0.2, refresh_every=30)
    masking.apply({"w": active})
    assert int((param.grad != 0).sum()) == 80


class GradientAudit(SupervisedPlugin):
    """After the optimizer step, counts the gradients it applied."""

    def __init__(self, weight_masks, gradient_masks, gradient_sparsity):
        super().__init__()
        self.weight_masks, self.gradient_masks = weight_masks, gradient_masks
        self.gradient_sparsity = gradient_sparsity
        self.iterations = 0

    def after_update(self, strategy, **kwargs):
        params = dict(strategy.model.named_parameters())
        gradient_masks = self.gradient_masks()
        assert gradient_masks, "no gradient masks"
        for name, selected in gradient_masks.items():
            active = self.weight_masks()[name] if self.weight_masks() else torch.ones_like(selected)
            allowed = kept_count(int(active.sum()), self.gradient_sparsity)
            assert int(selected.sum()) == allowed, name
            assert not (selected & ~active).any(), name
            nonzero = params[name].grad != 0
            assert int(nonzero.sum()) <= allowed, name
            assert not (nonzero & ~active).any(), f"pruned weights of {name} got a gradient"
        self.iterations += 1


def test_standalone_dgm_masks_the_default_layers_of_a_dense_model(digits_benchmark):
    torch.manual_seed(0)
    model = SmallCNN()
    dgm = DGMPlugin(gradient_sparsity=0.3, refresh_every=4, **DGM_RULES_OFF)
    audit = GradientAudit(lambda: {}, lambda: dgm.gradient_masks, 0.3)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.03),
        train_mb_size=64,
        train_epochs=2,
        plugins=[dgm, audit],
        evaluator=EvaluationPlugin(loggers=[]),
    )
    strategy.train(digits_benchmark.train_stream[0])
    assert sorted(dgm.gradient_masks) == ["conv2.weight", "conv3.weight"]
    assert audit.iterations == 10


def test_dgm_after_tdm_selects_among_the_kept_weights(digits_benchmark):
    torch.manual_seed(0)
    model = SmallCNN()
    tdm, dgm = TDMPlugin(sparsity=0.9), DGMPlugin(gradient_sparsity=0.2, refresh_every=30, **DGM_RULES_OFF)
    audit = GradientAudit(lambda: tdm.masks, lambda: dgm.gradient_masks, 0.2)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9),
        train_mb_size=32,
        train_epochs=2,
        plugins=[tdm, dgm, audit],
        evaluator=EvaluationPlugin(loggers=[]),
    )
    for experience in digits_benchmark.train_stream[:2]:
        strategy.train(experience)
    assert audit.iterations == 2 * 2 * 9
    assert {name: int(mask.sum()) for name, mask in dgm.gradient_masks.items()} == {
        "conv2.weight": 1843 - 369,
        "conv3.weight": 3686 - 737,
    }


def test_tdm_listed_after_dgm_is_rejected_before_training(digits_benchmark):
    model = SmallCNN()
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.03),
        train_mb_size=64,
        plugins=[DGMPlugin(), TDMPlugin()],
        evaluator=EvaluationPlugin(loggers=[]),
    )
    with pytest.raises(ValueError) as error:
        strategy.train(digits_benchmark.train_stream[0])
    assert str(error.value) == (
        "TDMPlugin must be listed before DGMPlugin in plugins=[...]: TDM's importance reads the gradients "
        "before DGM masks them (or use SparCLPlugin, which orders its parts itself)"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gradient_sparsity": 1.0}, "gradient_sparsity must be in [0, 1), got 1.0"),
        ({"gradient_sparsity": float("nan")}, "gradient_sparsity must be in [0, 1), got nan"),
        ({"refresh_every": 0}, "refresh_every must be an integer >= 1, got 0"),
        ({"refresh_every": 2.5}, "refresh_every must be an integer >= 1, got 2.5"),
        (
            {"refresh": 3},
            "DGMPlugin got unknown option(s) 'refresh' (did you mean 'refresh_every'?); "
            "accepted options: gradient_sparsity, min_gradient_masking_steps, refresh_every",
        ),
    ],
)
def test_bad_options_are_rejected(options, message):
    with pytest.raises(ValueError) as error:
        DGMPlugin(**options)
    assert str(error.value) == message
