"""SparCL (Wang et al., NeurIPS 2022) as Avalanche plugins: sparse continual learning."""

import warnings

# qpsolvers, imported by Avalanche for GEM only, warns on import that it found no solver.
warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)

from avalanche_sparcl.plugins import (  # noqa: E402
    DDRPlugin,
    DGMPlugin,
    MaskedHeadPlugin,
    ReservoirReplayPlugin,
    SparCLPlugin,
    TDMPlugin,
)

__version__ = "0.2.0"

__all__ = [
    "DDRPlugin",
    "DGMPlugin",
    "MaskedHeadPlugin",
    "ReservoirReplayPlugin",
    "SparCLPlugin",
    "TDMPlugin",
    "__version__",
]
