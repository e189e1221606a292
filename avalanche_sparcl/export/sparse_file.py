"""Writing a sparse model file (edge export), on the training machine, and the sizes it reports.

The layout, the checks on reading and the model rebuilt from a file are in
:mod:`avalanche_sparcl.export.sparse_format`, which needs torch alone so that it can go to a device;
its public names are re-exported here, where callers have always imported them.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from avalanche_sparcl.export.sparse_format import (
    BITMASK,
    FORMAT,
    HEADER_FORMAT,
    INDICES,
    VERSION,
    SparseFileError,
    dtype_name,
    index_dtype,
    load_sparse,
    pack_bits,
    package_version,
    read_contents,
    read_sparse,
    unpack_bits,
)

__all__ = [
    "LayerSize",
    "SparseFileError",
    "SparseFileSummary",
    "load_sparse",
    "pack_bits",
    "read_sparse",
    "read_summary",
    "save_sparse",
    "unpack_bits",
    "write_container",
]


@dataclass(frozen=True)
class LayerSize:
    """One masked weight in a sparse file: how many entries it keeps and what they cost."""

    name: str
    numel: int
    kept: int
    sparsity: float
    encoding: str
    """``"bitmask"`` or ``"indices"``: how the positions of the kept entries are stored."""
    dense_bytes: int
    """``numel`` times the element size: the weight as a dense tensor."""
    sparse_bytes: int
    """The kept values plus the bitmask or the indices, plus the sign bitmask of the pruned entries if
    any of them is -0.0."""


@dataclass(frozen=True)
class SparseFileSummary:
    """Sizes of a sparse file, per masked layer and in total, against a dense ``torch.save``."""

    path: Path
    layers: tuple[LayerSize, ...]
    file_bytes: int
    """The sparse file on disk, header included."""
    dense_file_bytes: int
    """``torch.save(model.state_dict())`` of the same model."""

    @property
    def masked_dense_bytes(self) -> int:
        return sum(layer.dense_bytes for layer in self.layers)

    @property
    def masked_sparse_bytes(self) -> int:
        return sum(layer.sparse_bytes for layer in self.layers)

    @property
    def masked_ratio(self) -> float:
        """Sparse over dense bytes of the masked layers (nan without any)."""
        return self.masked_sparse_bytes / self.masked_dense_bytes if self.layers else math.nan

    @property
    def file_ratio(self) -> float:
        """The sparse file over the dense ``torch.save`` file."""
        return self.file_bytes / self.dense_file_bytes

    def markdown(self) -> str:
        """A Markdown table: one row per masked layer, then the masked layers' and the files' totals."""
        lines = [
            "| layer | entries | kept | sparsity | encoding | dense bytes | sparse bytes | ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for layer in self.layers:
            lines.append(
                f"| {layer.name} | {layer.numel} | {layer.kept} | {layer.sparsity:.4f} | {layer.encoding} | "
                f"{layer.dense_bytes} | {layer.sparse_bytes} | {layer.sparse_bytes / layer.dense_bytes:.3f} |"
            )
        lines.append(
            f"| masked layers | {sum(layer.numel for layer in self.layers)} | "
            f"{sum(layer.kept for layer in self.layers)} | | | {self.masked_dense_bytes} | "
            f"{self.masked_sparse_bytes} | {self.masked_ratio:.3f} |"
        )
        lines.append(
            f"| whole file | | | | | {self.dense_file_bytes} | {self.file_bytes} | {self.file_ratio:.3f} |"
        )
        return "\n".join(lines)


def compact(tensor: Tensor) -> Tensor:
    """``tensor`` on the CPU, copied if it is a view of a larger storage (torch.save writes it whole)."""
    tensor = tensor.detach().cpu()
    if tensor.storage_offset() or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


def encode_layer(name: str, weight: Tensor, mask: Tensor) -> dict[str, Any]:
    """The kept values and positions of one masked weight, and which pruned entries are -0.0.

    Refuses a non-zero pruned entry.
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        kind = f"a {mask.dtype} tensor" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask of {name!r} is {kind}; masks are bool tensors (True = kept)")
    if mask.shape != weight.shape:
        raise ValueError(
            f"mask of {name!r} has shape {tuple(mask.shape)} but the weight has shape {tuple(weight.shape)}"
        )
    if not weight.is_floating_point():
        raise ValueError(f"cannot mask {name!r}: it holds {dtype_name(weight.dtype)}, not floating point")
    flat_weight = weight.detach().cpu().flatten()
    flat_mask = mask.detach().cpu().flatten()
    pruned = flat_weight[~flat_mask]
    non_zero = (pruned != 0).nonzero().squeeze(1)  # NaN is not zero either
    if len(non_zero):
        position = (~flat_mask).nonzero().squeeze(1)[non_zero[0]]
        index = tuple(int(i) for i in torch.unravel_index(position, tuple(weight.shape)))
        raise ValueError(
            f"cannot save {name!r}: {len(non_zero)} of its {len(pruned)} pruned entries (mask False) are "
            f"not zero, the first {pruned[non_zero[0]].item()!r} at {index}; the mask does not describe "
            "this weight (zero the pruned entries, or pass the mask it was pruned with)"
        )
    values = flat_weight[flat_mask].clone()
    negative_zeros = torch.signbit(pruned)  # every pruned entry is +0.0 or -0.0 by now
    numel = flat_mask.numel()
    kept = len(values)
    positions = index_dtype(numel)
    bitmask_bytes = (numel + 7) // 8
    index_bytes = kept * positions.itemsize
    layer: dict[str, Any] = {
        "shape": list(weight.shape),
        "dtype": dtype_name(weight.dtype),
        "numel": numel,
        "kept": kept,
        "sparsity": 1 - kept / numel if numel else 0.0,
        "values": values,
        "negative_zeros": pack_bits(negative_zeros) if bool(negative_zeros.any()) else None,
    }
    if index_bytes < bitmask_bytes:
        layer.update(encoding=INDICES, positions=flat_mask.nonzero().squeeze(1).to(positions))
    else:
        layer.update(encoding=BITMASK, positions=pack_bits(flat_mask))
    return layer


