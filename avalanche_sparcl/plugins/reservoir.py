"""ReservoirReplayPlugin: the replay protocol of the SparCL reference (and mammoth) for Avalanche.

Avalanche's DER, ER_ACE and ReplayPlugin fill their buffers when an experience ends (ER_ACE when
it starts), so the examples of the experience being trained are never replayed. The reference adds
every minibatch to a reservoir buffer after every step (DER++ with that step's logits) and draws
the replay batch from it before every forward pass. This plugin gives the stock strategies that
protocol:

- ``DER``: the strategy's replay source becomes the reservoir (its own prepend and DER++ loss
  terms are unchanged); its end-of-experience buffer update, a full extra forward pass, is skipped.
- ``ER_ACE``: likewise, replaying from the second experience on, as ER_ACE itself does.
- any other strategy without a buffer of its own (``Naive``: ER): the replay batch is prepended to
  the minibatch before the forward pass, so the strategy's criterion sees current and buffer rows.
"""

from __future__ import annotations

from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training import DER, ER_ACE
from avalanche.training.plugins import ReplayPlugin

from avalanche_sparcl.plugins.composition import first_logit_rewriter_before
from avalanche_sparcl.reservoir import ReservoirBuffer
from avalanche_sparcl.validation import check_positive_int, check_seed


class ReservoirBatches:
    """An endless replay 'loader' over the buffer: each ``next`` draws a fresh batch from it."""

    def __init__(self, buffer: ReservoirBuffer, batch_size: int):
        self.buffer = buffer
        self.batch_size = batch_size

    def __iter__(self) -> ReservoirBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor, ...]:
        return self.buffer.sample(self.batch_size)


class OnlineStoragePolicy:
    """Stands in for a strategy's storage policy: the buffer is the reservoir, filled every step, so
    the strategy's own experience-boundary ``update`` has nothing to do."""

    fills_every_step = True

    def __init__(self, buffer: ReservoirBuffer):
        self.buffer = buffer

    def update(self, strategy: Any, **kwargs: Any) -> None:
        """Nothing: the plugin adds each minibatch after its step."""


class ReservoirReplayPlugin(SupervisedPlugin):
    """Replay from a reservoir buffer of ``mem_size`` examples updated with every current minibatch.

    ``batch_size_mem`` buffer examples are replayed per step (default: the strategy's own
    ``batch_size_mem``, else its training minibatch size); fewer while the buffer holds fewer.
    ``seed`` drives reservoir sampling and the replay draws. With DER it must come before any
    masked-head plugin in ``plugins``, so the logits it stores are the model's raw outputs.
    """

    replays_current_examples = True  # see plugins.composition

    def __init__(self, mem_size: int = 200, batch_size_mem: int | None = None, seed: int = 0):
        super().__init__()
        if batch_size_mem is not None:
            batch_size_mem = check_positive_int("batch_size_mem", batch_size_mem)
        self.buffer = ReservoirBuffer(check_positive_int("mem_size", mem_size), check_seed("seed", seed))
        self.requested_batch_size_mem = batch_size_mem
        self.batch_size_mem = batch_size_mem or 0
        self.mode = ""  # 'der', 'er_ace' or 'prepend', set when training starts
        self.batches: ReservoirBatches | None = None  # the replay source given to DER / ER_ACE
        self.loader_rows = 0
        self.staged: tuple[torch.Tensor, ...] | None = None

    @property
    def mem_size(self) -> int:
        return self.buffer.capacity

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        """Choose how to reach the strategy's replay, and refuse setups with two buffers."""
        if any(isinstance(plugin, ReplayPlugin) for plugin in strategy.plugins):
            raise ValueError(
                "ReservoirReplayPlugin replaces ReplayPlugin: use one of them, not both (two buffers)"
            )
        if isinstance(strategy, (DER, ER_ACE)):
            self.mode = "der" if isinstance(strategy, DER) else "er_ace"
            own = strategy.batch_size_mem
            if self.requested_batch_size_mem not in (None, own):
                raise ValueError(
                    f"ReservoirReplayPlugin: batch_size_mem={self.requested_batch_size_mem} differs from "
                    f"the strategy's batch_size_mem={own}; give it to the strategy only"
                )
            self.batch_size_mem = own
            if not isinstance(strategy.storage_policy, OnlineStoragePolicy):
                strategy.storage_policy = OnlineStoragePolicy(self.buffer)
        elif getattr(strategy, "storage_policy", None) is not None:
            raise ValueError(
                f"ReservoirReplayPlugin: {type(strategy).__name__} keeps a replay buffer of its own; "
                "use it with Naive (ER), DER or ER_ACE"
            )
        else:
            self.mode = "prepend"
            self.batch_size_mem = self.requested_batch_size_mem or strategy.train_mb_size
        if self.mode == "der":
            refuse_masked_head_before(self, strategy.plugins)
        self.batches = ReservoirBatches(self.buffer, self.batch_size_mem)

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        """Remember how many rows come from the experience; point the strategy at the reservoir."""
        self.loader_rows = len(strategy.mbatch[0])
        if self.mode in ("der", "er_ace"):
            ready = len(self.buffer) >= self.batch_size_mem
            if self.mode == "er_ace":  # ER_ACE replays from its second experience on
                ready = ready and strategy.experience.current_experience > 0
            strategy.replay_loader = self.batches if ready else None

    def before_forward(self, strategy: Any, **kwargs: Any) -> None:
        """ER: buffer rows first, then the current ones (DER's layout, which DDR reads)."""
        if self.mode != "prepend" or len(self.buffer) == 0:
            return
        replayed = self.buffer.sample(self.batch_size_mem)
        for field, values in enumerate(replayed[:3]):
            strategy.mbatch[field] = torch.cat((values.to(strategy.device), strategy.mbatch[field]))

    def after_forward(self, strategy: Any, **kwargs: Any) -> None:
        """Keep this step's current rows (and their raw logits, for DER++) to add after the step."""
        rows = self.loader_rows
        current = tuple(strategy.mbatch[field][-rows:].detach() for field in range(3))
        logits = (strategy.mb_output[-rows:].detach(),) if self.mode == "der" else ()
        self.staged = current + logits

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        """Offer the step's current examples to the reservoir (sampled before, added after: mammoth)."""
        if self.staged is not None:
            self.buffer.add(*self.staged)
            self.staged = None

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Leave no replay iterator on the strategy between experiences."""
        if self.mode in ("der", "er_ace"):
            strategy.replay_loader = None


def refuse_masked_head_before(plugin: ReservoirReplayPlugin, plugins: list[Any]) -> None:
    """DER++ stores logits from ``after_forward``; a masked head that ran first would store -inf."""
    other = first_logit_rewriter_before(plugin, plugins)
    if other is not None:
        raise ValueError(
            f"ReservoirReplayPlugin must come before {type(other).__name__} in plugins: with DER it "
            "stores the model's raw logits, which the masked head replaces"
        )
