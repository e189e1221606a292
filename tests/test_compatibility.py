"""SparCL inside stock Avalanche strategies, plugins and models: the invariants checked on the tensors.

Every run carries an :class:`InvariantAudit` listed after SparCL's plugins (strategies append their own
plugins, GEM's and A-GEM's projections included, after the user's). It checks what the strategy really
trains with, on the model the strategy holds at that moment:

- before every forward pass and at the end of every experience, each pruned weight is exactly zero;
- after every optimizer step, no pruned weight received a gradient, and with DGM no weight outside
  the gradient mask did.
"""

from collections import Counter

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.models import IncrementalClassifier, MultiHeadClassifier, MultiTaskModule
from avalanche.training import (
    AGEM,
    DER,
    ER_ACE,
    EWC,
    GEM,
    MAS,
    MIR,
    Cumulative,
    CWRStar,
    GDumb,
    GSS_greedy,
    ICaRL,
    JointTraining,
    LwF,
    Naive,
    SynapticIntelligence,
)
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import (
    EarlyStoppingPlugin,
    FromScratchTrainingPlugin,
    LRSchedulerPlugin,
    RARPlugin,
    ReplayPlugin,
    RWalkPlugin,
)
from conftest import RULES_OFF, TDM_RULES_OFF, quiet_evaluator
from torch import nn

from avalanche_sparcl import SparCLPlugin
from avalanche_sparcl.benchmarks import split_digits
from avalanche_sparcl.metrics import flops_metrics, sparsity_metrics
from avalanche_sparcl.models import SmallCNN


class InvariantAudit(SupervisedPlugin):
    """Counts zeros where SparCL's masks say there must be zeros, on the strategy's current model."""

    def __init__(self, sparcl: SparCLPlugin):
        super().__init__()
        self.sparcl = sparcl
        self.checks: Counter[str] = Counter()

    def before_forward(self, strategy, **kwargs):
        self.check_weights(strategy, "forward")

    def after_update(self, strategy, **kwargs):
        params = dict(strategy.model.named_parameters())
        for name, mask in self.sparcl.masks.items():
            if params[name].grad is None:  # a frozen layer (CWR* trains only its classifier)
                continue
            revived = int((params[name].grad[~mask] != 0).sum())
            assert revived == 0, f"{revived} pruned weights of {name} got a gradient at the step"
        for name, selected in self.sparcl.gradient_masks.items():
            if params[name].grad is None:
                continue
            outside = int((params[name].grad[~selected] != 0).sum())
            assert outside == 0, f"{outside} gradients of {name} outside DGM's mask were applied"
        self.check_weights(strategy, "step")

    def after_training_exp(self, strategy, **kwargs):
        self.check_weights(strategy, "experience")

    def check_weights(self, strategy, where):
        params = dict(strategy.model.named_parameters())
        assert self.sparcl.masks, "no masks"
        for name, mask in self.sparcl.masks.items():
            revived = int((params[name].detach()[~mask] != 0).sum())
            assert revived == 0, f"{where}: {revived} pruned weights of {name} are non-zero"
        self.checks[where] += 1


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def naive(model, plugins, epochs, optimizer=None, metrics=(), **options):
    """Naive with batch 64, SGD with momentum unless another optimizer is given, no loggers."""
    return Naive(
        model=model,
        optimizer=optimizer or sgd(model),
        train_mb_size=64,
        train_epochs=epochs,
        plugins=plugins,
        evaluator=quiet_evaluator(*metrics),
        **options,
    )


def tdm_and_dgm(**options):
    """TDM and DGM (DDR off), the parts every strategy below must keep exact."""
    return SparCLPlugin(sparsity=0.8, removal_ratio=0, gradient_sparsity=0.3, **TDM_RULES_OFF, **options)


