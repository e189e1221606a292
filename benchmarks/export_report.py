"""The "Edge export" section of docs/benchmarks.md: file sizes and ONNX Runtime latency.

    python benchmarks/export_report.py          # rewrites only that section of docs/benchmarks.md

`make bench` (benchmarks/run.py) regenerates the same section with the rest of the page.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_onnx_latency import latency_table  # noqa: E402
from export_sizes import size_table  # noqa: E402

from avalanche_sparcl.experiments.report import replace_section  # noqa: E402

EXPORT_SECTION = "export"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def export_section(machine: str) -> str:
    """Markdown of the section: what was measured, how, where, and the two tables."""
    return "\n".join(
        [
            "## Edge export: file sizes and ONNX Runtime latency",
            "",
            f"Measured on {datetime.date.today().isoformat()}, {machine}. `avalanche_sparcl.export` and "
            "`sparcl-bench export RUN_DIR --out DIR [--onnx]`. ResNet-18 (paper variant, nf 64, 10 "
            "classes) with its 16 block convolutions masked by the reference profiles "
            "(`experiments/profiles/resnet18_*.yaml`); random weights, pruned entries zero.",
            "",
            "Sparse file (`save_sparse`): kept values in float32, a 1-bit mask per entry and a 1-bit "
            "sign per pruned entry (so the round trip is bit-identical), everything else dense. "
            "Targets: masked layers at most 20% of their dense bytes at 0.90, at most 32% at 0.75.",
            "",
            size_table(),
            "",
            "ONNX (`export_onnx`): the masked weights as ONNX sparse initializers (values plus int64 "
            "indices, 12 bytes per kept weight, so only layers sparser than 2/3 go sparse). ONNX Runtime "
            "turns them dense when it loads the model: the file is smaller, inference does the same "
            "dense work, and no speedup is claimed for unstructured sparsity on a CPU. Latency: median "
            "of 20 runs after 3 warm-up runs, each runtime timed in its own block, ResNet-18 at 0.90.",
            "",
            latency_table(runs=20, warmup=3),
            "",
        ]
    )


def main() -> None:
    from run import machine_description

    content = export_section(machine_description())
    replace_section(DOCS, EXPORT_SECTION, content)
    print(content)


if __name__ == "__main__":
    main()
