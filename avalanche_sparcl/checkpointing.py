"""Checkpoint and resume a strategy through Avalanche's own mechanism, safely.

Avalanche pickles the whole strategy (model, optimizer, plugins with their masks, statistics and
generators, the evaluator's metric state) with dill and restores the global random generators
(``avalanche.training.determinism.rng_manager``). This module adds three things on top:

- a workaround that makes Avalanche's ``save_checkpoint`` work at all with the installed torch,
  dill and typing_extensions (see :func:`make_torch_optimizers_picklable`), applied automatically;
- atomic writes: the checkpoint goes to ``<name>.<pid>.partial`` in the same folder, is flushed to
  disk, then renamed over the old one, so a kill at any moment leaves the last good checkpoint
  readable; a failed write removes its partial file, a later save the ones of dead processes;
- a checksum: the file starts with one header line holding the SHA-256 and length of the pickle that
  follows, written into the same file (one rename publishes both), and checked before unpickling, so
  damaged, truncated, empty or foreign files raise :class:`CheckpointError` instead of resuming
  with other numbers.

Checkpoints are taken between experiences (Avalanche cannot save inside its training loop).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import re
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import torch
from avalanche.checkpointing import maybe_load_checkpoint as avalanche_maybe_load_checkpoint
from avalanche.checkpointing import save_checkpoint as avalanche_save_checkpoint
from avalanche.distributed import DistributedHelper

from avalanche_sparcl.atomic_files import atomic_file
from avalanche_sparcl.distributed import decided_on_rank0, unwrap
from avalanche_sparcl.pickling import make_torch_optimizers_picklable

Strategy = TypeVar("Strategy")

HEADER_MAGIC = b"avalanche-sparcl checkpoint v1"
HEADER_FORMAT = HEADER_MAGIC + b" sha256=%s bytes=%020d\n"
HEADER_PATTERN = re.compile(re.escape(HEADER_MAGIC) + rb" sha256=([0-9a-f]{64}) bytes=([0-9]{20})\n")
HEADER_LENGTH = len(HEADER_FORMAT % (b"0" * 64, 0))
"""The header line has a fixed length: it is written as a placeholder first and filled in once the
pickle behind it is on disk and hashed."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be resumed from: empty, truncated, corrupted or not ours."""


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader never sees a half-written file."""
    with atomic_file(path) as stream:
        stream.write(text.encode())


class ChecksummedWriter:
    """Passes writes on to ``stream`` while hashing and counting them.

    torch.save's zip writer turns an exception raised by a write into a RuntimeError that no longer
    says why ("unexpected pos"); ``failure`` keeps the OSError (a full disk) to raise instead.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.failure: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            written = self.stream.write(data)
        except OSError as error:
            self.failure = error
            raise
        self.sha256.update(data)
        self.size += memoryview(data).nbytes
        return written

    def flush(self) -> None:
        self.stream.flush()


def save_checkpoint(strategy: Any, path: str | os.PathLike, exclude: list[str] | None = None) -> Path:
    """Save ``strategy`` (between experiences) with Avalanche's ``save_checkpoint``, atomically and
    behind a checksum header.

    The previous checkpoint at ``path`` stays intact until the new one is completely on disk.
    ``exclude`` names strategy attributes not to save, as in Avalanche. Returns ``path``.

    In data-parallel training rank 0 writes the file, with the model outside its
    DistributedDataParallel wrapper (which holds a process group), and every rank returns once it is
    on disk (or raises rank 0's error).
    """
    return decided_on_rank0(lambda: write_checkpoint(strategy, path, exclude))


def write_checkpoint(strategy: Any, path: str | os.PathLike, exclude: list[str] | None) -> Path:
    """``save_checkpoint`` in one process."""
    make_torch_optimizers_picklable()
    wrapped = strategy.model
    strategy.model = unwrap(wrapped)
    try:
        write_strategy(strategy, path, exclude)
    finally:
        strategy.model = wrapped
    return Path(path)


def write_strategy(strategy: Any, path: str | os.PathLike, exclude: list[str] | None) -> None:
    with atomic_file(path) as stream:
        stream.write(HEADER_FORMAT % (b"0" * 64, 0))
        writer = ChecksummedWriter(stream)
        try:
            avalanche_save_checkpoint(strategy, writer, exclude=exclude)
        except Exception:
            if writer.failure is not None:
                raise writer.failure from None
            raise
        stream.seek(0)
        stream.write(HEADER_FORMAT % (writer.sha256.hexdigest().encode(), writer.size))


def read_checkpoint(path: str | os.PathLike) -> bytes:
    """The pickle inside the checkpoint at ``path``, once its length and SHA-256 match its header.

    Raises :class:`CheckpointError` naming ``path`` for an empty, truncated, corrupted or foreign file.
    """
    with open(path, "rb") as stream:
        header = stream.read(HEADER_LENGTH)
        payload = stream.read()
    if not header:
        raise CheckpointError(f"{path}: empty checkpoint file")
    if not header.startswith(HEADER_MAGIC) and not HEADER_MAGIC.startswith(header):
        raise CheckpointError(
            f"{path}: not a checkpoint written by avalanche_sparcl.checkpointing.save_checkpoint"
        )
    match = HEADER_PATTERN.fullmatch(header)
    if match is None and len(header) < HEADER_LENGTH:
        raise CheckpointError(f"{path}: truncated checkpoint: {len(header)} bytes, not even its header")
    if match is None:
        raise CheckpointError(f"{path}: corrupted checkpoint: its header is damaged")
    expected_size = int(match.group(2))
    if len(payload) < expected_size:
        raise CheckpointError(
            f"{path}: truncated checkpoint: {HEADER_LENGTH + len(payload)} of "
            f"{HEADER_LENGTH + expected_size} bytes"
        )
    if len(payload) > expected_size or hashlib.sha256(payload).hexdigest().encode() != match.group(1):
        raise CheckpointError(
            f"{path}: corrupted checkpoint: its SHA-256 differs from the one written with it"
        )
    return payload


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

    The checksum is checked before anything is unpickled: a file that is empty, truncated, corrupted,
    not written by :func:`save_checkpoint` or unloadable with this code raises :class:`CheckpointError`
    and leaves ``strategy`` unchanged.

    In data-parallel training every rank loads the file rank 0 wrote and wraps the loaded model for
    DistributedDataParallel again, so all ranks start from the same state.
    """
    if not Path(path).exists():
        return strategy, 0
    payload = read_checkpoint(path)
    make_torch_optimizers_picklable()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # Avalanche prints one line per unpickled device
            strategy, next_experience = avalanche_maybe_load_checkpoint(
                strategy, io.BytesIO(payload), map_location, unique_objects
            )
            strategy.model = DistributedHelper.wrap_model(unwrap(strategy.model))
            return strategy, next_experience
    except (pickle.UnpicklingError, EOFError, RuntimeError, AttributeError, ImportError) as error:
        reason = (str(error).splitlines() or [""])[0]
        raise CheckpointError(
            f"{path}: cannot load the checkpoint ({type(error).__name__}: {reason})"
        ) from error


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
