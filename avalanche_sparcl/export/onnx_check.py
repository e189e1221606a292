"""Running an exported ONNX file in ONNX Runtime and comparing its outputs with PyTorch's (edge export).

``onnxruntime`` is imported inside the functions (``import_onnxruntime``), so importing this module does
not need it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from avalanche_sparcl.export.onnx_graph import INSTALL_HINT, eval_mode, flat_outputs


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"running an ONNX model needs the 'onnxruntime' package: {INSTALL_HINT}") from error
    return onnxruntime


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
