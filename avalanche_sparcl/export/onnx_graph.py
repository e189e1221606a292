"""Building the ONNX graph of a sparse model: tracing it, finding each masked weight's initializer, and
rewriting chosen initializers as sparse ones (edge export).

The model is traced in eval mode with PyTorch's TorchScript-based ONNX exporter
(``torch.onnx.export(..., dynamo=False)``) at opset 17, the batch dimension dynamic. That exporter needs
nothing beyond ``onnx``, and with ``training=TrainingMode.PRESERVE`` on a model in eval mode it writes
every parameter as an initializer named after its ``state_dict`` key with its values unchanged (no
Conv-BatchNorm folding), so each mask finds its weight by name and the stored values are the trained
ones. The ``torch.export``-based exporter (``dynamo=True``, PyTorch's default) needs ``onnxscript`` and
folds BatchNorm into the convolutions while keeping the parameters' names on the folded values.

A sparse initializer is an ONNX ``SparseTensorProto``: ``values`` (the kept entries in row-major order,
the weight's dtype, named after the weight), ``indices`` (their linearised positions in the dense shape,
ascending, INT64 as the ONNX checker requires) and ``dims`` (the dense shape). Stored so, a layer of
``numel`` float32 entries that keeps ``kept`` of them costs ``12 * kept`` bytes of payload instead of
``4 * numel``: smaller only below a density of 1/3.

``onnx`` is imported inside the functions (``import_onnx``), so importing this module does not need it.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

OPSET = 17
"""The ONNX opset written: supported by ONNX Runtime since 1.14 and by most edge runtimes."""
SPARSE_CONSUMERS = frozenset({"Conv", "Gemm", "MatMul"})
"""Operators whose weight input may be a sparse initializer (ONNX Runtime densifies it at load)."""
INSTALL_HINT = 'pip install ".[export]" in a clone of avalanche-sparcl'


def import_onnx() -> Any:
    try:
        import onnx
    except ImportError as error:
        raise ImportError(f"ONNX export needs the 'onnx' package: {INSTALL_HINT}") from error
    return onnx


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
