"""The online reservoir buffer (reference / mammoth replay protocol) and its Avalanche plugin."""

from __future__ import annotations

import warnings

import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training import DER, ER_ACE, Naive
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from conftest import HEAD_RULES_OFF, RULES_OFF, TDM_RULES_OFF

from avalanche_sparcl import MaskedHeadPlugin, ReservoirReplayPlugin, SparCLPlugin
from avalanche_sparcl.models import SmallCNN
from avalanche_sparcl.reservoir import ReservoirBuffer


def offered_one_by_one(capacity: int, seed: int, stream: torch.Tensor) -> torch.Tensor:
    """Algorithm R as the reference runs it: one example at a time."""
    buffer = ReservoirBuffer(capacity, seed)
    for value in stream:
        buffer.add(value.view(1, 1), value.view(1).long(), torch.zeros(1, dtype=torch.long))
    return buffer.inputs[: len(buffer)].flatten()


def test_reservoir_fills_in_stream_order_until_full():
    buffer = ReservoirBuffer(5, seed=0)
    buffer.add(torch.arange(3.0).view(3, 1), torch.arange(3), torch.zeros(3, dtype=torch.long))
    assert len(buffer) == 3 and buffer.seen == 3
    assert buffer.inputs[:3].flatten().tolist() == [0.0, 1.0, 2.0]
    buffer.add(torch.arange(3.0, 5.0).view(2, 1), torch.arange(3, 5), torch.zeros(2, dtype=torch.long))
    assert buffer.inputs.flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert buffer.labels.tolist() == [0, 1, 2, 3, 4]


def test_batched_adds_equal_algorithm_r_one_example_at_a_time():
    stream = torch.arange(300.0)
    batched = ReservoirBuffer(20, seed=3)
    for start in range(0, 300, 32):
        chunk = stream[start : start + 32]
        batched.add(chunk.view(-1, 1), chunk.long(), torch.zeros(len(chunk), dtype=torch.long))
    assert batched.seen == 300 and len(batched) == 20
    assert torch.equal(batched.inputs.flatten(), offered_one_by_one(20, 3, stream))


def test_every_stream_example_is_kept_with_equal_probability():
    capacity, stream_length, seeds = 10, 100, 400
    kept = torch.zeros(stream_length)
    for seed in range(seeds):
        buffer = ReservoirBuffer(capacity, seed)
        for start in range(0, stream_length, 16):
            chunk = torch.arange(start, min(start + 16, stream_length))
            buffer.add(chunk.view(-1, 1).float(), chunk, torch.zeros(len(chunk), dtype=torch.long))
        kept[buffer.labels] += 1
    frequency = kept / seeds
    assert kept.sum() == capacity * seeds
    # expected 0.1 each; first and last quarter of the stream must not differ (the stock buffer
    # would keep only the last ones)
    assert abs(frequency[:25].mean().item() - 0.1) < 0.02
    assert abs(frequency[-25:].mean().item() - 0.1) < 0.02


def test_sample_draws_distinct_rows_and_fewer_while_filling():
    buffer = ReservoirBuffer(50, seed=1)
    buffer.add(torch.arange(8.0).view(8, 1), torch.arange(8), torch.zeros(8, dtype=torch.long))
    inputs, labels, tasks = buffer.sample(32)
    assert len(inputs) == 8 and sorted(labels.tolist()) == list(range(8))
    inputs, labels, tasks = buffer.sample(3)
    assert len(set(labels.tolist())) == 3
    assert torch.equal(inputs.flatten().long(), labels)


def test_buffer_refuses_changed_shapes_and_bad_arguments():
    buffer = ReservoirBuffer(4)
    buffer.add(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"buffered inputs have shape \(3,\) per example, got \(4,\)"):
        buffer.add(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="mem_size must be an integer >= 1, got 0"):
        ReservoirBuffer(0)
    with pytest.raises(ValueError, match="batch_size_mem must be an integer >= 1, got 0"):
        ReservoirReplayPlugin(10, batch_size_mem=0)


class ForwardRows:
    """Rows and labels each training forward pass sees (a model forward hook)."""

    def __init__(self, model: torch.nn.Module):
        self.rows: list[int] = []
        model.register_forward_hook(self.record)

    def record(self, module, inputs, output):
        if module.training:
            self.rows.append(len(inputs[0]))


def quiet() -> EvaluationPlugin:
    return EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])


