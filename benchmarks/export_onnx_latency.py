"""CPU inference latency of the ONNX export (``avalanche_sparcl.export.onnx_export``) against PyTorch eager.

ResNet-18 at full width (nf 64, 10 classes, 3x32x32 inputs), its 16 block 3x3 convolutions masked at
0.90 by experiments/profiles/resnet18_0.90.yaml (random weights: latency and sizes depend on shapes and
mask counts only). The same model runs in PyTorch eager mode and in ONNX Runtime (CPUExecutionProvider)
from the all-dense ONNX file and from the file with sparse initializers, one after the other; the table
gives the median of the timed repetitions after a warm-up, with ``torch.set_num_threads`` and ONNX
Runtime's intra-op threads both set to ``threads``.

No speedup is to be expected from the sparse file: ONNX Runtime turns sparse initializers back into
dense tensors when it loads the model and runs the dense convolution kernels, so the sparse file is
smaller on disk and in transfer only. Unstructured sparsity does not make dense CPU kernels faster.

    python benchmarks/export_onnx_latency.py [--runs 20] [--warmup 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from avalanche_sparcl.export.onnx_export import OnnxExportSummary, export_onnx, import_onnxruntime
from avalanche_sparcl.models import ResNet18
from avalanche_sparcl.sparse.dynamic import DynamicSparsity, TDMSettings

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "experiments" / "profiles" / "resnet18_0.90.yaml"
BATCH_SIZES = (1, 32)


def median_ms(functions: dict[str, Callable[[], object]], runs: int, warmup: int) -> dict[str, float]:
    """Median wall time in milliseconds of each function: ``warmup`` untimed calls, then ``runs`` timed
    ones, one function after the other (interleaving single calls would let one runtime's spinning
    worker threads slow the other down on a machine with few cores)."""
    medians = {}
    for name, function in functions.items():
        for _ in range(warmup):
            function()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            function()
            times.append(1000 * (time.perf_counter() - start))
        medians[name] = statistics.median(times)
    return medians


def latency_table(runs: int = 20, warmup: int = 3, threads: int | None = None, nf: int = 64) -> str:
    """A Markdown table: per batch size, PyTorch eager against ONNX Runtime (dense and sparse file)
    median latency, and the two ONNX files' sizes."""
    onnxruntime = import_onnxruntime()
    threads = threads or os.cpu_count() or 1
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ResNet18(num_classes=10, nf=nf, in_channels=3).eval()
    settings = TDMSettings(profile=PROFILE)
    masks = DynamicSparsity.for_model(model, settings, run_forward=lambda: None).masks
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    rows = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            example = torch.randn(1, 3, 32, 32)
            summaries: dict[str, OnnxExportSummary] = {}
            sessions = {}
            for kind in ("dense", "sparse"):
                path = Path(folder) / f"resnet18_0.90_{kind}.onnx"
                summaries[kind] = export_onnx(
                    model, masks, example, path, sparse_initializers=kind == "sparse"
                )
                sessions[kind] = onnxruntime.InferenceSession(
                    str(path), options, providers=["CPUExecutionProvider"]
                )
            for batch_size in BATCH_SIZES:
                inputs = torch.randn(batch_size, 3, 32, 32)
                feeds = {"input": inputs.numpy()}

                def eager(inputs: torch.Tensor = inputs) -> object:
                    with torch.inference_mode():
                        return model(inputs)

                medians = median_ms(
                    {
                        "eager": eager,
                        "dense": lambda feeds=feeds: sessions["dense"].run(None, feeds),
                        "sparse": lambda feeds=feeds: sessions["sparse"].run(None, feeds),
                    },
                    runs,
                    warmup,
                )
                rows.append((batch_size, medians))
    finally:
        torch.set_num_threads(previous_threads)

    dense_bytes = summaries["dense"].file_bytes
    sparse_bytes = summaries["sparse"].file_bytes
    lines = [
        f"ResNet-18 (nf {nf}), 16 block convolutions at sparsity 0.90, CPU, {threads} thread(s), "
        f"median of {runs} runs after {warmup} warm-up run(s); onnxruntime {onnxruntime.__version__}, "
        f"torch {torch.__version__}.",
        "",
        "| batch | PyTorch eager (ms) | ONNX Runtime, dense file (ms) | ONNX Runtime, sparse file (ms) | "
        "dense ONNX (bytes) | sparse ONNX (bytes) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for batch_size, medians in rows:
        lines.append(
            f"| {batch_size} | {medians['eager']:.2f} | {medians['dense']:.2f} | {medians['sparse']:.2f} | "
            f"{dense_bytes} | {sparse_bytes} |"
        )
    lines += [
        "",
        f"The sparse file is {100 * sparse_bytes / dense_bytes:.1f}% of the dense one "
        f"({dense_bytes - sparse_bytes} bytes saved). ONNX Runtime densifies sparse initializers at load, "
        "so both files run the same dense kernels: no speedup is claimed for unstructured sparsity.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed repetitions (median taken)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions first")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--nf", type=int, default=64, help="ResNet-18 width")
    args = parser.parse_args()
    print(latency_table(args.runs, args.warmup, args.threads, args.nf))


if __name__ == "__main__":
    main()
