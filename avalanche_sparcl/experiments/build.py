"""What a validated config builds: benchmark, model, strategy with its plugins, and evaluator.

Kept apart from the run itself so that exporting a finished run rebuilds exactly what trained it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from avalanche.benchmarks.scenarios import NCScenario
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics, loss_metrics
from avalanche.logging import InteractiveLogger
from avalanche.training import DER, ER_ACE, Naive
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from avalanche_sparcl import benchmarks
from avalanche_sparcl.experiments.config import (
    BENCHMARK_SHAPES,
    ConfigError,
    ExperimentConfig,
    build_sparse_plugin,
)
from avalanche_sparcl.experiments.options import (
    SMOKE_BATCH_SIZE,
    SMOKE_EPOCHS,
    SMOKE_TEST_PER_EXPERIENCE,
    SMOKE_TRAIN_PER_EXPERIENCE,
    SMOKE_WIDTH,
    RunOptions,
)
from avalanche_sparcl.loggers import ResumableCSVLogger, ResumableTensorboardLogger, SparCLCSVLogger
from avalanche_sparcl.metrics import data_metrics, flops_metrics, sparsity_metrics, task_il_accuracy_metrics
from avalanche_sparcl.models import ResNet18, SmallCNN
from avalanche_sparcl.plugins import ReservoirReplayPlugin, TDMPlugin
from avalanche_sparcl.sparse.layers import resolve_profile


def build_benchmark(config: ExperimentConfig, seed: int, smoke: bool) -> NCScenario:
    """The config's benchmark, or with ``smoke`` random tensors of the same shape and class split."""
    spec = config.benchmark
    if smoke:
        return random_benchmark_like(spec["name"], spec["n_experiences"], spec["task_labels"], seed)
    if spec.get("train_per_class") is not None:
        return fmnist_subset(config, seed)
    if spec["name"] == "split_digits":
        return benchmarks.split_digits(spec["n_experiences"], seed=seed, return_task_id=spec["task_labels"])
    builder = getattr(benchmarks, spec["name"])
    return builder(spec["dataset_root"], spec["n_experiences"], seed=seed, return_task_id=spec["task_labels"])


def fmnist_subset(config: ExperimentConfig, seed: int) -> NCScenario:
    """Split Fashion-MNIST on the first ``train_per_class`` training images of each class (the whole
    test set): experiences of about a hundred optimizer steps, as short schedules have."""
    spec = config.benchmark
    if spec["name"] != "split_fmnist":
        raise ConfigError(f"{config.path}: benchmark.train_per_class is accepted for split_fmnist only")
    (images, labels), test = benchmarks.load_fmnist(spec["dataset_root"])
    per_class = [(labels == c).nonzero().squeeze(1)[: spec["train_per_class"]] for c in range(10)]
    kept = torch.cat(per_class).sort().values  # in the file's order
    return benchmarks.tensor_benchmark(
        (images[kept], labels[kept]),
        test,
        spec["n_experiences"],
        seed,
        spec["task_labels"],
        fixed_class_order=list(range(10)),
    )


