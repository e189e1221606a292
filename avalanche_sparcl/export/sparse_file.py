"""A compact, checksummed file of a sparse model that needs only torch to read (edge export).

Layout: one ASCII header line, then a payload written by ``torch.save`` and read back with
``torch.load(weights_only=True)`` (plain dicts, lists, strings, numbers and tensors; no pickled code)::

    avalanche-sparcl-sparse v1 sha256=<64 hex digits of the payload> bytes=<payload length, 20 digits>\\n
    <payload>

The payload is ``{"format", "version", "package_version", "order", "layers", "dense",
"dense_state_dict_bytes"}``: ``order`` lists the ``state_dict`` keys; ``layers`` holds each masked
weight as its kept values (row-major, the weight's dtype) plus either a bitmask of the mask (1 bit per
entry, most significant bit first, like ``numpy.packbits``) or the flat indices of the kept entries in
the smallest integer type that holds them, whichever is smaller, with its name, shape, dtype, kept
count and sparsity, and ``negative_zeros``: the sign bits of its pruned entries; ``dense`` holds every
other ``state_dict`` tensor unchanged. The header's SHA-256 covers every byte of the payload, so a
damaged, truncated, empty or foreign file is refused before anything is unpickled.

Every pruned entry is zero, but not always +0.0: a weight zeroed by multiplying with its mask (as TDM
does) holds -0.0 where it was negative. A layer with a -0.0 among its pruned entries stores
``negative_zeros`` as a bitmask over its pruned entries only (1 bit each, in the order of their flat
positions, packed like the mask), 1 where the entry is -0.0; a layer whose pruned entries are all +0.0
stores ``None`` there and costs nothing more. So the round trip is bit-identical: every bit of the
``state_dict`` (kept values, the signs of pruned zeros, biases, BatchNorm statistics, unmasked layers)
is restored exactly.

This module imports nothing but torch and the standard library, so it can be copied next to a model
on a device that has no Avalanche (writing, done on the training machine, also uses the package's
``atomic_files``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import math
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

FORMAT = "avalanche-sparcl-sparse"
VERSION = 1
HEADER_MAGIC = FORMAT.encode() + b" v"
HEADER_FORMAT = HEADER_MAGIC + b"%d sha256=%s bytes=%020d\n"
HEADER_PATTERN = re.compile(re.escape(HEADER_MAGIC) + rb"([0-9]+) sha256=([0-9a-f]{64}) bytes=([0-9]{20})\n")
HEADER_LENGTH = len(HEADER_FORMAT % (VERSION, b"0" * 64, 0))
MAX_HEADER_LENGTH = 256
"""A header line of another version may be longer than ours, but never this long."""

BITMASK = "bitmask"
INDICES = "indices"
INDEX_DTYPES = (torch.int16, torch.int32, torch.int64)
BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
BIT_SHIFTS = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0], dtype=torch.uint8)


class SparseFileError(ValueError):
    """A sparse file that cannot be loaded: empty, truncated, corrupted, foreign, or for another model."""


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


def package_version() -> str:
    try:
        return importlib.metadata.version("avalanche-sparcl")
    except importlib.metadata.PackageNotFoundError:  # this module copied on its own
        return "unknown"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def pack_bits(flags: Tensor) -> Tensor:
    """A flat bool tensor as uint8 bytes, 8 entries a byte, the first in the most significant bit."""
    padding = (-flags.numel()) % 8
    bits = torch.cat([flags.to(torch.uint8), torch.zeros(padding, dtype=torch.uint8)]).view(-1, 8)
    return (bits * BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, numel: int) -> Tensor:
    """The inverse of :func:`pack_bits`: the first ``numel`` bits of ``packed`` as a flat bool tensor."""
    return ((packed.unsqueeze(1) >> BIT_SHIFTS) & 1).bool().flatten()[:numel]


def index_dtype(numel: int) -> torch.dtype:
    """The smallest signed integer type that holds every flat index of ``numel`` entries."""
    return next(dtype for dtype in INDEX_DTYPES if numel - 1 <= torch.iinfo(dtype).max)


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


def read_payload(path: str | os.PathLike) -> bytes:
    """The payload of the sparse file at ``path``, once its header, length and SHA-256 check out."""
    data = Path(path).read_bytes()
    if not data:
        raise SparseFileError(f"{path}: empty file, not a sparse model file")
    if not data.startswith(HEADER_MAGIC):
        if HEADER_MAGIC.startswith(data):
            raise SparseFileError(
                f"{path}: truncated sparse model file: {len(data)} bytes, not even its header"
            )
        raise SparseFileError(
            f"{path}: not a sparse model file (written by avalanche_sparcl.export.save_sparse)"
        )
    end = data.find(b"\n", 0, MAX_HEADER_LENGTH)
    if end < 0:
        if len(data) < HEADER_LENGTH:
            raise SparseFileError(
                f"{path}: truncated sparse model file: {len(data)} bytes, not even its header"
            )
        raise SparseFileError(f"{path}: corrupted sparse model file: its header line is damaged")
    header, payload = data[: end + 1], data[end + 1 :]
    version = re.match(re.escape(HEADER_MAGIC) + rb"([0-9]+) ", header)
    if version and int(version.group(1)) != VERSION:
        raise SparseFileError(
            f"{path}: sparse model file of format version {int(version.group(1))}; this avalanche-sparcl "
            f"({package_version()}) reads version {VERSION}"
        )
    match = HEADER_PATTERN.fullmatch(header)
    if match is None:
        raise SparseFileError(f"{path}: corrupted sparse model file: its header line is damaged")
    expected = int(match.group(3))
    if len(payload) < expected:
        raise SparseFileError(
            f"{path}: truncated sparse model file: {len(data)} of {len(header) + expected} bytes"
        )
    if len(payload) > expected or hashlib.sha256(payload).hexdigest().encode() != match.group(2):
        raise SparseFileError(
            f"{path}: corrupted sparse model file: its SHA-256 differs from the one in its header"
        )
    return payload


def read_contents(path: str | os.PathLike) -> dict[str, Any]:
    """The checked payload of a sparse file as plain dicts and tensors (``torch.load(weights_only=True)``)."""
    try:
        contents = torch.load(io.BytesIO(read_payload(path)), map_location="cpu", weights_only=True)
    except SparseFileError:
        raise
    except Exception as error:  # a payload that hashes right but is no torch file: written by another tool
        raise SparseFileError(
            f"{path}: malformed sparse model file: its payload cannot be read ({error})"
        ) from error
    malformed = check_contents(contents)
    if malformed:
        raise SparseFileError(f"{path}: malformed sparse model file: {malformed}")
    return contents


def check_contents(contents: Any) -> str | None:
    """What is wrong with a payload's structure, or None."""
    if not isinstance(contents, dict):
        return f"its payload is a {type(contents).__name__}, not a dict"
    if contents.get("format") != FORMAT or contents.get("version") != VERSION:
        return f"its payload says format {contents.get('format')!r} version {contents.get('version')!r}"
    for key, kind in (("order", list), ("layers", dict), ("dense", dict), ("dense_state_dict_bytes", int)):
        if not isinstance(contents.get(key), kind):
            return f"its payload has no {key!r} {kind.__name__}"
    layers, dense, order = contents["layers"], contents["dense"], contents["order"]
    if set(layers) & set(dense) or set(order) != set(layers) | set(dense) or len(order) != len(set(order)):
        return "its list of tensors does not match the tensors it holds"
    for name, tensor in dense.items():
        if not isinstance(tensor, Tensor):
            return f"{name!r} is a {type(tensor).__name__}, not a tensor"
    for name, layer in layers.items():
        problem = check_layer(layer)
        if problem:
            return f"masked layer {name!r}: {problem}"
    return None


