"""Masks enforced at the optimizer step itself.

Gradient masks applied when the backward pass ends are undone by any code that edits gradients later:
GEM and A-GEM project them in their own ``after_backward``, which runs after every user plugin. The
optimizer's step hooks run after all of that, right before and after the update, whatever the training
loop, so they are where "no pruned weight moves" is enforced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class OptimizerStepHooks:
    """Runs ``before_step`` and ``after_step`` around every ``step()`` of the optimizer it follows.

    :meth:`follow` is idempotent and moves the hooks when the training loop switches optimizers.
    Optimizers drop their hooks when pickled, so a checkpoint keeps no optimizer here either and the
    next :meth:`follow` after a resume hooks the restored optimizer.
    """

    def __init__(self, before_step: Callable[[], None], after_step: Callable[[], None] | None = None):
        self.before_step = before_step
        self.after_step = after_step
        self.optimizer: torch.optim.Optimizer | None = None
        self.handles: list[Any] = []

    def follow(self, optimizer: torch.optim.Optimizer) -> bool:
        """Hook ``optimizer`` (unhooking the previous one); returns whether it was not hooked yet."""
        if optimizer is self.optimizer:
            return False
        self.remove()
        self.optimizer = optimizer
        self.handles.append(optimizer.register_step_pre_hook(self._run_before_step))
        if self.after_step is not None:
            self.handles.append(optimizer.register_step_post_hook(self._run_after_step))
        return True

    def remove(self) -> None:
        """Unhook the optimizer."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.optimizer = None

    def _run_before_step(self, _optimizer: Any, _args: Any, _kwargs: Any) -> None:
        self.before_step()

    def _run_after_step(self, _optimizer: Any, _args: Any, _kwargs: Any) -> None:
        self.after_step()

    def __getstate__(self) -> dict:
        return {**vars(self), "optimizer": None, "handles": []}