@pytest.mark.parametrize("strategy_class", [GEM, AGEM])
def test_gradient_projection_strategies_apply_only_masked_gradients(strategy_class, digits_benchmark):
    """GEM and A-GEM project the gradients in their own after_backward, after SparCL's hooks."""
    torch.manual_seed(0)
    model = SmallCNN(width=8)
    sparcl = tdm_and_dgm()
    audit = InvariantAudit(sparcl)
    memory = {"memory_strength": 0.5} if strategy_class is GEM else {"sample_size": 64}
    strategy = strategy_class(
        model=model,
        optimizer=sgd(model),
        criterion=nn.CrossEntropyLoss(),
        patterns_per_exp=64,
        train_mb_size=64,
        train_epochs=2,
        plugins=[sparcl, audit],
        evaluator=quiet_evaluator(),
        **memory,
    )
    for experience in digits_benchmark.train_stream[:2]:
        strategy.train(experience)
    # Split Digits' first two experiences: 272 and 270 examples, 5 minibatches of 64 per epoch
    assert audit.checks == {"forward": 20, "step": 20, "experience": 2}


def test_gdumb_trains_its_fresh_model_sparse(digits_benchmark):
    """GDumb replaces strategy.model by a copy of the initial model at every experience."""
    torch.manual_seed(0)
    model = SmallCNN()
    sparcl = tdm_and_dgm()
    audit = InvariantAudit(sparcl)
    strategy = GDumb(
        model=model,
        optimizer=sgd(model),
        criterion=nn.CrossEntropyLoss(),
        mem_size=200,
        train_mb_size=64,
        train_epochs=2,
        plugins=[sparcl, audit],
        evaluator=quiet_evaluator(),
    )
    models = []
    for experience in digits_benchmark.train_stream[:2]:
        strategy.train(experience)
        models.append(strategy.model)
    assert models[0] is not models[1]
    params = dict(strategy.model.named_parameters())
    assert all(sparcl.tdm.dynamic_sparsity.params[name] is params[name] for name in sparcl.masks)
    # GDumb trains on its buffer, full (200 examples) from the first experience: 4 minibatches of 64
    assert audit.checks == {"forward": 16, "step": 16, "experience": 2}


def icarl_parts():
    feature_extractor = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return feature_extractor, nn.Linear(32, 10)


def test_icarl_trains_sparse(digits_benchmark):
    """iCaRL's model answers only in training mode before its first class means exist."""
    torch.manual_seed(0)
    feature_extractor, classifier = icarl_parts()
    sparcl = tdm_and_dgm()
    audit = InvariantAudit(sparcl)
    strategy = ICaRL(
        feature_extractor=feature_extractor,
        classifier=classifier,
        optimizer=torch.optim.SGD([*feature_extractor.parameters(), *classifier.parameters()], lr=0.05),
        memory_size=100,
        buffer_transform=None,
        fixed_memory=True,
        train_mb_size=64,
        train_epochs=2,
        plugins=[sparcl, audit],
        evaluator=quiet_evaluator(),
    )
    for experience in digits_benchmark.train_stream[:2]:
        strategy.train(experience)
    assert sorted(sparcl.masks) == ["feature_extractor.2.weight", "feature_extractor.4.weight"]
    # iCaRL adds its 100 exemplars to the second experience's 270 examples: 6 minibatches
    assert audit.checks == {"forward": 10 + 12, "step": 10 + 12, "experience": 2}


def test_early_stopping_restore_leaves_pruned_weights_zero(digits_benchmark):
    """EarlyStopping restores a state_dict saved before TDM's later mask updates."""
    torch.manual_seed(0)
    model = SmallCNN()
    sparcl = tdm_and_dgm()
    audit = InvariantAudit(sparcl)
    never_better = EarlyStoppingPlugin(patience=2, val_stream_name="test", margin=1.0, verbose=False)
    strategy = naive(
        model, [sparcl, never_better, audit], epochs=6, metrics=[accuracy_metrics(stream=True)], eval_every=1
    )
    test_stream = digits_benchmark.test_stream
    restores = Counter()
    load_state_dict = model.load_state_dict
    model.load_state_dict = lambda state, **options: (restores.update(["load"]), load_state_dict(state))[1]
    strategy.train(digits_benchmark.train_stream[0], eval_streams=[test_stream[:1]])
    assert restores == {"load": 1}
    assert audit.checks["experience"] == 1
    # stopped before the third epoch: 2 epochs of 5 minibatches
    assert audit.checks["step"] == 10