def check_layer(layer: Any) -> str | None:
    """What is wrong with one masked layer's record, or None."""
    if not isinstance(layer, dict):
        return "not a dict"
    shape, values, positions = layer.get("shape"), layer.get("values"), layer.get("positions")
    if not (isinstance(shape, list) and all(isinstance(size, int) and size >= 0 for size in shape)):
        return "no valid shape"
    if not (isinstance(values, Tensor) and isinstance(positions, Tensor)):
        return "no values or positions"
    numel = math.prod(shape)
    if layer.get("numel") != numel or layer.get("kept") != values.numel() or values.dim() != 1:
        return "its counts do not match its shape and values"
    if layer.get("dtype") != dtype_name(values.dtype):
        return f"its values are {dtype_name(values.dtype)}, not {layer.get('dtype')}"
    if layer.get("encoding") == BITMASK:
        if positions.dtype != torch.uint8 or positions.shape != ((numel + 7) // 8,):
            return "its bitmask does not have one bit per entry"
        if int(unpack_bits(positions, numel).sum()) != values.numel():
            return "its bitmask does not mark one entry per value"
    elif layer.get("encoding") == INDICES:
        if positions.dtype not in INDEX_DTYPES or positions.shape != values.shape:
            return "it does not have one index per value"
        indices = positions.long()
        if len(indices) and (
            indices[0] < 0 or indices[-1] >= numel or not bool((indices[1:] > indices[:-1]).all())
        ):
            return "its indices are not increasing positions inside the weight"
    else:
        return f"unknown encoding {layer.get('encoding')!r}"
    if "negative_zeros" not in layer:
        return "it does not say which pruned entries are -0.0"
    negative_zeros = layer["negative_zeros"]
    if negative_zeros is not None and not (
        isinstance(negative_zeros, Tensor)
        and negative_zeros.dtype == torch.uint8
        and negative_zeros.shape == ((numel - values.numel() + 7) // 8,)
    ):
        return "its sign bitmask does not have one bit per pruned entry"
    return None


def decode_layer(layer: Mapping[str, Any]) -> Tensor:
    """The dense weight of one checked masked-layer record, its pruned entries -0.0 where they were."""
    values, positions, numel = layer["values"], layer["positions"], layer["numel"]
    if layer["encoding"] == BITMASK:
        kept = unpack_bits(positions, numel)
    else:
        kept = torch.zeros(numel, dtype=torch.bool)
        kept[positions.long()] = True
    flat = torch.zeros(numel, dtype=values.dtype)
    flat[kept] = values
    if layer["negative_zeros"] is not None:
        pruned = (~kept).nonzero().squeeze(1)
        flat[pruned[unpack_bits(layer["negative_zeros"], len(pruned))]] = -0.0
    return flat.view(layer["shape"])


def read_sparse(path: str | os.PathLike) -> OrderedDict[str, Tensor]:
    """The state_dict stored in the sparse file at ``path``, dense again, on the CPU."""
    contents = read_contents(path)
    state_dict: OrderedDict[str, Tensor] = OrderedDict()
    for name in contents["order"]:
        state_dict[name] = (
            decode_layer(contents["layers"][name]) if name in contents["layers"] else contents["dense"][name]
        )
    return state_dict


def read_summary(path: str | os.PathLike) -> SparseFileSummary:
    """The sizes of the sparse file at ``path`` (checked as by :func:`load_sparse`), without a model."""
    contents = read_contents(path)
    return SparseFileSummary(
        path=Path(path),
        layers=tuple(layer_size(name, layer) for name, layer in contents["layers"].items()),
        file_bytes=Path(path).stat().st_size,
        dense_file_bytes=contents["dense_state_dict_bytes"],
    )


def describe(tensor: Tensor) -> str:
    return f"{dtype_name(tensor.dtype)} {tuple(tensor.shape)}"


def load_sparse(path: str | os.PathLike, model: nn.Module) -> None:
    """Load the sparse file at ``path`` into ``model``, which must have the same tensors it was saved from.

    Raises :class:`SparseFileError` naming ``path`` for a damaged or foreign file, and naming the
    tensors that differ (missing, extra, another shape or dtype) for another architecture; the model
    is left untouched then.
    """
    stored = read_sparse(path)
    current = model.state_dict()
    problems = []
    for name, tensor in stored.items():
        if name not in current:
            problems.append(f"{name!r} ({describe(tensor)}) is in the file but not in the model")
        elif current[name].shape != tensor.shape or current[name].dtype != tensor.dtype:
            problems.append(
                f"{name!r} is {describe(tensor)} in the file but {describe(current[name])} in the model"
            )
    problems += [
        f"{name!r} ({describe(tensor)}) is in the model but not in the file"
        for name, tensor in current.items()
        if name not in stored
    ]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise SparseFileError(f"{path}: the model does not have the architecture saved in the file: {shown}")
    model.load_state_dict(stored, strict=True)
