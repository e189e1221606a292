"""DDRPlugin inside real Avalanche strategies: counts per epoch, replay after removal, buffer contents."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.benchmarks.utils.data_loader import ReplayDataLoader
from avalanche.core import SupervisedPlugin
from avalanche.training import (
    DER,
    ER_ACE,
    Cumulative,
    GDumb,
    GSS_greedy,
    ICaRL,
    JointTraining,
    Naive,
    OnlineNaive,
    Replay,
)
from avalanche.training.plugins import ReplayPlugin
from conftest import DDR_RULES_OFF, TDM_RULES_OFF
from torch import nn

from avalanche_sparcl import DDRPlugin, SparCLPlugin
from avalanche_sparcl.benchmarks import split_digits, tensor_benchmark
from avalanche_sparcl.models import SmallCNN
from avalanche_sparcl.plugins.ddr import POSITION_ATTRIBUTE, keep_only_positions, with_positions
from avalanche_sparcl.plugins.tdm import TDMPlugin

EPOCHS = 10
MEMORY = 100


class MinibatchCounter(SupervisedPlugin):
    """Counts, per epoch, current-experience and replay rows of the training minibatches.

    It reads the positions DDR took off the minibatch (>= 0 for the experience's examples, -1 for ER's
    buffer rows) and checks that the minibatch itself is Avalanche's own three fields, also when it is
    listed before DDRPlugin. DER prepends its buffer rows later; ER_ACE forwards its buffer apart.
    """

    def __init__(self, ddr):
        super().__init__()
        self.ddr = ddr
        self.experience_size = 0
        self.current = []  # [experience][epoch] -> current-experience samples seen
        self.replay = []
        self.data_fraction = []  # [experience][epoch] -> len(adapted_dataset) / examples of the experience
        self.iterations = []  # [experience][epoch] -> minibatches
        self.loader_rows = 0

    def before_training_exp(self, strategy, **kwargs):
        self.current.append([])
        self.replay.append([])
        self.data_fraction.append([])
        self.iterations.append([])
        self.experience_size = len(strategy.experience.dataset)

    def before_training_epoch(self, strategy, **kwargs):
        self.current[-1].append(0)
        self.replay[-1].append(0)
        self.iterations[-1].append(0)

    def before_training_iteration(self, strategy, **kwargs):
        assert len(strategy.mbatch) == 3, "a field was added to Avalanche's minibatch"
        positions = self.ddr.minibatch_positions
        if positions is None:  # an experience DDR leaves alone: every row is the experience's
            positions = torch.zeros(len(strategy.mb_y))
        self.iterations[-1][-1] += 1
        self.loader_rows = len(positions)
        self.current[-1][-1] += int((positions >= 0).sum())
        self.replay[-1][-1] += int((positions < 0).sum())

    def after_forward(self, strategy, **kwargs):
        self.replay[-1][-1] += len(strategy.mb_output) - self.loader_rows  # DER's prepended rows
        if getattr(strategy, "replay_loader", None) is not None and hasattr(strategy, "mb_buffer_out"):
            self.replay[-1][-1] += len(strategy.mb_buffer_out)  # ER_ACE

    def after_training_epoch(self, strategy, **kwargs):
        self.data_fraction[-1].append(len(strategy.adapted_dataset) / self.experience_size)


def input_keys(dataset) -> list[bytes]:
    """The raw bytes of each example's input: an identity that survives subsets and buffers."""
    return [dataset[index][0].numpy().tobytes() for index in range(len(dataset))]


def buffer_of(strategy):
    """The replay buffer dataset of a DER / ER_ACE strategy or of its ReplayPlugin."""
    owners = [strategy, *strategy.plugins]
    return next(owner.storage_policy.buffer for owner in owners if hasattr(owner, "storage_policy"))


