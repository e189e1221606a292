"""pytest plugin: SparCL injected into every strategy Avalanche's own tests build.

Loaded by ``compat/run.py`` with ``-p sparcl_injection``. ``SPARCL_COMPAT_MODE`` chooses what is
appended to the plugins of every strategy that ``BaseTemplate.__init__`` builds (after the test's own
plugins, before the evaluator Avalanche adds): ``sparcl`` the default ``SparCLPlugin(0.75, 0.3, 0.2)``,
``tdm`` TDM alone at 0.9, anything else nothing. After every ``train()`` call the current model is
checked: no pruned entry of a masked parameter may be non-zero (the test fails otherwise, naming it).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

MODE_VARIABLE = "SPARCL_COMPAT_MODE"


def make_injected_plugin(mode: str) -> Any:
    """The plugin appended to every strategy in ``mode`` (None: nothing)."""
    from avalanche_sparcl import SparCLPlugin, TDMPlugin

    if mode == "sparcl":
        return SparCLPlugin(sparsity=0.75, removal_ratio=0.3, gradient_sparsity=0.2)
    if mode == "tdm":
        return TDMPlugin(sparsity=0.9)
    return None


def pruned_nonzero(strategy: Any) -> dict[str, int]:
    """Per masked parameter of the strategy's current model: pruned entries that are not zero."""
    from avalanche_sparcl.distributed import unwrap

    params = dict(unwrap(strategy.model).named_parameters())
    found: dict[str, int] = {}
    for plugin in strategy.plugins:
        for name, mask in getattr(plugin, "masks", {}).items():
            param = params.get(name)
            if param is None or param.shape != mask.shape:
                continue
            count = int((param.detach()[~mask.to(param.device)] != 0).sum())
            if count:
                found[name] = count
    return found


def pytest_configure(config: Any) -> None:
    mode = os.environ.get(MODE_VARIABLE, "")
    if mode not in ("sparcl", "tdm"):
        return
    from avalanche.training.templates.base import BaseTemplate

    original_init = BaseTemplate.__init__
    original_train = BaseTemplate.train

    @functools.wraps(original_init)
    def init_with_sparcl(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        plugin = make_injected_plugin(mode)
        if plugin is not None:
            self.plugins.append(plugin)

    @functools.wraps(original_train)
    def train_and_check(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original_train(self, *args, **kwargs)
        with torch.no_grad():
            found = pruned_nonzero(self)
        if found:
            listed = ", ".join(f"{name}: {count}" for name, count in found.items())
            raise AssertionError(f"SparCL invariant broken after train(): pruned entries non-zero ({listed})")
        return result

    BaseTemplate.__init__ = init_with_sparcl
    BaseTemplate.train = train_and_check