def build(kind: str, plugins: list, epochs: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    model = SmallCNN()
    common = dict(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.03),
        train_mb_size=32,
        train_epochs=epochs,
        eval_mb_size=512,
        evaluator=quiet(),
    )
    if kind == "der":
        return DER(mem_size=200, plugins=plugins, **common)
    if kind == "er_ace":
        return ER_ACE(mem_size=200, plugins=plugins, **common)
    return Naive(plugins=plugins, **common)


@pytest.mark.parametrize("kind", ["naive", "der", "er_ace"])
def test_buffer_is_updated_with_every_current_minibatch(kind, digits_benchmark):
    reservoir = ReservoirReplayPlugin(200, seed=0)
    strategy = build(kind, [reservoir], epochs=2)
    first = digits_benchmark.train_stream[0]
    strategy.train(first)
    n = len(first.dataset)
    assert reservoir.buffer.seen == 2 * n  # every current example, once per epoch, buffer rows never
    assert len(reservoir.buffer) == 200
    assert set(reservoir.buffer.labels.tolist()) == set(first.classes_in_this_experience)
    second = digits_benchmark.train_stream[1]
    strategy.train(second)
    assert reservoir.buffer.seen == 2 * n + 2 * len(second.dataset)
    labels = set(reservoir.buffer.labels.tolist())
    assert labels >= set(second.classes_in_this_experience)  # current classes are replayed
    assert labels & set(first.classes_in_this_experience)
    if kind != "naive":
        assert isinstance(strategy.storage_policy.buffer, ReservoirBuffer)
        assert strategy.replay_loader is None  # nothing unpicklable left between experiences


