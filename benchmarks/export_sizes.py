"""Sizes of the sparse model file (``avalanche_sparcl.export.save_sparse``) against a dense torch.save.

ResNet-18 at full width (nf 64, 10 classes, 11.17M parameters), its 16 block 3x3 convolutions masked
by the reference profiles experiments/profiles/resnet18_{0.75,0.90,0.95}.yaml (random weights: sizes
depend on the mask counts only). Float32 values plus a 1-bit mask cost (1 - sparsity) + 1/32 of the
dense bytes of a masked layer.

    python benchmarks/export_sizes.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from avalanche_sparcl.export import SparseFileSummary, save_sparse
from avalanche_sparcl.models import ResNet18
from avalanche_sparcl.sparse.dynamic import DynamicSparsity, TDMSettings

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "experiments" / "profiles"
SPARSITIES = ("0.75", "0.90", "0.95")
MASKED_RATIO_TARGETS = {"0.75": 0.32, "0.90": 0.20}
MIB = 2**20


def measure(sparsity: str, folder: Path) -> SparseFileSummary:
    """Save ResNet-18 (nf 64) masked by the reference profile at ``sparsity``; return the sizes."""
    torch.manual_seed(0)
    model = ResNet18(num_classes=10, nf=64, in_channels=3)
    settings = TDMSettings(profile=PROFILES / f"resnet18_{sparsity}.yaml")
    masks = DynamicSparsity.for_model(model, settings, run_forward=lambda: None).masks
    return save_sparse(model, masks, folder / f"resnet18_{sparsity}.sparse")


def size_table() -> str:
    """A Markdown table of masked-layer and whole-file sizes, dense against sparse, per sparsity."""
    lines = [
        "| sparsity | masked layers dense (MiB) | masked layers sparse (MiB) | ratio | "
        "whole file dense (MiB) | whole file sparse (MiB) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as folder:
        for sparsity in SPARSITIES:
            summary = measure(sparsity, Path(folder))
            target = MASKED_RATIO_TARGETS.get(sparsity)
            ratio = f"{100 * summary.masked_ratio:.1f}%" + (
                f" (target <= {100 * target:.0f}%)" if target else ""
            )
            masked = (summary.masked_dense_bytes / MIB, summary.masked_sparse_bytes / MIB)
            whole = (summary.dense_file_bytes / MIB, summary.file_bytes / MIB)
            lines.append(
                f"| {sparsity} | {masked[0]:.2f} | {masked[1]:.2f} | {ratio} | "
                f"{whole[0]:.2f} | {whole[1]:.2f} | {100 * summary.file_ratio:.1f}% |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(size_table())
