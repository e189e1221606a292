"""Thin Avalanche adapters over the SparCL core."""

from avalanche_sparcl.pickling import make_torch_optimizers_picklable
from avalanche_sparcl.plugins.ddr import DDRPlugin
from avalanche_sparcl.plugins.dgm import DGMPlugin
from avalanche_sparcl.plugins.guard import NonFiniteGuardPlugin, NonFiniteTrainingError
from avalanche_sparcl.plugins.masked_head import MaskedHeadPlugin
from avalanche_sparcl.plugins.reservoir import ReservoirReplayPlugin
from avalanche_sparcl.plugins.sparcl import SparCLPlugin
from avalanche_sparcl.plugins.tdm import TDMPlugin

# torch and Avalanche are imported by now: Avalanche's save_checkpoint can pickle a SparCL strategy
make_torch_optimizers_picklable()

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
