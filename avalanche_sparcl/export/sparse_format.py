"""Reading a sparse model file (edge export): its layout, its checks and the model rebuilt from it.

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

This module imports nothing but torch and the standard library, so it alone can be copied next to a
model on a device that has no Avalanche and read the file there. Writing, done on the training
machine, lives in :mod:`avalanche_sparcl.export.sparse_file`.
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
    return check_declared_size(layers, contents["dense_state_dict_bytes"])


def check_declared_size(layers: Mapping[str, Any], dense_state_dict_bytes: int) -> str | None:
    """What is wrong with the dense size the masked layers declare, or None.

    A masked layer's shape is only a list of numbers: a few bytes can declare a weight of billions of
    entries, which decoding would allocate. The writer records the length of the dense
    ``torch.save(state_dict)``, which holds every masked weight dense; more than that is refused
    here, before anything is decoded.
    """
    declared = sum(layer["numel"] * layer["values"].element_size() for layer in layers.values())
    if declared > dense_state_dict_bytes:
        return (
            f"its masked layers declare {declared} bytes when dense, more than the dense model it records "
            f"({dense_state_dict_bytes} bytes)"
        )
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
    return decode_contents(read_contents(path))


def decode_contents(contents: Mapping[str, Any]) -> OrderedDict[str, Tensor]:
    """The state_dict of a checked payload, its masked layers dense again."""
    state_dict: OrderedDict[str, Tensor] = OrderedDict()
    for name in contents["order"]:
        state_dict[name] = (
            decode_layer(contents["layers"][name]) if name in contents["layers"] else contents["dense"][name]
        )
    return state_dict


def describe(tensor: Tensor) -> str:
    return f"{dtype_name(tensor.dtype)} {tuple(tensor.shape)}"


def declared_tensors(contents: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each stored tensor's shape and dtype name, in ``order``, as the checked payload declares them:
    known without decoding a masked layer."""
    layers, dense = contents["layers"], contents["dense"]
    return {
        name: (tuple(layers[name]["shape"]), layers[name]["dtype"])
        if name in layers
        else (tuple(dense[name].shape), dtype_name(dense[name].dtype))
        for name in contents["order"]
    }


def load_sparse(path: str | os.PathLike, model: nn.Module) -> None:
    """Load the sparse file at ``path`` into ``model``, which must have the same tensors it was saved from.

    Raises :class:`SparseFileError` naming ``path`` for a damaged or foreign file, and naming the
    tensors that differ (missing, extra, another shape or dtype) for another architecture; the model
    is left untouched then. The architecture is compared with the shapes the file declares before
    any masked layer is decoded, so a file declaring huge weights allocates nothing.
    """
    contents = read_contents(path)
    declared = declared_tensors(contents)
    current = model.state_dict()

    def describe_declared(name: str) -> str:
        shape, dtype = declared[name]
        return f"{dtype} {shape}"

    problems = []
    for name in declared:
        stored = describe_declared(name)
        if name not in current:
            problems.append(f"{name!r} ({stored}) is in the file but not in the model")
        elif describe(current[name]) != stored:
            problems.append(f"{name!r} is {stored} in the file but {describe(current[name])} in the model")
    problems += [
        f"{name!r} ({describe(tensor)}) is in the model but not in the file"
        for name, tensor in current.items()
        if name not in declared
    ]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise SparseFileError(f"{path}: the model does not have the architecture saved in the file: {shown}")
    model.load_state_dict(decode_contents(contents), strict=True)