def test_er_prepends_a_replay_batch_from_the_second_step_on(digits_benchmark):
    reservoir = ReservoirReplayPlugin(100, batch_size_mem=16, seed=0)
    strategy = build("naive", [reservoir])
    rows = ForwardRows(strategy.model)
    experience = digits_benchmark.train_stream[0]
    strategy.train(experience)
    n = len(experience.dataset)
    current = [32] * (n // 32) + ([n % 32] if n % 32 else [])
    # step 1: empty buffer; step 2: 32 examples buffered, 16 replayed; then 16 every step
    assert rows.rows == [current[0]] + [size + 16 for size in current[1:]]


def test_er_ace_replays_from_the_second_experience_as_er_ace_does(digits_benchmark):
    reservoir = ReservoirReplayPlugin(200, seed=0)
    strategy = build("er_ace", [reservoir])
    rows = ForwardRows(strategy.model)
    strategy.train(digits_benchmark.train_stream[0])
    steps_first = len(rows.rows)
    assert steps_first == -(-len(digits_benchmark.train_stream[0].dataset) // 32)
    strategy.train(digits_benchmark.train_stream[1])
    second = rows.rows[steps_first:]
    steps_second = -(-len(digits_benchmark.train_stream[1].dataset) // 32)
    assert len(second) == 2 * steps_second  # one current and one buffer forward per step
    assert second[1::2] == [strategy.batch_size_mem] * steps_second  # ER_ACE default: 10


def test_der_stores_raw_logits_even_with_the_masked_head(digits_benchmark):
    reservoir = ReservoirReplayPlugin(200, seed=0)
    strategy = build("der", [reservoir, SparCLPlugin(0.75, 0.0, 0.2, masked_head=True)])
    for experience in digits_benchmark.train_stream[:2]:
        strategy.train(experience)
    assert reservoir.buffer.logits.shape == (200, 10)
    assert torch.isfinite(reservoir.buffer.logits).all()


def test_der_refuses_a_masked_head_listed_before_the_buffer(digits_benchmark):
    strategy = build("der", [SparCLPlugin(0.75, masked_head=True), ReservoirReplayPlugin(200)])
    with pytest.raises(ValueError, match="ReservoirReplayPlugin must come before SparCLPlugin in plugins"):
        strategy.train(digits_benchmark.train_stream[0])
    strategy = build("der", [MaskedHeadPlugin(), ReservoirReplayPlugin(200)])
    with pytest.raises(ValueError, match="must come before MaskedHeadPlugin"):
        strategy.train(digits_benchmark.train_stream[0])


def test_two_buffers_are_refused(digits_benchmark):
    strategy = build("naive", [ReplayPlugin(mem_size=50), ReservoirReplayPlugin(200)])
    with pytest.raises(ValueError, match="use one of them, not both"):
        strategy.train(digits_benchmark.train_stream[0])
    strategy = build("der", [ReservoirReplayPlugin(200, batch_size_mem=8)])
    with pytest.raises(ValueError, match="batch_size_mem=8 differs from the strategy's batch_size_mem=32"):
        strategy.train(digits_benchmark.train_stream[0])


def newest_experience_accuracy(reservoir: bool, digits_benchmark) -> float:
    plugins = [ReservoirReplayPlugin(200, seed=0)] if reservoir else []
    strategy = build("der", [*plugins, MaskedHeadPlugin(**HEAD_RULES_OFF)], epochs=3)
    for experience in digits_benchmark.train_stream[:3]:
        strategy.train(experience)
    metrics = strategy.eval(digits_benchmark.test_stream[2:3])
    return metrics["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp002"]


def test_masked_head_learns_the_newest_experience_only_with_the_online_buffer(digits_benchmark):
    """With Avalanche's end-of-experience buffer the current classes never compete with the old ones
    in any loss term, so the newest experience is lost; the reference's online buffer fixes that."""
    assert newest_experience_accuracy(False, digits_benchmark) < 0.05  # 0.0 measured
    assert newest_experience_accuracy(True, digits_benchmark) > 0.4  # 0.54 measured


@pytest.mark.parametrize("kind", ["naive", "der", "er_ace"])
def test_after_data_removal_only_kept_examples_enter_the_buffer(kind, digits_benchmark):
    reservoir = ReservoirReplayPlugin(200, seed=0)
    sparcl = SparCLPlugin(0.75, removal_ratio=0.3, gradient_sparsity=0.2, **RULES_OFF)
    strategy = build(kind, [reservoir, sparcl], epochs=4)
    experience = digits_benchmark.train_stream[0]
    strategy.train(experience)
    n = len(experience.dataset)
    removed = round(0.3 * n)
    assert [(stage.epoch, stage.removed) for stage in sparcl.ddr.stage_counts[0].stages] == [(2, removed)]
    assert reservoir.buffer.seen == 2 * n + 2 * (n - removed)
    if kind != "naive":
        assert type(strategy.storage_policy.update).__name__ == "method"  # DDR left it alone


def test_masked_head_without_an_online_buffer_warns_once_per_training_call(digits_benchmark):
    # the rules off: no other warning
    sparcl = SparCLPlugin(0.75, 0.0, 0.0, masked_head=True, **TDM_RULES_OFF, **HEAD_RULES_OFF)
    strategy = build("der", [sparcl])
    with pytest.warns(UserWarning, match="masked head without ReservoirReplayPlugin") as caught:
        strategy.train(digits_benchmark.train_stream[0])
    assert len([w for w in caught if "masked head" in str(w.message)]) == 1
    sparcl = SparCLPlugin(0.75, 0.0, 0.0, masked_head=True, **TDM_RULES_OFF, **HEAD_RULES_OFF)
    strategy = build("der", [ReservoirReplayPlugin(200), sparcl])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message="No loggers specified")
        strategy.train(digits_benchmark.train_stream[0])


@pytest.mark.parametrize(
    ("strategy_name", "buffer"), [("er", "reservoir"), ("der", "reservoir"), ("er", "stock")]
)
def test_config_buffer_key_chooses_the_replay_protocol(tmp_path, strategy_name, buffer):
    from avalanche_sparcl.experiments.config import load_config
    from avalanche_sparcl.experiments.runner import RunOptions, build_evaluator, build_strategy

    path = tmp_path / "config.yaml"
    path.write_text(
        "benchmark: {name: split_digits}\nmodel: {name: small_cnn}\n"
        f"training: {{strategy: {strategy_name}, buffer_size: 120, batch_size: 16, buffer: {buffer}}}\n"
        "sparcl: {sparsity: 0.75, masked_head: true}\n"
    )
    config = load_config(path)
    evaluator, _ = build_evaluator(tmp_path, quiet=True, log_files=False)
    sparcl = SparCLPlugin(0.75, masked_head=True)
    strategy = build_strategy(config, SmallCNN(), [sparcl], evaluator, RunOptions(tmp_path), seed=4)
    reservoirs = [p for p in strategy.plugins if isinstance(p, ReservoirReplayPlugin)]
    replays = [p for p in strategy.plugins if isinstance(p, ReplayPlugin)]
    if buffer == "reservoir":
        assert strategy.plugins.index(reservoirs[0]) < strategy.plugins.index(sparcl) and not replays
        assert reservoirs[0].mem_size == 120
        assert reservoirs[0].requested_batch_size_mem == (16 if strategy_name == "er" else None)
        assert torch.equal(
            reservoirs[0].buffer.generator.get_state(), torch.Generator().manual_seed(4).get_state()
        )
    else:
        assert not reservoirs and replays[0].mem_size == 120
