"""ONNX export of a sparse model, its masked weights stored as ONNX sparse initializers (edge export).

``export_onnx`` traces the model in eval mode with PyTorch's TorchScript-based ONNX exporter
(``torch.onnx.export(..., dynamo=False)``) at opset 17, the batch dimension dynamic. That exporter needs
nothing beyond ``onnx``, and with ``training=TrainingMode.PRESERVE`` on a model in eval mode it writes
every parameter as an initializer named after its ``state_dict`` key with its values unchanged (no
Conv-BatchNorm folding), so each mask finds its weight by name and the stored values are the trained
ones. The ``torch.export``-based exporter (``dynamo=True``, PyTorch's default) needs ``onnxscript`` and
folds BatchNorm into the convolutions while keeping the parameters' names on the folded values.

Each masked weight then moves from ``graph.initializer`` to ``graph.sparse_initializer`` as an ONNX
``SparseTensorProto``: ``values`` (the kept entries in row-major order, the weight's dtype, named after
the weight), ``indices`` (their linearised positions in the dense shape, ascending, INT64 as the ONNX
checker requires) and ``dims`` (the dense shape). Stored so, a layer of ``numel`` float32 entries that
keeps ``kept`` of them costs ``12 * kept`` bytes of payload instead of ``4 * numel``: smaller only
below a density of 1/3. Nothing else in the file changes.

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

``onnx`` and ``onnxruntime`` are the optional extra ``avalanche-sparcl[export]``; they are imported
inside the functions, so importing this package does not need them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

OPSET = 17
"""The ONNX opset written: supported by ONNX Runtime since 1.14 and by most edge runtimes."""
SPARSE_CONSUMERS = frozenset({"Conv", "Gemm", "MatMul"})
"""Operators whose weight input may be a sparse initializer (ONNX Runtime densifies it at load)."""
VERIFY_TOLERANCE = 1e-5
"""Largest difference allowed between ONNX Runtime's outputs with sparse and with dense initializers."""
INSTALL_HINT = "pip install avalanche-sparcl[export]"


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


def import_onnx() -> Any:
    try:
        import onnx
    except ImportError as error:
        raise ImportError(f"ONNX export needs the 'onnx' package: {INSTALL_HINT}") from error
    return onnx


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"running an ONNX model needs the 'onnxruntime' package: {INSTALL_HINT}") from error
    return onnxruntime


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


def check_onnx_outputs(
    path: str | os.PathLike[str], model: nn.Module, inputs: Tensor | Sequence[Tensor]
) -> float:
    """Largest absolute difference between ONNX Runtime (CPUExecutionProvider) running the file and
    PyTorch eager running ``model`` in eval mode, over all outputs, on a batch ``inputs`` (or on each
    batch of a sequence of batches). The model's train/eval flags are restored afterwards."""
    onnxruntime = import_onnxruntime()
    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    batches = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    worst = 0.0
    with eval_mode(model), torch.no_grad():
        for batch in batches:
            expected = flat_outputs(model(batch))
            actual = session.run(None, {input_name: batch.detach().cpu().numpy()})
            if len(actual) != len(expected):
                raise ValueError(
                    f"the ONNX model has {len(actual)} outputs, the PyTorch model {len(expected)}"
                )
            for got, want in zip(actual, expected, strict=True):
                want = want.detach().cpu().numpy()
                if got.shape != want.shape:
                    raise ValueError(
                        f"ONNX output of shape {got.shape}, PyTorch output of shape {want.shape}"
                    )
                if got.size:
                    diff = np.abs(got.astype(np.float64) - want.astype(np.float64)).max()
                    worst = max(worst, float(diff))
    return worst


def checked_masked_weights(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Any]]:
    """Each masked parameter (CPU copy) with its mask as a numpy bool array, after checking them."""
    params = dict(model.named_parameters())
    unknown = [name for name in masks if name not in params]
    if unknown:
        raise ValueError(f"masks name parameters the model does not have: {', '.join(unknown)}")
    weights = {}
    for name, mask in masks.items():
        weight = params[name].detach().cpu()
        if mask.dtype != torch.bool:
            raise ValueError(f"mask of {name!r} has dtype {mask.dtype}, expected torch.bool (True = kept)")
        if tuple(mask.shape) != tuple(weight.shape):
            raise ValueError(
                f"mask of {name!r} has shape {tuple(mask.shape)}, the weight {tuple(weight.shape)}"
            )
        mask = mask.detach().cpu()
        nonzero_pruned = int(torch.count_nonzero(weight[~mask]))
        if nonzero_pruned:
            raise ValueError(
                f"{nonzero_pruned} pruned entries of {name!r} are not zero: mask the weights before "
                "exporting (the sparse initializer stores only the kept entries)"
            )
        weights[name] = (weight, mask.numpy())
    return weights


