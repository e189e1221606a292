"""``model.pt``: a finished run's trained model as tensors and plain values only.

The runner writes it before results.json, so every run finished by this version has one; ``sparcl-bench
export`` reads it with ``torch.load(weights_only=True)``, which builds dicts, strings, numbers and
tensors and nothing else. So exporting a run folder from anywhere (a colleague's, a paper's artefacts)
runs no code from it, unlike ``checkpoint.pkl``, a pickle of the whole strategy that only the user who
signed it resumes (see ``avalanche_sparcl.checkpointing``). The file names the run's fingerprint and
seed, so a model.pt copied from another run folder is refused instead of exported under this run's name.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avalanche_sparcl.atomic_files import atomic_file
from avalanche_sparcl.distributed import unwrap
from avalanche_sparcl.experiments.config import ConfigError
from avalanche_sparcl.metrics.masks import WEIGHT_MASKS, strategy_masks

MODEL_FORMAT = "avalanche-sparcl trained model v1"
RESTART = "start the run over with --restart"


def write_trained_model(strategy: Any, path: Path, fingerprint: str, seed: int) -> Path:
    """Write the strategy's model weights and weight masks (on the CPU) to ``path``, atomically."""
    record = {
        "format": MODEL_FORMAT,
        "fingerprint": fingerprint,
        "seed": seed,
        "state_dict": {
            name: value.detach().cpu() for name, value in unwrap(strategy.model).state_dict().items()
        },
        "masks": {name: mask.detach().cpu() for name, mask in strategy_masks(strategy, WEIGHT_MASKS).items()},
    }
    with atomic_file(path) as stream:
        torch.save(record, stream)
    return Path(path)


def read_trained_model(
    path: Path, fingerprint: str, seed: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The (state_dict, masks) in ``path``, written for the run with ``fingerprint`` and ``seed``.

    Loaded weights-only, so a crafted file cannot run code; anything but what
    :func:`write_trained_model` writes for this run raises :class:`ConfigError` naming ``path``.
    """
    if not path.is_file():
        raise ConfigError(
            f"{path.parent}: no {path.name}, so the trained model is not there (runs finished by version "
            f"0.3.0 or earlier have none); {RESTART}"
        )
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise ConfigError(
            f"{path}: not a trained model written by sparcl-bench (it does not load as tensors and plain "
            f"values only: {type(error).__name__}); {RESTART}"
        ) from None
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        raise ConfigError(f"{path}: not a trained model written by sparcl-bench; {RESTART}")
    if record.get("fingerprint") != fingerprint or record.get("seed") != seed:
        raise ConfigError(
            f"{path}: the trained model of another run (its fingerprint or seed differs from "
            f"results.json's), copied or left here; {RESTART}"
        )
    state_dict, masks = record.get("state_dict"), record.get("masks")
    for what, tensors in (("state_dict", state_dict), ("masks", masks)):
        if not isinstance(tensors, dict) or not all(
            isinstance(name, str) and isinstance(value, Tensor) for name, value in tensors.items()
        ):
            raise ConfigError(f"{path}: its {what} is not a mapping of names to tensors; {RESTART}")
    return state_dict, masks
