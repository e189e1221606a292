"""ONNX export of a sparse model, its masked weights stored as ONNX sparse initializers (edge export).

``export_onnx`` traces the model (:mod:`avalanche_sparcl.export.onnx_graph` says how and why that way),
then moves each masked weight from ``graph.initializer`` to ``graph.sparse_initializer`` where that is
safe and smaller. Nothing else in the file changes.

ONNX's operator schemas type Conv's and Gemm's weights as dense tensors, so ``onnx.checker`` in strict
mode (``full_check=True``, shape inference) refuses a sparse initializer feeding them; the structural
check passes. ONNX Runtime accepts such a model: it turns each sparse initializer back into a dense one
when it loads the model (this is what ``SPARSE_CONSUMERS`` lists, checked for Conv, Gemm and MatMul),
so the file is smaller but inference does the same dense work: no speedup is to be expected from
unstructured sparsity on a CPU.

A masked weight stays dense, with the reason recorded, when it is not an initializer of the exported
graph holding the parameter's values, when an operator outside ``SPARSE_CONSUMERS`` reads it, when the
sparse form would be larger, or when ONNX Runtime (if installed) rejects the model or computes other
outputs with it sparse.

``onnx`` and ``onnxruntime`` are the optional extra ``export`` (``pip install ".[export]"`` in a
clone); they are imported inside the functions, so importing this package does not need them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from avalanche_sparcl.export.onnx_check import check_onnx_outputs, import_onnxruntime
from avalanche_sparcl.export.onnx_graph import (
    OPSET,
    SPARSE_CONSUMERS,
    checked_masked_weights,
    consuming_op_types,
    find_initializer,
    import_onnx,
    sparse_tensor,
    trace_to_onnx,
    with_sparse_initializers,
)

__all__ = ["OnnxExportSummary", "OnnxLayer", "check_onnx_outputs", "export_onnx", "import_onnxruntime"]

VERIFY_TOLERANCE = 1e-5
"""Largest difference allowed between ONNX Runtime's outputs with sparse and with dense initializers."""


@dataclass(frozen=True)
class OnnxLayer:
    """How one masked weight is stored in the ONNX file."""

    name: str
    """The parameter's name (``state_dict`` key), also the initializer's name in the graph."""
    numel: int
    kept: int
    sparse: bool
    """Whether the weight is a sparse initializer (else a dense one, see ``reason``)."""
    reason: str
    """Why the weight stayed dense; empty when it is sparse."""
    initializer: str
    """The initializer's name in the graph: ``name``, unless the exporter renamed it (empty if not found)."""
    op_types: tuple[str, ...]
    """The ONNX operators that read the weight."""
    dense_bytes: int
    """Serialised size of the weight as a dense ``TensorProto`` (0 when the graph has no such initializer)."""
    sparse_bytes: int
    """Serialised size of the weight as a ``SparseTensorProto`` (0 when the graph has no such initializer)."""

    @property
    def sparsity(self) -> float:
        return 1 - self.kept / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class OnnxExportSummary:
    """What ``export_onnx`` wrote: file sizes and, per masked weight, sparse or dense."""

    path: str
    file_bytes: int
    """Size of the file written."""
    dense_file_bytes: int
    """Size of the same export with every initializer dense."""
    opset: int
    layers: tuple[OnnxLayer, ...]
    """One entry per mask, in the masks' order."""
    onnxruntime_checked: bool
    """Whether ONNX Runtime loaded the written model and matched the dense model's outputs."""

    @property
    def sparse_layers(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers if layer.sparse)

    @property
    def dense_layers(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers if not layer.sparse)

    @property
    def saved_bytes(self) -> int:
        return self.dense_file_bytes - self.file_bytes

    def to_markdown(self) -> str:
        """A per-layer Markdown table followed by the file sizes."""
        lines = [
            "| weight | ops | entries | kept | sparsity | stored as | dense bytes | sparse bytes |",
            "|---|---|---:|---:|---:|---|---:|---:|",
        ]
        for layer in self.layers:
            stored = "sparse" if layer.sparse else f"dense ({layer.reason})"
            lines.append(
                f"| {layer.name} | {', '.join(layer.op_types) or '-'} | {layer.numel} | {layer.kept} | "
                f"{layer.sparsity:.3f} | {stored} | {layer.dense_bytes} | {layer.sparse_bytes} |"
            )
        lines.append("")
        lines.append(
            f"File: {self.file_bytes} bytes; all-dense export: {self.dense_file_bytes} bytes "
            f"({self.saved_bytes} bytes saved)."
        )
        return "\n".join(lines)