def make_strategy(name: str, plugins: list, epochs: int = EPOCHS, **options):
    torch.manual_seed(0)
    model = SmallCNN(width=8)
    common = dict(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=64,
        train_epochs=epochs,
        eval_mb_size=512,
        evaluator=None,
        **options,
    )
    if name == "naive":
        return Naive(plugins=plugins, **common)
    if name == "er":
        return Naive(plugins=[*plugins, ReplayPlugin(mem_size=MEMORY)], **common)
    if name == "replay":
        return Replay(mem_size=MEMORY, plugins=plugins, **common)
    if name == "der":
        return DER(mem_size=MEMORY, batch_size_mem=32, plugins=plugins, **common)
    if name == "er_ace":
        return ER_ACE(mem_size=MEMORY, batch_size_mem=32, plugins=plugins, **common)
    raise ValueError(name)


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(1)  # the small model is faster single-threaded on a shared CPU
    return split_digits(n_experiences=5, seed=0)


@pytest.fixture(scope="module", params=["naive", "er", "der", "er_ace"])
def ddr_run(request, digits):
    """One run per strategy on all of Split Digits, with what each test needs recorded."""
    ddr = DDRPlugin(removal_ratio=0.3)
    counter = MinibatchCounter(ddr)
    strategy = make_strategy(request.param, [counter, ddr])
    buffers, removed, kept = [], [], []
    for experience in digits.train_stream:
        strategy.train(experience)
        record = ddr.stage_counts[-1]
        keys = input_keys(experience.dataset)
        removed_set = set(record.removed_positions)
        removed.append({keys[p] for p in removed_set})
        kept.append({keys[p] for p in range(len(keys)) if p not in removed_set})
        if request.param != "naive":
            buffers.append(set(input_keys(buffer_of(strategy))))
    return request.param, counter, ddr, buffers, removed, kept, digits


