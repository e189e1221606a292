"""Rank agreement for data-parallel training: the one place where SparCL state meets other processes.

Under DistributedDataParallel every process holds the same weights and, after each backward pass, the
same averaged gradients, so masks built from them agree by construction. Construction is not proof (a
tie broken differently, a generator drawn once more on one rank), so the core compares a digest of its
masks and kept sets across ranks whenever they change (:func:`check_agreement`) and raises at once
instead of training on diverging state. Per-rank counts (forgetting statistics, FLOPs) are combined
with :func:`sum_across_ranks`. Torch only; every function is a no-op (or the identity) when
``torch.distributed`` is not initialised, so single-process runs pay nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


class RankDisagreementError(RuntimeError):
    """State that must be identical on every rank differs between ranks."""


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes training together (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper: parameter names without ``module.``, so
    profiles and checkpoints name layers the same way in single-process and distributed runs."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def decided_on_rank0(decide: Callable[[], T]) -> T:
    """``decide()`` run on rank 0 only, its result (or its exception) given to every rank.

    For choices that cost a pass over data (TDM's layer probe): the job pays for it once, and every
    rank holds the same answer by construction.
    """
    if not is_distributed():
        return decide()
    outcome: list[tuple[bool, object] | None] = [None]
    if rank() == 0:
        try:
            outcome = [(True, decide())]
        except Exception as error:  # every rank must raise it, not wait for a broadcast
            outcome = [(False, error)]
    dist.broadcast_object_list(outcome, src=0)
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return value


def tensors_digest(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors``, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def digests_of_all_ranks(tensors: Mapping[str, Tensor]) -> list[str]:
    """The digest of ``tensors`` on every rank, in rank order (one entry without a process group)."""
    digest = tensors_digest(tensors)
    if not is_distributed():
        return [digest]
    gathered: list[str | None] = [None] * world_size()
    dist.all_gather_object(gathered, digest)
    return [str(value) for value in gathered]


def check_agreement(what: str, tensors: Mapping[str, Tensor]) -> None:
    """Raise :class:`RankDisagreementError` unless ``tensors`` are identical on every rank.

    A collective: every rank must call it at the same point. Nothing is hashed in a single process.
    """
    if not is_distributed():
        return
    digests = digests_of_all_ranks(tensors)
    if len(set(digests)) > 1:
        differing = [r for r, digest in enumerate(digests) if digest != digests[0]]
        raise RankDisagreementError(
            f"{what} differ between ranks: rank 0 has digest {digests[0][:12]}, ranks {differing} "
            f"have {sorted({digests[r][:12] for r in differing})}; training stopped"
        )


def sum_across_ranks(tensor: Tensor) -> Tensor:
    """The element-wise sum of ``tensor`` over all ranks, on ``tensor``'s device (a new tensor)."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def min_across_ranks(tensor: Tensor) -> Tensor:
    """The element-wise minimum of ``tensor`` over all ranks (a new tensor)."""
    return _all_reduce(tensor, dist.ReduceOp.MIN)


def max_across_ranks(tensor: Tensor) -> Tensor:
    """The element-wise maximum of ``tensor`` over all ranks (a new tensor)."""
    return _all_reduce(tensor, dist.ReduceOp.MAX)


def _all_reduce(tensor: Tensor, op: dist.ReduceOp) -> Tensor:
    if not is_distributed():
        return tensor.clone()
    # NCCL reduces CUDA tensors only; bool tensors are not reducible on every backend
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    as_bool = tensor.dtype == torch.bool
    reduced = tensor.detach().to(device, torch.uint8 if as_bool else tensor.dtype, copy=True)
    dist.all_reduce(reduced, op=op)
    return reduced.to(tensor.device, torch.bool if as_bool else tensor.dtype)
