"""What pickling a strategy needs from torch, applied when the package is imported.

Avalanche's own ``save_checkpoint`` pickles the whole strategy with dill; with the installed torch it
fails for every strategy until the fix below is applied, so ``import avalanche_sparcl`` applies it:
Avalanche users keep their own checkpoint calls.
"""

from __future__ import annotations

import sys

import torch  # noqa: F401  (loads torch.optim, whose submodules are re-attached)


def make_torch_optimizers_picklable() -> None:
    """Re-attach the ``torch.optim`` submodules that ``torch/optim/__init__.py`` deletes.

    Without them dill cannot find e.g. ``torch.optim.sgd.SGD`` by reference, pickles the class by
    value, reaches ``typing_extensions.sentinel`` and fails with ``PicklingError: Can't pickle
    sentinel`` for every strategy (torch 2.14, dill 0.4, typing_extensions 4.16). Idempotent and
    cheap: it only sets attributes that are missing.
    """
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("torch.optim."):
            continue
        parent_name, _, child_name = name.rpartition(".")
        parent = sys.modules.get(parent_name)
        if parent is not None and not hasattr(parent, child_name):
            setattr(parent, child_name, module)
