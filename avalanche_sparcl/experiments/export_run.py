"""``sparcl-bench export``: the trained model of a finished run as a compact sparse file (and ONNX).

The run's checkpoint holds the whole strategy after its last experience; it is loaded into a strategy
built from the run's own config (results.json), the masks are read from its plugins, and the model is
written with :func:`avalanche_sparcl.export.save_sparse`. Every export is checked: the file is read
back into a fresh model of the same architecture and both models, and the ONNX file under onnxruntime,
are run on the benchmark's test images; the largest output difference is reported.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avalanche_sparcl.checkpointing import maybe_resume
from avalanche_sparcl.experiments.build import build_benchmark, build_evaluator, build_model, build_strategy
from avalanche_sparcl.experiments.config import ConfigError, ExperimentConfig
from avalanche_sparcl.experiments.options import RunOptions
from avalanche_sparcl.experiments.run_folder import CHECKPOINT_NAME, RESULTS_NAME, read_json_record
from avalanche_sparcl.export import load_sparse, save_sparse
from avalanche_sparcl.metrics.masks import WEIGHT_MASKS, strategy_masks

SPARSE_FILE_NAME = "model.sparse"
ONNX_FILE_NAME = "model.onnx"
CHECK_IMAGES = 256
"""Test images the exported models are compared on."""
EXPORT_EXTRA = 'pip install ".[export]"'
"""How to get ``onnx`` and ``onnxruntime``: the ``export`` extra, installed from a clone of the repository."""


@dataclass
class RunExport:
    """What an export wrote and how closely the exported models match the trained one."""

    sparse_path: Path
    sparse_bytes: int
    dense_bytes: int
    layer_sparsity: dict[str, float]
    sparse_difference: float
    onnx_path: Path | None = None
    onnx_bytes: int | None = None
    onnx_difference: float | None = None
    checked_images: int = 0

    def summary(self) -> str:
        """One line: sizes, per-layer sparsity, output differences."""
        layers = ", ".join(f"{name} {sparsity:.3f}" for name, sparsity in self.layer_sparsity.items())
        line = (
            f"{self.sparse_path}: {self.sparse_bytes:,} bytes vs {self.dense_bytes:,} dense "
            f"({self.sparse_bytes / self.dense_bytes:.3f}); sparsity {layers or 'none (dense run)'}; "
            f"max |output difference| on {self.checked_images} test images: sparse file "
            f"{self.sparse_difference:.3g}"
        )
        if self.onnx_path is not None:
            line += f", ONNX {self.onnx_difference:.3g} ({self.onnx_path}: {self.onnx_bytes:,} bytes)"
        return line


def finished_run_config(run_dir: Path) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The config and results of a finished run, from its results.json."""
    results = read_json_record(run_dir / RESULTS_NAME)
    if results is None:
        raise ConfigError(f"{run_dir}: no {RESULTS_NAME}, so not a finished run; export needs one")
    if not (run_dir / CHECKPOINT_NAME).is_file():
        raise ConfigError(f"{run_dir}: no {CHECKPOINT_NAME}, so the trained model is not there")
    try:
        stored = results["config"]
        config = ExperimentConfig(
            name=stored["name"],
            path=Path(results.get("config_path", run_dir / RESULTS_NAME)),
            description=stored.get("description", ""),
            benchmark=stored["benchmark"],
            model=stored["model"],
            training=stored["training"],
            sparcl=stored.get("sparcl"),
            baseline=stored.get("baseline"),
        )
        seed, smoke = int(results["seed"]), bool(results["smoke"])
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{run_dir / RESULTS_NAME}: no usable config ({error!r})") from None
    return config, {"seed": seed, "smoke": smoke}


