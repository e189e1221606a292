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

Trust boundary. A checkpoint is a pickle, and unpickling runs whatever code the file names: loading
one is running a program. The checksum only detects accidents. So a checkpoint can be *signed*: with
``run_id`` (the run's fingerprint), :func:`save_checkpoint` ends the pickle with a trailer line
holding ``run_id`` and an HMAC-SHA256 of both, keyed by this user's secret (:func:`checkpoint_key`,
created on first use under ``$XDG_CONFIG_HOME/avalanche-sparcl/`` or ``~/.config/avalanche-sparcl/``,
mode 0600; ``$AVALANCHE_SPARCL_CHECKPOINT_KEY`` names another file). :func:`maybe_resume` with
``run_id`` checks the signature and the run before anything is unpickled: a checkpoint not signed with
this user's key (a colleague's run folder, a download, a file written by an older version) or
signed for another run raises :class:`CheckpointError`. ``sparcl-bench`` signs every checkpoint it
writes and resumes only signed ones. Why a signed pickle rather than a weights-only checkpoint: the
pickle is Avalanche's own mechanism and holds the whole strategy (replay buffers, the evaluator's
metric state, plugin objects, random generators), which is what makes a resumed run identical to an
uninterrupted one; rebuilding all of it from tensors would duplicate Avalanche's internals. What
leaves a machine for others to read is weights-only instead (``model.pt`` of a run folder,
``.sparse`` files). Without ``run_id`` the functions behave as before: unsigned checkpoints are
loaded after their checksum only, so load only checkpoints you wrote, as with ``torch.load``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import pickle
import re
import secrets
import stat
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


SIGNATURE_MAGIC = b"avalanche-sparcl signature v1"
SIGNATURE_FORMAT = SIGNATURE_MAGIC + b" run=%s hmac-sha256=%s\n"
SIGNATURE_PATTERN = re.compile(
    re.escape(SIGNATURE_MAGIC) + rb" run=([0-9a-f]{64}) hmac-sha256=([0-9a-f]{64})\n"
)
SIGNATURE_LENGTH = len(SIGNATURE_FORMAT % (b"0" * 64, b"0" * 64))
"""The trailer of a signed checkpoint: the last line, after the pickle, inside the checksummed part."""
SIGNATURE_DOMAIN = b"avalanche-sparcl checkpoint signature v1\0"
"""Prefixed to what is signed, so the key signs nothing else by accident."""
RUN_ID_PATTERN = re.compile(r"[0-9a-f]{64}")