def test_from_scratch_training_starts_every_experience_sparse(digits_benchmark):
    """FromScratchTrainingPlugin copies the dense initial weights back when an experience starts."""
    torch.manual_seed(0)
    model = SmallCNN()
    sparcl = tdm_and_dgm()
    audit = InvariantAudit(sparcl)
    strategy = naive(model, [sparcl, FromScratchTrainingPlugin(), audit], epochs=1)
    for experience in digits_benchmark.train_stream[:3]:
        strategy.train(experience)
    assert audit.checks == {"forward": 15, "step": 15, "experience": 3}


class TiedCNN(nn.Module):
    """Two convolutions share one weight (as weight-tied or recurrent blocks do)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.block = nn.Conv2d(16, 16, 3, padding=1)
        self.block_again = nn.Conv2d(16, 16, 3, padding=1)
        self.block_again.weight = self.block.weight
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        out = torch.relu(self.stem(x))
        out = torch.relu(self.block(out))
        out = torch.relu(self.block_again(out))
        return self.head(out.mean(dim=(2, 3)))


def test_shared_weights_are_masked_once_under_their_first_name(digits_benchmark):
    torch.manual_seed(0)
    model = TiedCNN()
    sparcl = tdm_and_dgm()
    audit = InvariantAudit(sparcl)
    strategy = naive(model, [sparcl, audit], epochs=1)
    strategy.train(digits_benchmark.train_stream[0])
    assert list(sparcl.masks) == ["block.weight"]
    assert int((~sparcl.masks["block.weight"]).sum()) == round(16 * 16 * 9 * 0.8)
    assert model.block_again.weight is model.block.weight
    assert audit.checks == {"forward": 5, "step": 5, "experience": 1}


# ----------------------------------------------------------------------------- the matrix
class FeaturesCNN(nn.Module):
    """Stem, two masked convolutions, pooled features of 32 (a stand-in for any CNN backbone)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x):
        return self.layers(x)


class IncrementalHeadCNN(nn.Module):
    """Avalanche's default for class-incremental models: a head that grows with every experience."""

    def __init__(self):
        super().__init__()
        self.features = FeaturesCNN()
        self.classifier = IncrementalClassifier(32, initial_out_features=2)

    def forward(self, x):
        return self.classifier(self.features(x))


class MultiHeadCNN(MultiTaskModule):
    """One head per task, chosen by the task label (Task-IL)."""

    def __init__(self):
        super().__init__()
        self.features = FeaturesCNN()
        self.classifier = MultiHeadClassifier(32, initial_out_features=2)

    def forward_single_task(self, x, task_label):
        return self.classifier(self.features(x), task_label)


class MetricAudit(InvariantAudit):
    """Also counts, independently of the metrics, the zeros the sparsity metrics must report."""

    def __init__(self, sparcl):
        super().__init__(sparcl)
        self.weight_zeros = 0.0
        self.gradient_zeros = [0, 0]

    def before_training_epoch(self, strategy, **kwargs):
        self.gradient_zeros = [0, 0]

    def after_update(self, strategy, **kwargs):
        super().after_update(strategy, **kwargs)
        params = dict(strategy.model.named_parameters())
        for name in [name for name in self.sparcl.masks if params[name].grad is not None]:
            self.gradient_zeros[0] += int((params[name].grad == 0).sum())
            self.gradient_zeros[1] += params[name].numel()

    def after_training_epoch(self, strategy, **kwargs):
        params = dict(strategy.model.named_parameters())
        zeros = sum(int((params[name] == 0).sum()) for name in self.sparcl.masks)
        self.weight_zeros = zeros / sum(params[name].numel() for name in self.sparcl.masks)


def last_metric(strategy, prefix):
    values = strategy.evaluator.get_last_metrics()
    (name,) = [name for name in values if name.startswith(prefix + "/")]
    return values[name]


