"""SparCL (Wang et al., NeurIPS 2022) as Avalanche plugins: sparse continual learning.

The plugins are imported on first use, so that ``avalanche_sparcl.sparse`` (the torch-only core)
can be used without importing Avalanche.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from avalanche_sparcl.pickling import make_torch_optimizers_picklable

# qpsolvers, imported by Avalanche for GEM only, warns on import that it found no solver.
warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)
# Avalanche's save_checkpoint pickles the strategy with dill, which needs torch.optim's submodules
# (a no-op when torch is not imported yet; the plugins apply it again when they are imported)
make_torch_optimizers_picklable()

__version__ = "0.4.0"

__all__ = [
    "DDRPlugin",
    "DGMPlugin",
    "MaskedHeadPlugin",
    "ReservoirReplayPlugin",
    "SparCLPlugin",
    "TDMPlugin",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """The plugins, imported from ``avalanche_sparcl.plugins`` when first asked for."""
    if name in __all__ and name != "__version__":
        return getattr(importlib.import_module("avalanche_sparcl.plugins"), name)
    raise AttributeError(f"module 'avalanche_sparcl' has no attribute {name!r}")
