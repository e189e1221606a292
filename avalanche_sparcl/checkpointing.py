"""Checkpoint and resume a strategy through Avalanche's own mechanism, safely.

Avalanche pickles the whole strategy (model, optimizer, plugins with their masks, statistics and
generators, the evaluator's metric state) with dill and restores the global random generators
(``avalanche.training.determinism.rng_manager``). This module adds two things on top:

- a workaround that makes Avalanche's ``save_checkpoint`` work at all with the installed torch,
  dill and typing_extensions (see :func:`make_torch_optimizers_picklable`), applied automatically;
- atomic writes: the checkpoint goes to ``<name>.partial`` in the same folder, is flushed to disk,
  then renamed over the old one, so a kill at any moment leaves the last good checkpoint readable.

Checkpoints are taken between experiences (Avalanche cannot save inside its training loop).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import torch
from avalanche.checkpointing import maybe_load_checkpoint as avalanche_maybe_load_checkpoint
from avalanche.checkpointing import save_checkpoint as avalanche_save_checkpoint

Strategy = TypeVar("Strategy")

PARTIAL_SUFFIX = ".partial"
"""Suffix of the temporary file a checkpoint is written to before it replaces the old one."""


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


def partial_path(path: str | os.PathLike) -> Path:
    """Where :func:`save_checkpoint` writes before renaming: next to ``path``, on the same disk."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary stream whose content replaces ``path`` only once it is completely on disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_path(path)
    with open(temporary, "wb") as stream:
        yield stream
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    sync_folder(path.parent)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader never sees a half-written file."""
    with atomic_file(path) as stream:
        stream.write(text.encode())


def save_checkpoint(strategy: Any, path: str | os.PathLike, exclude: list[str] | None = None) -> Path:
    """Save ``strategy`` (between experiences) with Avalanche's ``save_checkpoint``, atomically.

    The previous checkpoint at ``path`` stays intact until the new one is completely on disk.
    ``exclude`` names strategy attributes not to save, as in Avalanche. Returns ``path``.
    """
    make_torch_optimizers_picklable()
    with atomic_file(path) as stream:
        avalanche_save_checkpoint(strategy, stream, exclude=exclude)
    return Path(path)


def sync_folder(folder: Path) -> None:
    """Flush the folder entry of a rename to disk (POSIX; a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def maybe_resume(
    strategy: Strategy,
    path: str | os.PathLike,
    map_location: str | torch.device | None = None,
    unique_objects: Any = None,
) -> tuple[Strategy, int]:
    """Load the checkpoint at ``path`` into ``strategy`` if there is one.

    Returns what Avalanche's ``maybe_load_checkpoint`` returns: the strategy and the index of the next
    training experience (0 and the strategy unchanged when ``path`` does not exist). The strategy's
    model, optimizer, plugins and evaluator are replaced by the saved ones, so read them from the
    returned strategy (``strategy.model``, ``strategy.plugins``), not from earlier references.
    """
    make_torch_optimizers_picklable()
    with contextlib.redirect_stdout(io.StringIO()):  # Avalanche prints one line per unpickled device
        return avalanche_maybe_load_checkpoint(strategy, path, map_location, unique_objects)


def load_checkpoint(
    strategy: Strategy,
    path: str | os.PathLike,
    map_location: str | torch.device | None = None,
    unique_objects: Any = None,
) -> tuple[Strategy, int]:
    """Like :func:`maybe_resume`, but a missing checkpoint is an error (FileNotFoundError)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    return maybe_resume(strategy, path, map_location, unique_objects)


make_torch_optimizers_picklable()
