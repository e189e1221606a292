"""Thin Avalanche adapters over the SparCL core."""

from avalanche_sparcl.plugins.tdm import TDMPlugin

__all__ = ["TDMPlugin"]