KEY_ENVIRONMENT = "AVALANCHE_SPARCL_CHECKPOINT_KEY"
"""Names the key file to use instead of the default one (tests, or a key shared between accounts)."""
KEY_FILE_NAME = "checkpoint.key"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be resumed from: empty, truncated, corrupted or not ours."""


class CheckpointKeyError(ValueError):
    """The key that signs checkpoints cannot be used (not private to this user, or not a key)."""


UNSIGNED = (
    "not signed with this user's checkpoint key (a run folder from another account or machine, or "
    "from an older version), and loading it could run any code it holds"
)


def checkpoint_key_path() -> Path:
    """Where this user's checkpoint key lives: ``$AVALANCHE_SPARCL_CHECKPOINT_KEY``, else
    ``checkpoint.key`` under ``$XDG_CONFIG_HOME/avalanche-sparcl`` (``~/.config`` by default)."""
    override = os.environ.get(KEY_ENVIRONMENT)
    if override:
        return Path(override).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config_home) / "avalanche-sparcl" / KEY_FILE_NAME


def checkpoint_key(path: str | os.PathLike | None = None) -> bytes:
    """This user's secret that signs checkpoints (32 random bytes), created on first use.

    The file (``path``, default :func:`checkpoint_key_path`) holds 64 hex digits and is readable by
    its owner only; one that others may read or write, or that another user owns, raises
    :class:`CheckpointKeyError`, as anyone who can read it can sign code that a resume would run.
    """
    path = checkpoint_key_path() if path is None else Path(path)
    if not path.exists():
        try:
            create_key(path)
        except OSError as error:
            where = error.filename if error.filename is not None else path
            raise CheckpointKeyError(
                f"{path}: cannot create the checkpoint key ({where}: {error.strerror or error}); set "
                f"{KEY_ENVIRONMENT} to a file you can write"
            ) from error
    with open(path, "rb") as stream:
        info = os.fstat(stream.fileno())
        text = stream.read(200)
    if os.name == "posix" and (info.st_mode & 0o077 or info.st_uid != os.getuid()):
        raise CheckpointKeyError(
            f"{path}: the checkpoint key must belong to you and be private (anyone who can read or "
            f"change it can make checkpoints that run code when resumed); chmod 600 {path}"
        )
    try:
        key = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != 32:
        raise CheckpointKeyError(
            f"{path}: not a checkpoint key (64 hex digits expected); delete it and a new one is made "
            "(checkpoints signed with the old one then start over)"
        )
    return key


def create_key(path: Path) -> None:
    """Write a new random key to ``path`` (mode 0600) unless another process got there first."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.new")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    try:
        with os.fdopen(descriptor, "w") as stream:
            stream.write(secrets.token_hex(32) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        with contextlib.suppress(FileExistsError):  # a link never replaces: the first key stays
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def signature(key: bytes, run_id: str) -> Any:
    """The HMAC that signs ``run_id`` and the pickle fed to it after this."""
    return hmac.new(key, SIGNATURE_DOMAIN + run_id.encode("ascii") + b"\0", hashlib.sha256)


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or RUN_ID_PATTERN.fullmatch(run_id) is None:
        raise ValueError(f"run_id must be 64 lowercase hex digits (a SHA-256), got {run_id!r}")
    return run_id


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader never sees a half-written file."""
    with atomic_file(path) as stream:
        stream.write(text.encode())


class ChecksummedWriter:
    """Passes writes on to ``stream`` while hashing and counting them.

    torch.save's zip writer turns an exception raised by a write into a RuntimeError that no longer
    says why ("unexpected pos"); ``failure`` keeps the OSError (a full disk) to raise instead.
    """

    def __init__(self, stream: BinaryIO, mac: Any = None) -> None:
        self.stream = stream
        self.sha256 = hashlib.sha256()
        self.mac = mac
        self.size = 0
        self.failure: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            written = self.stream.write(data)
        except OSError as error:
            self.failure = error
            raise
        self.sha256.update(data)
        if self.mac is not None:
            self.mac.update(data)
        self.size += memoryview(data).nbytes
        return written

    def flush(self) -> None:
        self.stream.flush()


def save_checkpoint(
    strategy: Any,
    path: str | os.PathLike,
    exclude: list[str] | None = None,
    *,
    run_id: str | None = None,
    key: bytes | None = None,
) -> Path:
    """Save ``strategy`` (between experiences) with Avalanche's ``save_checkpoint``, atomically and
    behind a checksum header.

    The previous checkpoint at ``path`` stays intact until the new one is completely on disk.
    ``exclude`` names strategy attributes not to save, as in Avalanche. With ``run_id`` (64 hex
    digits: the run's fingerprint) the checkpoint is signed for that run with ``key`` (default: this
    user's, :func:`checkpoint_key`), so that only :func:`maybe_resume` with the same ``run_id`` and key
    loads it. Returns ``path``.

    In data-parallel training rank 0 writes the file, with the model outside its
    DistributedDataParallel wrapper (which holds a process group), and every rank returns once it is
    on disk (or raises rank 0's error).
    """
    mac = None
    if run_id is not None:
        mac = signature(checkpoint_key() if key is None else key, check_run_id(run_id))
    return decided_on_rank0(lambda: write_checkpoint(strategy, path, exclude, run_id, mac))


def write_checkpoint(
    strategy: Any,
    path: str | os.PathLike,
    exclude: list[str] | None,
    run_id: str | None = None,
    mac: Any = None,
) -> Path:
    """``save_checkpoint`` in one process."""
    make_torch_optimizers_picklable()
    wrapped = strategy.model
    strategy.model = unwrap(wrapped)
    try:
        write_strategy(strategy, path, exclude, run_id, mac)
    finally:
        strategy.model = wrapped
    return Path(path)


def write_strategy(
    strategy: Any, path: str | os.PathLike, exclude: list[str] | None, run_id: str | None, mac: Any
) -> None:
    with atomic_file(path) as stream:
        stream.write(HEADER_FORMAT % (b"0" * 64, 0))
        writer = ChecksummedWriter(stream, mac)
        try:
            avalanche_save_checkpoint(strategy, writer, exclude=exclude)
            if run_id is not None:
                writer.mac = None
                writer.write(SIGNATURE_FORMAT % (run_id.encode("ascii"), mac.hexdigest().encode("ascii")))
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


def signed_pickle(path: str | os.PathLike, payload: bytes, run_id: str | None, key: bytes | None) -> bytes:
    """The pickle in a checked ``payload``, once its signature holds (see the module's trust boundary).

    A signed payload must carry a valid HMAC under ``key`` (default: this user's) and, with ``run_id``,
    be signed for that run; with ``run_id`` an unsigned payload is refused too. Nothing is unpickled.
    """
    trailer = SIGNATURE_PATTERN.fullmatch(payload[-SIGNATURE_LENGTH:])
    if trailer is None:
        if run_id is not None:
            raise CheckpointError(f"{path}: {UNSIGNED}")
        return payload
    pickled = memoryview(payload)[:-SIGNATURE_LENGTH]
    signed_run, mac_hex = trailer.group(1).decode("ascii"), trailer.group(2).decode("ascii")
    mac = signature(checkpoint_key() if key is None else key, signed_run)
    mac.update(pickled)
    if not hmac.compare_digest(mac.hexdigest(), mac_hex):
        raise CheckpointError(f"{path}: {UNSIGNED}")
    if run_id is not None and signed_run != check_run_id(run_id):
        raise CheckpointError(
            f"{path}: a checkpoint of another run (signed for run {signed_run[:16]}, this is run "
            f"{run_id[:16]}), copied or left here"
        )
    return bytes(pickled)


def maybe_resume(
    strategy: Strategy,
    path: str | os.PathLike,
    map_location: str | torch.device | None = None,
    unique_objects: Any = None,
    *,
    run_id: str | None = None,
    key: bytes | None = None,
) -> tuple[Strategy, int]:
    """Load the checkpoint at ``path`` into ``strategy`` if there is one.

    Returns what Avalanche's ``maybe_load_checkpoint`` returns: the strategy and the index of the next
    training experience (0 and the strategy unchanged when ``path`` does not exist). The strategy's
    model, optimizer, plugins and evaluator are replaced by the saved ones, so read them from the
    returned strategy (``strategy.model``, ``strategy.plugins``), not from earlier references.

    The checksum, and the signature of a signed checkpoint, are checked before anything is unpickled:
    a file that is empty, truncated, corrupted, not written by :func:`save_checkpoint` or unloadable
    with this code raises :class:`CheckpointError` and leaves ``strategy`` unchanged. With ``run_id``
    only a checkpoint signed with ``key`` (default: this user's) for that run is loaded; without it an
    unsigned checkpoint is trusted, so load only checkpoints you wrote.

    In data-parallel training every rank loads the file rank 0 wrote and wraps the loaded model for
    DistributedDataParallel again, so all ranks start from the same state.
    """
    if not Path(path).exists():
        return strategy, 0
    payload = signed_pickle(path, read_checkpoint(path), run_id, key)
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
    except (KeyError, TypeError, IndexError) as error:  # a pickle of something else than a strategy
        raise CheckpointError(
            f"{path}: not a strategy checkpoint ({type(error).__name__}: {error})"
        ) from error


def load_checkpoint(
    strategy: Strategy,
    path: str | os.PathLike,
    map_location: str | torch.device | None = None,
    unique_objects: Any = None,
    *,
    run_id: str | None = None,
    key: bytes | None = None,
) -> tuple[Strategy, int]:
    """Like :func:`maybe_resume`, but a missing checkpoint is an error (FileNotFoundError)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    return maybe_resume(strategy, path, map_location, unique_objects, run_id=run_id, key=key)


make_torch_optimizers_picklable()