def trained_strategy(run_dir: Path, config: ExperimentConfig, seed: int, smoke: bool) -> tuple[Any, Any]:
    """The strategy saved in the run's checkpoint, and the run's benchmark."""
    from avalanche_sparcl.experiments.config import build_sparse_plugin

    options = RunOptions(out_dir=run_dir, quiet=True, smoke=smoke)
    benchmark = build_benchmark(config, seed, smoke)
    model = build_model(config, smoke)
    sparse_plugin = build_sparse_plugin(config, seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        evaluator, _ = build_evaluator(run_dir, quiet=True, log_files=False)
    plugins = [] if sparse_plugin is None else [sparse_plugin]
    strategy = build_strategy(config, model, plugins, evaluator, options, seed)
    strategy, _ = maybe_resume(strategy, run_dir / CHECKPOINT_NAME, map_location="cpu")
    return strategy, benchmark


def benchmark_test_images(benchmark: Any, limit: int = CHECK_IMAGES) -> torch.Tensor:
    """The first ``limit`` test images of the benchmark, across its experiences."""
    images: list[torch.Tensor] = []
    for experience in benchmark.test_stream:
        dataset = experience.dataset
        for index in range(min(len(dataset), limit - len(images))):
            images.append(torch.as_tensor(dataset[index][0]))
        if len(images) >= limit:
            break
    return torch.stack(images)


@torch.no_grad()
def max_output_difference(reference: nn.Module, other: nn.Module, images: torch.Tensor) -> float:
    return float((reference(images) - other(images)).abs().max())


def check_onnx_packages() -> None:
    """Raise :class:`ConfigError` (one line naming the extra) unless ``onnx`` and ``onnxruntime`` import."""
    from avalanche_sparcl.export.onnx_check import import_onnxruntime
    from avalanche_sparcl.export.onnx_graph import import_onnx

    missing = []
    for name, importer in (("onnx", import_onnx), ("onnxruntime", import_onnxruntime)):
        try:
            importer()
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(
            f"--onnx needs the packages onnx and onnxruntime ({', '.join(missing)} missing): "
            f"install the export extra with {EXPORT_EXTRA} in the repository's folder"
        )


def export_run(run_dir: str | Path, out_dir: str | Path, onnx: bool = False) -> RunExport:
    """Export the trained model of the finished run in ``run_dir`` to ``out_dir``.

    With ``onnx``, missing ``onnx`` or ``onnxruntime`` packages are a :class:`ConfigError` raised before
    anything is read or written.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if onnx:
        check_onnx_packages()
    config, run = finished_run_config(run_dir)
    with contextlib.redirect_stdout(io.StringIO()):
        strategy, benchmark = trained_strategy(run_dir, config, run["seed"], run["smoke"])
    trained = strategy.model.cpu().eval()
    masks = {name: mask.cpu() for name, mask in strategy_masks(strategy, WEIGHT_MASKS).items()}
    images = benchmark_test_images(benchmark)
    out_dir.mkdir(parents=True, exist_ok=True)
    sparse_path = out_dir / SPARSE_FILE_NAME
    summary = save_sparse(trained, masks, sparse_path)
    restored = build_model(config, run["smoke"]).eval()
    load_sparse(sparse_path, restored)
    export = RunExport(
        sparse_path=sparse_path,
        sparse_bytes=summary.file_bytes,
        dense_bytes=summary.dense_file_bytes,
        layer_sparsity={layer.name: layer.sparsity for layer in summary.layers},
        sparse_difference=max_output_difference(trained, restored, images),
        checked_images=len(images),
    )
    if onnx:
        from avalanche_sparcl.export import check_onnx_outputs, export_onnx

        export.onnx_path = out_dir / ONNX_FILE_NAME
        onnx_summary = export_onnx(trained, masks, images[:1], export.onnx_path)
        export.onnx_bytes = onnx_summary.file_bytes
        export.onnx_difference = check_onnx_outputs(export.onnx_path, trained, images)
    (out_dir / "export.json").write_text(json.dumps(export_record(export, run_dir), indent=2) + "\n")
    return export


def export_record(export: RunExport, run_dir: Path) -> dict[str, Any]:
    """export.json: what was exported from where, for the edge side."""
    return {
        "run_dir": str(run_dir),
        "sparse_file": str(export.sparse_path),
        "sparse_bytes": export.sparse_bytes,
        "dense_bytes": export.dense_bytes,
        "layer_sparsity": export.layer_sparsity,
        "max_output_difference": {"sparse_file": export.sparse_difference, "onnx": export.onnx_difference},
        "onnx_file": None if export.onnx_path is None else str(export.onnx_path),
        "checked_images": export.checked_images,
    }