def train_audited(strategy_name, model, benchmark, epochs=3):
    """Full SparCL (TDM, DDR, DGM) in a stock strategy with the sparsity and FLOPs metrics."""
    RNGManager.set_random_seeds(0)  # torch, numpy and random: the same run whatever ran before
    sparcl = SparCLPlugin(sparsity=0.8, removal_ratio=0.3, gradient_sparsity=0.3, **RULES_OFF)
    audit = MetricAudit(sparcl)
    strategy = STRATEGIES[strategy_name](
        model=model,
        optimizer=sgd(model),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=64,
        train_epochs=epochs,
        plugins=[sparcl, audit],
        evaluator=quiet_evaluator(*sparsity_metrics(), *flops_metrics()),
    )
    for experience in benchmark.train_stream[:2]:
        strategy.train(experience)
    return strategy, sparcl, audit


STRATEGIES = {
    "naive": Naive,
    "replay": lambda plugins, **options: Naive(plugins=[*plugins, ReplayPlugin(mem_size=100)], **options),
    "der": lambda **options: DER(mem_size=100, batch_size_mem=32, **options),
    "er_ace": lambda **options: ER_ACE(mem_size=100, batch_size_mem=32, **options),
    "lwf": lambda **options: LwF(alpha=1.0, temperature=2.0, **options),
    "ewc": lambda **options: EWC(ewc_lambda=1.0, **options),
    "si": lambda **options: SynapticIntelligence(si_lambda=1.0, **options),
    "mir": lambda **options: MIR(mem_size=100, subsample=50, batch_size_mem=32, **options),
    "gem": lambda **options: GEM(patterns_per_exp=32, memory_strength=0.5, **options),
    "agem": lambda **options: AGEM(patterns_per_exp=32, sample_size=32, **options),
    "gss_greedy": lambda **options: GSS_greedy(mem_size=100, mem_strength=5, input_size=[1, 8, 8], **options),
    # lambda_reg=1.0 diverges on this seed even dense (NaN weights in experience 1) at lr 0.05, momentum 0.9
    "mas": lambda **options: MAS(lambda_reg=0.5, **options),
    "rwalk": lambda plugins, **options: Naive(plugins=[*plugins, RWalkPlugin()], **options),
    "rar": lambda plugins, **options: Naive(
        plugins=[*plugins, RARPlugin(batch_size_mem=16, mem_size=100)], **options
    ),
    "cwr_star": lambda **options: CWRStar(cwr_layer_name="classifier", **options),
    "lr_scheduler": lambda plugins, optimizer, **options: Naive(
        plugins=[*plugins, LRSchedulerPlugin(torch.optim.lr_scheduler.StepLR(optimizer, step_size=2))],
        optimizer=optimizer,
        **options,
    ),
}


@pytest.mark.parametrize("strategy_name", list(STRATEGIES))
def test_full_sparcl_in_stock_strategies_keeps_every_invariant(strategy_name, digits_benchmark):
    strategy, sparcl, audit = train_audited(strategy_name, SmallCNN(width=8), digits_benchmark)
    assert audit.checks["step"] == strategy.clock.train_iterations
    assert audit.checks["experience"] == 2
    assert [record.stages != [] for record in sparcl.ddr.stage_counts] == [True, True]
    assert last_metric(strategy, "WeightSparsity") == audit.weight_zeros
    zeros, entries = audit.gradient_zeros
    # CWR* freezes every layer but its classifier: no masked layer gets a gradient, the metric says 0
    assert entries == 0 if strategy_name == "cwr_star" else entries > 0
    assert last_metric(strategy, "GradientSparsity") == (zeros / entries if entries else 0.0)


@pytest.mark.parametrize(
    ("model_class", "task_labels"),
    [(IncrementalHeadCNN, False), (MultiHeadCNN, True)],
    ids=["incremental_head", "multi_head"],
)
def test_growing_and_multi_head_models_train_sparse_with_metrics(model_class, task_labels):
    """The head changes between experiences: metrics and masks follow the model's layers."""
    benchmark = split_digits(n_experiences=5, seed=0, return_task_id=task_labels)
    strategy, sparcl, audit = train_audited("naive", model_class(), benchmark)
    assert sorted(sparcl.masks) == ["features.layers.2.weight", "features.layers.4.weight"]
    assert audit.checks["step"] == strategy.clock.train_iterations
    assert last_metric(strategy, "WeightSparsity") == audit.weight_zeros
    assert last_metric(strategy, "TrainFLOPs_Total") > 0


