"""Export a sparse model for deployment at the edge: a compact file that needs only torch to read
(``save_sparse`` / ``load_sparse``), and ONNX with sparse initializers (``export_onnx``; needs the
``export`` extra)."""

from avalanche_sparcl.export.onnx_export import OnnxExportSummary, OnnxLayer, check_onnx_outputs, export_onnx
from avalanche_sparcl.export.sparse_file import (
    LayerSize,
    SparseFileError,
    SparseFileSummary,
    load_sparse,
    read_summary,
    save_sparse,
)

__all__ = [
    "LayerSize",
    "OnnxExportSummary",
    "OnnxLayer",
    "SparseFileError",
    "SparseFileSummary",
    "check_onnx_outputs",
    "export_onnx",
    "load_sparse",
    "read_summary",
    "save_sparse",
]
