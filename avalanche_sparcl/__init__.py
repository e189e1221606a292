"""SparCL (Wang et al., NeurIPS 2022) as Avalanche plugins: sparse continual learning."""

from avalanche_sparcl.plugins import DDRPlugin, DGMPlugin, MaskedHeadPlugin, SparCLPlugin, TDMPlugin

__version__ = "0.1.0"

__all__ = ["DDRPlugin", "DGMPlugin", "MaskedHeadPlugin", "SparCLPlugin", "TDMPlugin", "__version__"]
