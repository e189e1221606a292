"""One seed for every global source of randomness a run draws from.

Model initialisation, data order (Avalanche's loaders shuffle with torch's global generator), replay
sampling and dropout all read the global generators of torch (CPU and CUDA), NumPy and Python, which
Avalanche's ``RNGManager`` seeds together; it is also what Avalanche's checkpoints save and restore.
The plugins' own generators (TDM's random regrowth) are seeded by their ``seed`` option.
"""

from __future__ import annotations

from avalanche.training.determinism.rng_manager import RNGManager

from avalanche_sparcl.validation import MAX_SEED, check_seed

__all__ = ["MAX_SEED", "seed_everything"]


def seed_everything(seed: int) -> int:
    """Seed torch (CPU and CUDA), NumPy and Python's ``random`` with ``seed``; returns it."""
    seed = check_seed("seed", seed)
    RNGManager.set_random_seeds(seed)
    return seed