def layer_size(name: str, layer: Mapping[str, Any]) -> LayerSize:
    values, positions, negative_zeros = layer["values"], layer["positions"], layer["negative_zeros"]
    sign_bytes = 0 if negative_zeros is None else negative_zeros.numel() * negative_zeros.element_size()
    return LayerSize(
        name=name,
        numel=layer["numel"],
        kept=layer["kept"],
        sparsity=layer["sparsity"],
        encoding=layer["encoding"],
        dense_bytes=layer["numel"] * values.element_size(),
        sparse_bytes=values.numel() * values.element_size()
        + positions.numel() * positions.element_size()
        + sign_bytes,
    )


def dense_state_dict_bytes(state_dict: Mapping[str, Tensor]) -> int:
    """The length of ``torch.save(state_dict)``."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.tell()


def save_sparse(model: nn.Module, masks: Mapping[str, Tensor], path: str | os.PathLike) -> SparseFileSummary:
    """Write ``model.state_dict()`` to ``path``, the weights named in ``masks`` as their kept entries.

    ``masks`` maps parameter names to bool tensors of the weight's shape (True = kept), such as
    ``TDMPlugin.masks``; every pruned entry must be zero (a ValueError naming the layer otherwise),
    +0.0 or -0.0, and reads back with the same sign.
    The file replaces ``path`` only once it is complete. Returns the sizes written.
    """
    state_dict = model.state_dict()
    unknown = [name for name in masks if name not in state_dict]
    if unknown:
        raise ValueError(f"masks name tensors the model's state_dict does not have: {', '.join(unknown)}")
    layers: dict[str, dict[str, Any]] = {}
    dense: dict[str, Tensor] = {}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, Tensor):
            raise ValueError(f"cannot save {name!r}: the state_dict holds a {type(tensor).__name__} there")
        if name in masks:
            layers[name] = encode_layer(name, tensor, masks[name])
        else:
            dense[name] = compact(tensor)
    dense_bytes = dense_state_dict_bytes(state_dict)
    contents = {
        "format": FORMAT,
        "version": VERSION,
        "package_version": package_version(),
        "order": list(state_dict),
        "layers": layers,
        "dense": dense,
        "dense_state_dict_bytes": dense_bytes,
    }
    file_bytes = write_container(path, contents)
    return SparseFileSummary(
        path=Path(path),
        layers=tuple(layer_size(name, layer) for name, layer in layers.items()),
        file_bytes=file_bytes,
        dense_file_bytes=dense_bytes,
    )


def write_container(path: str | os.PathLike, contents: Mapping[str, Any]) -> int:
    """The header line and ``torch.save(contents)`` into ``path``, atomically; returns the file length.

    The file goes to ``<name>.<pid>.partial`` in the same folder (created if missing) and replaces
    ``path`` once it is on disk; a failure leaves ``path`` as it was and removes the partial file.
    """
    buffer = io.BytesIO()
    torch.save(dict(contents), buffer)
    payload = buffer.getvalue()
    header = HEADER_FORMAT % (VERSION, hashlib.sha256(payload).hexdigest().encode(), len(payload))
    from avalanche_sparcl.atomic_files import atomic_file  # here: reading needs torch alone

    with atomic_file(path) as stream:
        stream.write(header)
        stream.write(payload)
    return len(header) + len(payload)


def read_summary(path: str | os.PathLike) -> SparseFileSummary:
    """The sizes of the sparse file at ``path`` (checked as by :func:`load_sparse`), without a model."""
    contents = read_contents(path)
    return SparseFileSummary(
        path=Path(path),
        layers=tuple(layer_size(name, layer) for name, layer in contents["layers"].items()),
        file_bytes=Path(path).stat().st_size,
        dense_file_bytes=contents["dense_state_dict_bytes"],
    )
