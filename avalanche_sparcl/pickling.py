"""What pickling a strategy needs from torch.

Avalanche's own ``save_checkpoint`` pickles the whole strategy with dill; with the installed torch it
fails for every strategy until the fix below is applied. It is applied when ``avalanche_sparcl`` is
imported after torch, when its plugins are imported (a SparCL strategy has them) and by its own
checkpoint functions, so Avalanche users keep their own checkpoint calls. This module does not
import torch itself: ``import avalanche_sparcl`` stays cheap for the command line.
"""

from __future__ import annotations

import sys


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
