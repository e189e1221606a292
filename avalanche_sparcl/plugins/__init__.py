"""Thin Avalanche adapters over the SparCL core."""

from avalanche_sparcl.plugins.ddr import DDRPlugin
from avalanche_sparcl.plugins.dgm import DGMPlugin
from avalanche_sparcl.plugins.guard import NonFiniteGuardPlugin, NonFiniteTrainingError
from avalanche_sparcl.plugins.masked_head import MaskedHeadPlugin
from avalanche_sparcl.plugins.reservoir import ReservoirReplayPlugin
from avalanche_sparcl.plugins.sparcl import SparCLPlugin
from avalanche_sparcl.plugins.tdm import TDMPlugin

__all__ = [
    "DDRPlugin",
    "DGMPlugin",
    "MaskedHeadPlugin",
    "NonFiniteGuardPlugin",
    "NonFiniteTrainingError",
    "ReservoirReplayPlugin",
    "SparCLPlugin",
    "TDMPlugin",
]