def trace_to_onnx(onnx: Any, model: nn.Module, example_input: Tensor) -> Any:
    """The model in eval mode as an ONNX ModelProto with dense initializers."""
    with eval_mode(model), torch.no_grad():
        n_outputs = len(flat_outputs(model(example_input)))
        output_names = ["output"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)]
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript", category=DeprecationWarning)
            # PRESERVE on a model in eval mode exports eval-mode ops; the warning is about training mode.
            # A parameter that constant folding changes gets a new initializer, found by neither name
            # nor values, and stays dense.
            warnings.filterwarnings("ignore", message="It is recommended that constant folding be turned off")
            torch.onnx.export(
                model,
                (example_input,),
                buffer,
                dynamo=False,
                training=torch.onnx.TrainingMode.PRESERVE,
                opset_version=OPSET,
                input_names=["input"],
                output_names=output_names,
                dynamic_axes={name: {0: "batch"} for name in ["input", *output_names]},
                do_constant_folding=True,
            )
    return onnx.load_from_string(buffer.getvalue())


def find_initializer(
    initializers: Mapping[str, Any], name: str, weight: Tensor, mask: np.ndarray, numpy_helper: Any
) -> tuple[Any, np.ndarray] | None:
    """The initializer holding ``weight`` and the mask in its layout: the initializer of the same name,
    else one with equal values, else (for a matrix) one holding its transpose, as the exporter writes
    a Linear layer applied to a 3-D input (MatMul with the weight transposed by constant folding)."""
    layouts = [(weight.numpy(), mask)]
    if weight.dim() == 2:
        layouts.append((weight.numpy().T, mask.T))
    named = initializers.get(name)
    for init in ([named] if named is not None else []) + list(initializers.values()):
        for values, layout_mask in layouts:
            if tuple(init.dims) == values.shape and holds(init, values, numpy_helper):
                return init, layout_mask
    return None


def holds(init: Any, expected: np.ndarray, numpy_helper: Any) -> bool:
    values = numpy_helper.to_array(init)
    return (
        values.shape == expected.shape and values.dtype == expected.dtype and np.array_equal(values, expected)
    )


def consuming_op_types(graph: Any) -> dict[str, set[str]]:
    """Tensor name -> the op types of the nodes that read it (subgraphs included)."""
    consumers: dict[str, set[str]] = {}
    for node in iter_nodes(graph):
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    return consumers


def iter_nodes(graph: Any) -> Iterator[Any]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from iter_nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from iter_nodes(subgraph)


def sparse_tensor(onnx: Any, numpy_helper: Any, init: Any, mask: np.ndarray) -> Any:
    """``init`` as a SparseTensorProto: kept values, their ascending linearised INT64 indices, dense dims."""
    flat = numpy_helper.to_array(init).reshape(-1)
    indices = np.flatnonzero(mask.reshape(-1)).astype(np.int64)
    if np.count_nonzero(flat) != np.count_nonzero(flat[indices]):
        raise RuntimeError(f"initializer {init.name!r} has nonzero entries outside its mask")
    values = numpy_helper.from_array(np.ascontiguousarray(flat[indices]), init.name)
    return onnx.helper.make_sparse_tensor(values, numpy_helper.from_array(indices), list(init.dims))


def with_sparse_initializers(onnx: Any, dense_model: Any, chosen: Mapping[str, tuple[Any, Any]]) -> Any:
    """A copy of ``dense_model`` whose chosen initializers are sparse; everything else unchanged."""
    model = onnx.ModelProto()
    model.CopyFrom(dense_model)
    moved = {init.name: sparse for init, sparse in chosen.values()}
    kept = [init for init in model.graph.initializer if init.name not in moved]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    model.graph.sparse_initializer.extend(moved.values())
    return model


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


def flat_outputs(outputs: Any) -> list[Tensor]:
    """A model's outputs as a flat list of tensors (a tensor, or nested tuples/lists/dicts of them)."""
    if isinstance(outputs, Tensor):
        return [outputs]
    if isinstance(outputs, Mapping):
        outputs = list(outputs.values())
    if isinstance(outputs, (tuple, list)):
        return [tensor for item in outputs for tensor in flat_outputs(item)]
    raise TypeError(f"model output of type {type(outputs).__name__} is not a tensor or a collection of them")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block; every module's own train/eval flag is restored afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training
