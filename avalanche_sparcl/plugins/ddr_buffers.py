"""The replay buffers DDR must keep to the kept examples: the storage policies it narrows and the
experience-start fill (ER_ACE's) it redoes after every removal stage."""

from __future__ import annotations

import copy
from typing import Any

import torch
from avalanche.training.utils import cycle
from torch import Tensor


def storage_policies(strategy: Any) -> list[Any]:
    """The experience-boundary replay buffers of the strategy (DER, ER_ACE) and of its plugins
    (ReplayPlugin). A buffer filled at every step (ReservoirReplayPlugin) is left out: it only ever
    sees the minibatches trained on, so removed examples cannot enter it after their removal."""
    owners = [strategy, *strategy.plugins]
    policies = [getattr(owner, "storage_policy", None) for owner in owners]
    unique = {
        id(policy): policy
        for policy in policies
        if policy is not None and hasattr(policy, "update") and not getattr(policy, "fills_every_step", False)
    }
    return list(unique.values())


def experience_of_kept_examples(experience: Any, kept_positions: Tensor) -> Any:
    """A view of ``experience`` whose dataset holds only the kept examples (what buffers read)."""
    kept_view = copy.copy(experience)
    kept_view._dataset = experience.dataset.subset(kept_positions.tolist())
    return kept_view


class KeptExamplesUpdate:
    """Wraps a storage policy's ``update`` to note an update made for an experience DDR has not started
    yet (ER_ACE fills its buffer before training, with all data): the policy's state before it is
    remembered, so every removal stage can redo it with the kept examples."""

    def __init__(self, policy: Any, original_update: Any, plugin: Any):
        self.policy = policy
        self.original_update = original_update
        self.plugin = plugin

    def __call__(self, strategy: Any, **kwargs: Any) -> Any:
        if self.plugin.experience_counter != strategy.clock.train_exp_counter:
            self.plugin.updated_at_start.append(
                BufferRefill(self, strategy.clock.train_exp_counter, policy_state(self.policy), kwargs)
            )
        return self.original_update(strategy, **kwargs)


class BufferRefill:
    """An experience-start buffer update (ER_ACE) to redo with the kept examples after each stage."""

    def __init__(self, update: KeptExamplesUpdate, counter: int, state_before: dict, kwargs: dict):
        self.update = update
        self.counter = counter
        self.state_before = state_before
        self.kwargs = kwargs

    def redo_with_kept_examples(self, strategy: Any) -> None:
        """Restore the buffer as it was before the update, update it from the kept examples (the
        strategy's experience is their view by now), and give the strategy a replay loader over the
        new buffer (ER_ACE draws from its own)."""
        policy = self.update.policy
        vars(policy).clear()
        vars(policy).update(policy_state_copy(self.state_before))
        self.update.original_update(strategy, **self.kwargs)
        if policy is getattr(strategy, "storage_policy", None) and getattr(strategy, "replay_loader", None):
            rebuild_strategy_replay_loader(strategy)


def policy_state(policy: Any) -> dict:
    """A copy of a storage policy's state, deep enough that later updates do not change it.

    Buffers replace their datasets and weight tensors rather than mutating them, so copying the
    containers and the per-group buffer objects suffices (no example data is copied).
    """
    return policy_state_copy(vars(policy))


def policy_state_copy(state: dict) -> dict:
    """Copy of a state dict: containers and group buffers copied, datasets and tensors shared."""
    copied = {}
    for name, value in state.items():
        if isinstance(value, dict):
            copied[name] = {key: copy.copy(item) for key, item in value.items()}
        elif isinstance(value, (set, list)):
            copied[name] = copy.copy(value)
        else:
            copied[name] = value
    return copied


def rebuild_strategy_replay_loader(strategy: Any) -> None:
    """A replay loader over the strategy's current buffer, as ER_ACE builds it at experience start."""
    buffer = strategy.storage_policy.buffer
    if len(buffer) < strategy.batch_size_mem:
        strategy.replay_loader = None
        return
    strategy.replay_loader = cycle(
        torch.utils.data.DataLoader(buffer, batch_size=strategy.batch_size_mem, shuffle=True, drop_last=True)
    )
