"""Files that appear whole or not at all: written next to their target, then renamed into place.

Stdlib only, shared by checkpoints, results and the edge export's sparse files.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

PARTIAL_SUFFIX = ".partial"
"""Suffix of the temporary file written before it replaces its target."""


def partial_path(path: str | os.PathLike, pid: int | None = None) -> Path:
    """Where process ``pid`` (default: this one) writes ``path`` before renaming: next to it, on the
    same disk, under a name no other process writes to."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid() if pid is None else pid}{PARTIAL_SUFFIX}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary stream whose content replaces ``path`` only once it is completely on disk.

    If anything fails, ``path`` is untouched and the partial file is removed; an OSError that names no
    file (a full disk) or the partial file is raised again naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_path(path)
    try:
        with open(temporary, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        ours = isinstance(error, OSError) and error.filename in (None, str(temporary))
        if ours and error.errno is not None:  # a full disk names no file: name the file asked for
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    sync_folder(path.parent)
    remove_partial_files_of_dead_processes(path)


def remove_partial_files_of_dead_processes(path: Path) -> None:
    """Delete what processes killed while writing ``path`` left behind (they can never finish)."""
    prefix = path.name + "."
    for leftover in path.parent.glob(glob.escape(prefix) + "*" + PARTIAL_SUFFIX):
        pid = leftover.name[len(prefix) : -len(PARTIAL_SUFFIX)]
        if pid.isdigit() and not process_is_alive(int(pid)):
            with contextlib.suppress(OSError):
                leftover.unlink()


def process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


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
