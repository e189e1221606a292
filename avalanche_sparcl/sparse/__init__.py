"""Torch-only core of SparCL: sparse layer sets, exact-count masks, CWI and the TDM schedule.

Nothing here imports Avalanche, so the core can be driven by any training loop: ``SparseTraining``
is the one object a plain PyTorch loop needs (docs/plain_pytorch.md).
"""

from avalanche_sparcl.sparse.dynamic import DynamicSparsity, MaskUpdateRecord, TDMSettings
from avalanche_sparcl.sparse.importance import ContinualWeightImportance
from avalanche_sparcl.sparse.layers import default_sparse_weights, load_profile, resolve_profile
from avalanche_sparcl.sparse.masks import grow_random, kept_count, prune_lowest, top_k_mask
from avalanche_sparcl.sparse.schedule import MaskUpdate, MaskUpdateKind, mask_updates
from avalanche_sparcl.sparse.training import SparseTraining

__all__ = [
    "ContinualWeightImportance",
    "DynamicSparsity",
    "MaskUpdate",
    "MaskUpdateKind",
    "MaskUpdateRecord",
    "SparseTraining",
    "TDMSettings",
    "default_sparse_weights",
    "grow_random",
    "kept_count",
    "load_profile",
    "mask_updates",
    "prune_lowest",
    "resolve_profile",
    "top_k_mask",
]