def test_compiled_model_trains_sparse_and_costs_what_the_model_costs(digits_benchmark):
    """``torch.compile`` (eager backend) names the parameters ``_orig_mod.*``; FLOPs count through it."""

    def train(compiled):
        torch.manual_seed(0)
        model = SmallCNN(width=8)
        trained = torch.compile(model, backend="eager") if compiled else model
        sparcl = tdm_and_dgm()
        audit = InvariantAudit(sparcl)
        strategy = naive(
            trained, [sparcl, audit], epochs=1, optimizer=sgd(model), metrics=flops_metrics(breakdown=True)
        )
        for experience in digits_benchmark.train_stream[:2]:
            strategy.train(experience)
        flops = {name.split("/")[0]: value for name, value in strategy.evaluator.get_last_metrics().items()}
        return sparcl, audit, flops

    plain, plain_audit, plain_flops = train(compiled=False)
    compiled, compiled_audit, compiled_flops = train(compiled=True)
    assert sorted(compiled.masks) == ["_orig_mod.conv2.weight", "_orig_mod.conv3.weight"]
    assert compiled_audit.checks == plain_audit.checks == {"forward": 10, "step": 10, "experience": 2}
    assert compiled_flops["TrainFLOPs_Other"] > 0
    assert compiled_flops == plain_flops


@pytest.mark.parametrize("strategy_class", [Cumulative, JointTraining])
def test_strategies_training_on_more_than_the_experience_keep_tdm_exact(strategy_class, digits_benchmark):
    """DDR refuses them (tested with DDR); TDM and DGM work as with any strategy."""
    torch.manual_seed(0)
    model = SmallCNN(width=8)
    sparcl = tdm_and_dgm()
    audit = InvariantAudit(sparcl)
    strategy = strategy_class(
        model=model,
        optimizer=sgd(model),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=64,
        train_epochs=1,
        plugins=[sparcl, audit],
        evaluator=quiet_evaluator(),
    )
    if strategy_class is JointTraining:
        strategy.train(digits_benchmark.train_stream[:2])
    else:
        for experience in digits_benchmark.train_stream[:2]:
            strategy.train(experience)
    # Cumulative: 272, then 272 + 270 examples; JointTraining: all 542 at once
    expected = {Cumulative: (5 + 9, 2), JointTraining: (9, 1)}[strategy_class]
    assert (audit.checks["step"], audit.checks["experience"]) == expected


class DriftingSGD(torch.optim.SGD):
    """An optimizer SparCL does not know: it may move a zero weight, so TDM must zero pruned weights
    again after its steps."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for param in group["params"]:
                param.add_(1e-3)
        return loss


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.Adam(params, lr=1e-3, weight_decay=1e-2),
        lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2),
        lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
        lambda params: torch.optim.RMSprop(params, lr=1e-3, momentum=0.5),
        lambda params: DriftingSGD(params, lr=0.05),
    ],
    ids=["adam", "adamw", "sgd_nesterov_decay", "rmsprop", "unknown_optimizer"],
)
def test_pruned_weights_stay_zero_with_every_optimizer(make_optimizer, digits_benchmark):
    """Known optimizers leave zeros in place (zero gradient, zero state); others are re-masked."""
    torch.manual_seed(0)
    model = SmallCNN(width=8)
    sparcl = tdm_and_dgm()
    audit = InvariantAudit(sparcl)
    strategy = naive(model, [sparcl, audit], epochs=2, optimizer=make_optimizer(model.parameters()))
    for experience in digits_benchmark.train_stream[:2]:
        strategy.train(experience)
    assert audit.checks == {"forward": 20, "step": 20, "experience": 2}