def random_benchmark_like(name: str, n_experiences: int, task_labels: bool, seed: int) -> NCScenario:
    """Uniform random inputs shaped like ``name``'s, every class present, classes in natural order."""
    shape = BENCHMARK_SHAPES[name]
    classes_per_experience = shape.n_classes // n_experiences
    generator = torch.Generator().manual_seed(seed)

    def tensors(per_experience: int, at_least: int) -> tuple[torch.Tensor, torch.Tensor]:
        per_class = max(at_least, per_experience // classes_per_experience)
        labels = torch.arange(shape.n_classes).repeat_interleave(per_class)
        return torch.rand((len(labels), *shape.input_shape), generator=generator), labels

    train = tensors(SMOKE_TRAIN_PER_EXPERIENCE, at_least=2)
    test = tensors(SMOKE_TEST_PER_EXPERIENCE, at_least=1)
    return benchmarks.tensor_benchmark(
        train, test, n_experiences, seed, task_labels, fixed_class_order=list(range(shape.n_classes))
    )


def build_model(config: ExperimentConfig, smoke: bool) -> nn.Module:
    """The config's model for its benchmark's input and classes; ``smoke`` narrows it, same layers."""
    shape = BENCHMARK_SHAPES[config.benchmark["name"]]
    width = SMOKE_WIDTH if smoke else config.model["width"]
    channels = shape.input_shape[0]
    if config.model["name"] == "resnet18":
        return ResNet18(shape.n_classes, nf=width, in_channels=channels)
    return SmallCNN(shape.n_classes, in_channels=channels, width=width)


def check_profile_fits(config: ExperimentConfig, smoke: bool) -> None:
    """ConfigError if the config's sparsity profile names parameters its model lacks.

    The plugin finds out only when training starts; checked here, a grid fails before any run folder
    is made.
    """
    plugin = build_sparse_plugin(config, seed=0)
    tdm = plugin if isinstance(plugin, TDMPlugin) else getattr(plugin, "tdm", None)
    if tdm is None or not tdm.settings.profile:
        return
    try:
        resolve_profile(build_model(config, smoke), tdm.settings.profile)
    except ValueError as error:
        section = "sparcl" if config.sparcl is not None else "baseline"
        raise ConfigError(
            f"{config.path}: {section}.profile does not fit model {config.model['name']!r}: {error}"
        ) from None


def build_strategy(
    config: ExperimentConfig,
    model: nn.Module,
    plugins: list,
    evaluator: EvaluationPlugin,
    options: RunOptions,
    seed: int = 0,
) -> SupervisedTemplate:
    """Naive, ER (Naive + replay), DER++ or ER-ACE with SGD (no momentum, as in the paper).

    With ``buffer: reservoir`` the replay plugin comes first, so DER++ stores raw logits before any
    masked head sees them.
    """
    training = config.training
    epochs, batch = training["epochs"], training["batch_size"]
    if options.smoke:
        epochs, batch = min(epochs, SMOKE_EPOCHS), min(batch, SMOKE_BATCH_SIZE)
    common = dict(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=training["lr"]),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=batch,
        train_epochs=epochs,
        eval_mb_size=training["eval_batch_size"],
        device=torch.device(options.device),
        evaluator=evaluator,
    )
    strategy, buffer = training["strategy"], training["buffer_size"]
    if strategy == "naive":
        return Naive(plugins=plugins, **common)
    if training["buffer"] == "reservoir":
        own_batch = batch if strategy == "er" else None  # DER and ER_ACE are given theirs below
        plugins = [ReservoirReplayPlugin(mem_size=buffer, batch_size_mem=own_batch, seed=seed), *plugins]
    elif strategy == "er":
        plugins = [*plugins, ReplayPlugin(mem_size=buffer, batch_size=batch, batch_size_mem=batch)]
    if strategy == "er":
        return Naive(plugins=plugins, **common)
    if strategy == "der":
        return DER(
            mem_size=buffer,
            batch_size_mem=batch,
            alpha=training["alpha"],
            beta=training["beta"],
            plugins=plugins,
            **common,
        )
    return ER_ACE(mem_size=buffer, batch_size_mem=batch, plugins=plugins, **common)


def build_evaluator(run_dir: Path, quiet: bool, log_files: bool = True) -> tuple[EvaluationPlugin, list]:
    """Class-IL and Task-IL accuracy and forgetting, training FLOPs, sparsity and kept data.

    ``log_files=False`` (a run about to resume, whose checkpoint holds the file loggers) writes no
    TensorBoard or CSV file, so the ones already written stay as they are.
    """
    loggers: list = []
    if log_files:
        loggers += [
            ResumableTensorboardLogger(run_dir / "tensorboard"),
            ResumableCSVLogger(run_dir / "csv"),
            SparCLCSVLogger(run_dir / "csv"),
        ]
    if not quiet:
        loggers.append(InteractiveLogger())
    with warnings.catch_warnings():
        # no logger is what --quiet on resume asks for: the checkpoint brings the file loggers back
        warnings.filterwarnings("ignore", message="No loggers specified")
        evaluator = EvaluationPlugin(
            accuracy_metrics(epoch=True, experience=True, stream=True),
            loss_metrics(epoch=True, stream=True),
            forgetting_metrics(experience=True, stream=True),
            *task_il_accuracy_metrics(),
            *flops_metrics(epoch=True),
            *sparsity_metrics(),
            *data_metrics(),
            loggers=loggers,
        )
    return evaluator, loggers