def export_onnx(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    example_input: Tensor,
    path: str | os.PathLike[str],
    sparse_initializers: bool = True,
) -> OnnxExportSummary:
    """Export ``model`` in eval mode to the ONNX file ``path``; with ``sparse_initializers`` the masked
    weights become sparse initializers where the consuming operators accept them.

    ``masks`` maps parameter names to bool masks (True = kept), as TDM keeps them; the pruned entries of
    each masked weight must be zero (a ValueError names any that is not). The model's train/eval flags
    are restored afterwards. The graph has one input ``input`` and outputs ``output`` (or ``output_0``,
    ``output_1``, ... for several), with a dynamic first (batch) dimension.
    """
    onnx = import_onnx()
    from onnx import numpy_helper

    weights = checked_masked_weights(model, masks)
    dense_model = trace_to_onnx(onnx, model, example_input)
    dense_file_bytes = dense_model.ByteSize()

    initializers = {init.name: init for init in dense_model.graph.initializer}
    consumers = consuming_op_types(dense_model.graph)
    layers: dict[str, OnnxLayer] = {}
    candidates: dict[str, tuple[Any, Any]] = {}  # weight name -> (dense TensorProto, SparseTensorProto)
    for name, (weight, mask) in weights.items():
        found = find_initializer(initializers, name, weight, mask, numpy_helper)
        kept = int(mask.sum())
        op_types: tuple[str, ...] = ()
        dense_bytes = sparse_bytes = 0
        if found is None:
            reason = "no initializer of the exported graph holds its values"
        else:
            init, layout_mask = found
            op_types = tuple(sorted(consumers.get(init.name, ())))
            sparse = sparse_tensor(onnx, numpy_helper, init, layout_mask)
            dense_bytes, sparse_bytes = init.ByteSize(), sparse.ByteSize()
            rejected = sorted(set(op_types) - SPARSE_CONSUMERS)
            if rejected:
                reason = f"read by {', '.join(rejected)}"
            elif not op_types:
                reason = "read by no operator"
            elif sparse_bytes >= dense_bytes:
                reason = "the sparse form would be larger"
            else:
                reason = ""
                candidates[name] = (init, sparse)
        layers[name] = OnnxLayer(
            name=name,
            numel=int(mask.size),
            kept=kept,
            sparse=False,
            reason=reason,
            initializer=found[0].name if found else "",
            op_types=op_types,
            dense_bytes=dense_bytes,
            sparse_bytes=sparse_bytes,
        )

    chosen: dict[str, tuple[Any, Any]] = candidates if sparse_initializers else {}
    if not sparse_initializers:
        for name in candidates:
            layers[name] = replace_layer(layers[name], False, "sparse_initializers=False")
    checked = False
    if chosen:
        chosen, refused, checked = verified_choice(onnx, dense_model, chosen, layers, example_input)
        for name, reason in refused.items():
            layers[name] = replace_layer(layers[name], False, reason)
        for name in chosen:
            layers[name] = replace_layer(layers[name], True, "")

    written = with_sparse_initializers(onnx, dense_model, chosen)
    onnx.checker.check_model(written)
    path = os.fspath(path)
    with open(path, "wb") as file:
        file.write(written.SerializeToString())
    return OnnxExportSummary(
        path=path,
        file_bytes=os.path.getsize(path),
        dense_file_bytes=dense_file_bytes,
        opset=OPSET,
        layers=tuple(layers.values()),
        onnxruntime_checked=checked,
    )


def verified_choice(
    onnx: Any,
    dense_model: Any,
    chosen: dict[str, tuple[Any, Any]],
    layers: Mapping[str, OnnxLayer],
    example_input: Tensor,
) -> tuple[dict[str, tuple[Any, Any]], dict[str, str], bool]:
    """Keep the sparse initializers ONNX Runtime accepts: it must load the model and compute the dense
    model's outputs. On a failure, each group of weights read by the same operators is tried alone and
    the groups that fail stay dense. Without ONNX Runtime nothing is checked (third value False)."""
    try:
        onnxruntime = import_onnxruntime()
    except ImportError:
        return chosen, {}, False
    feeds = {"input": example_input.detach().cpu().numpy()}
    reference = run_onnxruntime(onnxruntime, dense_model.SerializeToString(), feeds)
    if isinstance(reference, str):
        raise RuntimeError(f"ONNX Runtime cannot run the dense export: {reference}")

    def failure(subset: Mapping[str, tuple[Any, Any]]) -> str:
        model = with_sparse_initializers(onnx, dense_model, subset)
        outputs = run_onnxruntime(onnxruntime, model.SerializeToString(), feeds)
        if isinstance(outputs, str):
            return f"ONNX Runtime refused it sparse ({outputs})"
        diff = max(
            (float(np.abs(a - b).max()) for a, b in zip(outputs, reference, strict=True) if a.size),
            default=0.0,
        )
        if diff > VERIFY_TOLERANCE:
            return f"ONNX Runtime computed other outputs with it sparse (max diff {diff:.3g})"
        return ""

    if not failure(chosen):
        return chosen, {}, True
    groups: dict[tuple[str, ...], list[str]] = {}
    for name in chosen:
        groups.setdefault(layers[name].op_types, []).append(name)
    accepted: dict[str, tuple[Any, Any]] = {}
    refused: dict[str, str] = {}
    for names in groups.values():
        subset = {name: chosen[name] for name in names}
        reason = failure(subset)
        if reason:
            refused.update(dict.fromkeys(names, reason))
        else:
            accepted.update(subset)
    if accepted and failure(accepted):
        refused.update(dict.fromkeys(accepted, "ONNX Runtime refused the sparse weights together"))
        accepted = {}
    return accepted, refused, True


def run_onnxruntime(onnxruntime: Any, model_bytes: bytes, feeds: Mapping[str, np.ndarray]) -> list | str:
    """ONNX Runtime's outputs on ``feeds``, or the error message when it cannot load or run the model."""
    try:
        session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        return session.run(None, dict(feeds))
    except Exception as error:  # onnxruntime raises its own exception types, not exported stably
        return f"{type(error).__name__}: {error}".splitlines()[0]


def replace_layer(layer: OnnxLayer, sparse: bool, reason: str) -> OnnxLayer:
    return dataclasses.replace(layer, sparse=sparse, reason=reason)