def test_last_epoch_trains_on_70_percent_of_every_experience(ddr_run):
    _, counter, ddr, *_, digits = ddr_run
    sizes = [len(experience.dataset) for experience in digits.train_stream]
    assert [record.n_examples for record in ddr.stage_counts] == sizes
    for size, per_epoch, record in zip(sizes, counter.current, ddr.stage_counts, strict=True):
        target = size - math.floor(0.3 * size + 0.5)
        assert abs(per_epoch[-1] - 0.7 * size) <= 1
        assert per_epoch[0] == size  # all data back at the start of every experience
        # stages at epochs 2 and 4 of 10: every window spans two epochs, half of the removal each
        assert [stage.epoch for stage in record.stages] == [2, 4]
        removed = size - target
        assert [stage.removed for stage in record.stages] == [removed // 2, removed - removed // 2]
        first_kept = record.stages[0].kept
        assert per_epoch == [size, size, first_kept, first_kept] + [target] * (EPOCHS - 4)


def test_data_fraction_is_visible_to_metrics(ddr_run):
    _, counter, ddr, *_ = ddr_run
    for fractions, record in zip(counter.data_fraction, ddr.stage_counts, strict=True):
        assert fractions[0] == 1.0
        assert fractions[-1] == record.kept / record.n_examples


def test_replay_continues_after_the_loader_is_rebuilt(ddr_run):
    name, counter, *_ = ddr_run
    if name == "naive":
        assert all(rows == 0 for epochs in counter.replay for rows in epochs)
        return
    assert counter.replay[0] == [0] * EPOCHS  # nothing to replay in the first experience
    for epochs in counter.replay[1:]:
        assert all(rows > 0 for rows in epochs), epochs  # every epoch, before and after each removal


def test_buffer_is_filled_only_from_kept_examples(ddr_run):
    name, _, _, buffers, removed, kept, _ = ddr_run
    assert len(buffers) == (0 if name == "naive" else 5)
    if name == "naive":
        return
    for buffer, removed_keys, kept_keys in zip(buffers, removed, kept, strict=True):
        removed_only = removed_keys - kept_keys  # identical images may exist in both
        assert len(removed_only) >= 70
        assert buffer & kept_keys, "the buffer holds examples of the experience just trained"
        assert not buffer & removed_only


def test_easy_examples_known_in_advance_are_removed_first():
    """Well-separated points are easy; points carrying the other cluster's label (noise) are hard."""
    generator = torch.Generator().manual_seed(0)
    n_clean, n_noisy = 60, 20
    labels = torch.cat([torch.arange(2).repeat(n_clean // 2), torch.arange(2).repeat(n_noisy // 2)])
    centres = torch.tensor([[-4.0, 0.0], [4.0, 0.0]])
    cluster = torch.cat([labels[:n_clean], 1 - labels[n_clean:]])  # noisy points sit in the other cluster
    inputs = centres[cluster] + 0.5 * torch.randn(len(labels), 2, generator=generator)
    data = _make_taskaware_tensor_classification_dataset(inputs, labels)
    benchmark = nc_benchmark(data, data, 1, task_labels=False, seed=0)
    experience = benchmark.train_stream[0]
    noisy = [
        position
        for position in range(len(experience.dataset))
        if (experience.dataset[position][0][0] > 0).long().item() != experience.dataset[position][1]
    ]
    assert len(noisy) == n_noisy
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    ddr = DDRPlugin(removal_ratio=0.5, stages=2, cutoff=0.5, **DDR_RULES_OFF)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        train_mb_size=16,
        train_epochs=8,
        evaluator=None,
        plugins=[ddr],
    )
    strategy.train(experience)
    record = ddr.stage_counts[0]
    assert [(stage.epoch, stage.removed, stage.kept) for stage in record.stages] == [(2, 20, 60), (4, 20, 40)]
    assert not set(record.removed_positions) & set(noisy)


def test_paper_setting_set_sizes_in_a_real_strategy():
    """50 epochs, defaults: 100%, 92.5%, 85%, 77.5%, 70% of the data from epochs 0, 5, 10, 15, 20."""
    generator = torch.Generator().manual_seed(0)
    inputs, labels = torch.randn(40, 4, generator=generator), torch.arange(2).repeat(20)
    data = _make_taskaware_tensor_classification_dataset(inputs, labels)
    experience = nc_benchmark(data, data, 1, task_labels=False, seed=0).train_stream[0]
    model = nn.Linear(4, 2)
    ddr = DDRPlugin()
    counter = MinibatchCounter(ddr)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        train_mb_size=40,
        train_epochs=50,
        evaluator=None,
        plugins=[counter, ddr],
    )
    strategy.train(experience)
    per_epoch = counter.current[0]
    assert [per_epoch[epoch] for epoch in (0, 5, 10, 15, 20)] == [40, 37, 34, 31, 28]
    assert per_epoch == [40] * 5 + [37] * 5 + [34] * 5 + [31] * 5 + [28] * 30


@pytest.mark.parametrize("ddr_first", [True, False], ids=["ddr-then-tdm", "tdm-then-ddr"])
def test_composes_with_tdm_in_either_order(digits, ddr_first):
    ddr = DDRPlugin(**DDR_RULES_OFF)
    counter = MinibatchCounter(ddr)
    tdm = TDMPlugin(sparsity=0.5, **TDM_RULES_OFF)
    plugins = [counter, ddr, tdm] if ddr_first else [counter, tdm, ddr]
    strategy = make_strategy("der", plugins, epochs=5)
    for experience in digits.train_stream[:2]:
        strategy.train(experience)
    sizes = [len(experience.dataset) for experience in digits.train_stream[:2]]
    for size, per_epoch in zip(sizes, counter.current, strict=True):
        removed = math.floor(0.3 * size + 0.5)  # in 1 stage: 5 epochs leave room for one 2-epoch window
        assert per_epoch == [size, size] + [size - removed] * 3
    parameters = dict(strategy.model.named_parameters())
    assert tdm.masks
    for name, mask in tdm.masks.items():
        assert mask.float().mean().item() == pytest.approx(0.5, abs=0.02)
        assert torch.all(parameters[name][~mask] == 0)
    assert all(rows > 0 for rows in counter.replay[1])


@pytest.mark.parametrize("name", ["replay", "er"])
def test_periodic_evaluation_and_repeated_train_calls(digits, name):
    ddr = DDRPlugin(**DDR_RULES_OFF)
    counter = MinibatchCounter(ddr)
    strategy = make_strategy(name, [counter, ddr], epochs=5, eval_every=1)
    for experience in digits.train_stream[:2]:
        strategy.train(experience, eval_streams=[digits.test_stream[:1]])
    strategy.train(digits.train_stream[1], eval_streams=[digits.test_stream[:1]])  # the same one again
    sizes = [len(digits.train_stream[index].dataset) for index in (0, 1, 1)]
    for size, per_epoch in zip(sizes, counter.current, strict=True):
        assert per_epoch[0] == size
        assert per_epoch[-1] == size - math.floor(0.3 * size + 0.5)
    assert all(rows > 0 for epochs in counter.replay[1:] for rows in epochs)
    assert [record.experience for record in ddr.stage_counts] == [0, 1, 1]


@pytest.mark.parametrize(("epochs", "length"), [(1, "1 epoch"), (2, "2 epochs")])
def test_experiences_shorter_than_three_epochs_remove_nothing_and_warn_once(digits, epochs, length):
    ddr = DDRPlugin()
    counter = MinibatchCounter(ddr)
    strategy = make_strategy("naive", [counter, ddr], epochs=epochs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for experience in digits.train_stream[:2]:
            strategy.train(experience)
    messages = [str(w.message) for w in caught if "DDRPlugin" in str(w.message)]
    assert messages == [
        "DDRPlugin: DDR needs at least 3 epochs per experience to observe each example twice before "
        f"removing any, so no data is removed from an experience of {length}; removal_ratio=0 turns "
        "DDR off; this warning is given once"
    ]
    assert [record.stages for record in ddr.stage_counts] == [[], []]
    sizes = [len(experience.dataset) for experience in digits.train_stream[:2]]
    assert counter.current == [[size] * epochs for size in sizes]


def test_three_epochs_remove_once_at_epoch_2_without_warning(digits):
    ddr = DDRPlugin(**DDR_RULES_OFF)
    counter = MinibatchCounter(ddr)
    strategy = make_strategy("naive", [counter, ddr], epochs=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        strategy.train(digits.train_stream[0])
    assert not [w for w in caught if "DDRPlugin" in str(w.message)]
    size = len(digits.train_stream[0].dataset)
    target = size - math.floor(0.3 * size + 0.5)
    assert [(stage.epoch, stage.kept) for stage in ddr.stage_counts[0].stages] == [(2, target)]
    assert counter.current == [[size, size, target]]


def test_zero_removal_ratio_never_warns(digits):
    strategy = make_strategy("naive", [DDRPlugin(removal_ratio=0)], epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        strategy.train(digits.train_stream[0])
    assert not [w for w in caught if "DDRPlugin" in str(w.message)]


def test_position_field_never_reaches_the_strategy(digits):
    """After DDR's hook the minibatch is [x, y, task] again; the position stays a data attribute."""
    seen = []

    class TaskLabelProbe(SupervisedPlugin):
        def before_forward(self, strategy, **kwargs):
            seen.append((len(strategy.mbatch), set(strategy.mb_task_id.tolist())))

    ddr = DDRPlugin(**DDR_RULES_OFF)
    strategy = make_strategy("naive", [ddr, TaskLabelProbe()], epochs=3)  # a stage at epoch 2
    strategy.train(digits.train_stream[0])
    assert [stage.epoch for stage in ddr.stage_counts[0].stages] == [2]
    assert seen and all(entry == (3, {0}) for entry in seen)
    assert POSITION_ATTRIBUTE not in digits.train_stream[0].dataset._data_attributes


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"removal_ratio": 1.0}, "removal_ratio must be in [0, 1), got 1.0"),
        ({"removal_ratio": -0.1}, "removal_ratio must be in [0, 1), got -0.1"),
        ({"removal_ratio": float("nan")}, "removal_ratio must be in [0, 1), got nan"),
        ({"removal_ratio": "0.3"}, "removal_ratio must be a number in [0, 1), got '0.3'"),
        ({"stages": 0}, "stages must be an integer >= 1, got 0"),
        ({"stages": 2.0}, "stages must be an integer >= 1, got 2.0"),
        ({"cutoff": 0}, "cutoff must be in (0, 1], got 0.0"),
        ({"cutoff": 1.5}, "cutoff must be in (0, 1], got 1.5"),
        (
            {"stage": 4},
            "DDRPlugin got unknown option(s) 'stage' (did you mean 'stages'?); "
            "accepted options: cutoff, min_experience_steps, removal_ratio, stages",
        ),
    ],
)
def test_bad_input_names_the_argument_and_its_range(arguments, message):
    with pytest.raises(ValueError) as error:
        DDRPlugin(**arguments)
    assert str(error.value) == message


REMOVAL_HINT = "Set removal_ratio=0 in SparCLPlugin or drop DDRPlugin to train {0} without data removal."


def refusal(name: str, other_data: str) -> str:
    """The message DDRPlugin gives for a strategy whose training data is not the experience's."""
    return (
        f"DDRPlugin cannot be used with {name}: DDR removes examples of the experience being trained, "
        f"while {name} trains on {other_data}. " + REMOVAL_HINT.format(name)
    )


def tiny_options(epochs: int = 3, batch: int = 10, inputs: int = 8, classes: int = 4) -> dict:
    torch.manual_seed(0)
    model = nn.Linear(inputs, classes)
    return dict(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=batch,
        train_epochs=epochs,
        evaluator=None,
    )


def test_gss_replay_survives_a_removal_stage(tensor_benchmark_factory):
    """GSS builds its own ReplayDataLoader; the stage shrinks its current data and keeps the memory."""
    benchmark = tensor_benchmark_factory(20, 4, 2, (8,))  # 2 experiences of 40 examples
    ddr = DDRPlugin(removal_ratio=0.3, **DDR_RULES_OFF)
    counter = MinibatchCounter(ddr)
    # 50 memory rows: GSS scores a whole minibatch (10 current + 32 memory rows) against its memory
    strategy = GSS_greedy(mem_size=50, input_size=[8], plugins=[counter, ddr], **tiny_options())
    for experience in benchmark.train_stream:
        strategy.train(experience)
    assert [record.stages[0].kept for record in ddr.stage_counts] == [28, 28]  # 12 of 40 removed at epoch 2
    assert counter.current == [[40, 40, 28], [40, 40, 28]]
    assert counter.iterations == [[4, 4, 3], [4, 4, 3]]  # minibatches of 10 current examples
    # GSS's 50 memory rows in memory batches of 32: 32 and 18 in turn, cycled
    assert counter.replay == [[0, 0, 0], [100, 100, 82]]


def test_plain_dataloader_is_refused_at_the_first_epoch(tensor_benchmark_factory):
    class PlainLoaderNaive(Naive):
        def make_train_dataloader(self, **kwargs):
            data = self.adapted_dataset
            self.dataloader = torch.utils.data.DataLoader(data, batch_size=10, collate_fn=data.collate_fn)

    epochs = []

    class EpochCounter(SupervisedPlugin):
        def before_training_epoch(self, strategy, **kwargs):
            epochs.append(strategy.clock.train_exp_epochs)

    benchmark = tensor_benchmark_factory(20, 4, 2, (8,))
    strategy = PlainLoaderNaive(plugins=[DDRPlugin(**DDR_RULES_OFF), EpochCounter()], **tiny_options())
    with pytest.raises(ValueError) as error:
        strategy.train(benchmark.train_stream[0])
    assert str(error.value) == (
        "DDRPlugin removes examples from the train loader between epochs, which needs an Avalanche "
        "MultiDatasetDataLoader (TaskBalancedDataLoader, ReplayDataLoader, ...); PlainLoaderNaive "
        "trains from a DataLoader. Set removal_ratio=0 in SparCLPlugin or drop DDRPlugin to train it "
        "without data removal."
    )
    assert epochs == []  # refused before the first epoch trained


@pytest.mark.parametrize("epochs", [1, 2])
def test_a_plain_dataloader_trains_when_ddr_would_remove_nothing(tensor_benchmark_factory, epochs):
    """At 1 or 2 epochs DDR removes nothing, so any loader will do (OnlineNaive's, a user's)."""

    class PlainLoaderNaive(Naive):
        def make_train_dataloader(self, **kwargs):
            data = self.adapted_dataset
            self.dataloader = torch.utils.data.DataLoader(data, batch_size=10, collate_fn=data.collate_fn)

    benchmark = tensor_benchmark_factory(20, 4, 2, (8,))
    ddr = DDRPlugin()
    counter = MinibatchCounter(ddr)
    strategy = PlainLoaderNaive(plugins=[counter, ddr], **tiny_options(epochs=epochs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strategy.train(benchmark.train_stream[0])
    assert counter.current == [[40] * epochs]
    assert [record.stages for record in ddr.stage_counts] == [[]]


def test_online_naive_trains_with_ddr(tensor_benchmark_factory):
    """OnlineNaive passes each example once (a plain DataLoader per sub-experience): nothing to remove."""
    benchmark = tensor_benchmark_factory(20, 4, 2, (8,))
    options = tiny_options(epochs=1)
    options.pop("train_epochs")
    ddr = DDRPlugin()
    strategy = OnlineNaive(plugins=[ddr], **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strategy.train(benchmark.train_stream[0])
    assert strategy.clock.train_iterations == 4  # 40 examples in batches of 10, once each
    assert all(record.stages == [] for record in ddr.stage_counts)


def test_a_stage_cuts_each_task_of_the_loader_and_keeps_the_memory():
    """A two-task experience split by task in a ReplayDataLoader (per-task batch sizes): task 1 loses
    every example, task 0 keeps 3 of 6, the memory stays; the epoch follows the longest kept task."""
    tasks = [0] * 6 + [1] * 4
    data = with_positions(
        _make_taskaware_tensor_classification_dataset(torch.arange(10.0), torch.zeros(10), task_labels=tasks)
    )
    memory = _make_taskaware_tensor_classification_dataset(-torch.arange(1.0, 6.0), torch.zeros(5))
    loader = ReplayDataLoader(data, memory, batch_size={0: 2, 1: 2}, batch_size_mem=2, shuffle=False)
    assert [len(dataset) for dataset in loader.datasets] == [6, 4, 5]
    assert len(loader) == 3
    keep_only_positions(loader, torch.tensor([0, 2, 5]))
    assert [len(dataset) for dataset in loader.datasets] == [3, 5]
    assert loader.datasets[1] is memory
    assert (loader.termination_dataset, len(loader), loader.batch_sizes) == (0, 2, [2, 2])
    inputs = sorted(float(x) for minibatch in loader for x in minibatch[0] if x >= 0)
    assert inputs == [0.0, 2.0, 5.0]


class AdaptedDataBuffer(SupervisedPlugin):
    """A user's buffer: stores the trained data read from ``strategy.adapted_dataset`` at the end of an
    experience and replays it in the next one through Avalanche's ReplayDataLoader."""

    def __init__(self):
        super().__init__()
        self.memory = None

    def before_training_exp(self, strategy, **kwargs):
        if self.memory is not None:
            strategy.dataloader = ReplayDataLoader(
                strategy.adapted_dataset,
                self.memory,
                oversample_small_tasks=True,
                batch_size=10,
                batch_size_mem=7,
                shuffle=True,
            )

    def after_training_exp(self, strategy, **kwargs):
        self.memory = strategy.adapted_dataset


def test_a_buffer_reading_adapted_dataset_gets_untagged_kept_examples():
    """Experience 1 is larger than experience 0, so tagged buffer rows would be scored as its examples."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.arange(2).repeat(10), torch.arange(2, 4).repeat(20)])  # 20 then 40 examples
    inputs = torch.randn(len(labels), 8, generator=generator)
    benchmark = tensor_benchmark((inputs, labels), (inputs, labels), 2, fixed_class_order=[0, 1, 2, 3])
    observations = []

    class StatisticsProbe(SupervisedPlugin):
        def after_training_epoch(self, strategy, **kwargs):
            observations.append(ddr.removal.statistics.observations.tolist())

    buffer, ddr = AdaptedDataBuffer(), DDRPlugin(removal_ratio=0.3, **DDR_RULES_OFF)
    strategy = Naive(plugins=[buffer, ddr, StatisticsProbe()], **tiny_options())
    strategy.train(benchmark.train_stream[0])
    first = benchmark.train_stream[0].dataset
    kept = [position for position in range(20) if position not in ddr.stage_counts[0].removed_positions]
    assert len(buffer.memory) == len(kept) == 14
    assert all(len(buffer.memory[row]) == 3 for row in range(14))  # x, y, task label: no position
    assert input_keys(buffer.memory) == input_keys(first.subset(kept))
    strategy.train(benchmark.train_stream[1])
    # the first epoch of experience 1: each of its 40 examples scored once, the 4 minibatches' 28 buffer
    # rows (7 each) only in the slot of rows that belong to no example
    assert observations[3] == [1] * 40 + [28]


def test_gdumb_is_refused_at_the_first_experience(tensor_benchmark_factory):
    benchmark = tensor_benchmark_factory(20, 4, 2, (8,))
    options = tiny_options()
    weights = options["model"].weight.detach().clone()
    strategy = GDumb(mem_size=20, plugins=[SparCLPlugin()], **options)
    with pytest.raises(ValueError) as error:
        strategy.train(benchmark.train_stream[0])
    assert str(error.value) == refusal(
        "GDumb", "its own class-balanced buffer of examples from every experience seen so far"
    )
    assert strategy.clock.train_iterations == 0  # before the first step
    assert torch.equal(strategy.model.weight, weights)  # nothing changed, no mask applied


def test_icarl_is_refused_at_the_first_experience(tensor_benchmark_factory):
    """iCaRL joins its exemplars to the experience's data, and the join drops DDR's positions."""
    benchmark = tensor_benchmark_factory(20, 4, 2, (8,))
    torch.manual_seed(0)
    feature_extractor, classifier = nn.Sequential(nn.Linear(8, 16), nn.ReLU()), nn.Linear(16, 4)
    parameters = [*feature_extractor.parameters(), *classifier.parameters()]
    strategy = ICaRL(
        feature_extractor=feature_extractor,
        classifier=classifier,
        optimizer=torch.optim.SGD(parameters, lr=0.1),
        memory_size=20,
        buffer_transform=None,
        fixed_memory=True,
        train_mb_size=10,
        train_epochs=3,
        evaluator=None,
        plugins=[DDRPlugin()],
    )
    trained = []
    with pytest.raises(ValueError) as error:
        for experience in benchmark.train_stream:
            strategy.train(experience)
            trained.append(experience.current_experience)
    assert trained == []
    assert str(error.value) == refusal(
        "ICaRL", "the experience's data joined with its exemplars, which loses DDR's example positions"
    )


def test_cumulative_is_refused_at_the_first_experience(tensor_benchmark_factory):
    benchmark = tensor_benchmark_factory(20, 4, 2, (8,))
    strategy = Cumulative(plugins=[DDRPlugin()], **tiny_options())
    trained = []
    with pytest.raises(ValueError) as error:
        for experience in benchmark.train_stream:
            strategy.train(experience)
            trained.append(experience.current_experience)
    assert trained == []
    assert str(error.value) == refusal("Cumulative", "the data of every experience seen so far")


def test_joint_training_is_refused(tensor_benchmark_factory):
    benchmark = tensor_benchmark_factory(20, 4, 2, (8,))
    strategy = JointTraining(plugins=[DDRPlugin()], **tiny_options())
    with pytest.raises(ValueError) as error:
        strategy.train(benchmark.train_stream)  # all experiences at once
    assert str(error.value) == refusal("JointTraining", "the data of all experiences at once")
