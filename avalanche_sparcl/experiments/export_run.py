"""``sparcl-bench export``: the trained model of a finished run as a compact sparse file (and ONNX).

The run's ``model.pt`` holds the trained weights and weight masks as tensors only (written just before
results.json, read with ``torch.load(weights_only=True)``, see ``trained_model``); they are loaded into
a model built from the run's own config (results.json) and written with
:func:`avalanche_sparcl.export.save_sparse`. The run's ``checkpoint.pkl``, a pickle that would run any
code it holds, is never read, so exporting a run folder received from elsewhere is safe. Every export
is checked: the file is read back into a fresh model of the same architecture and both models, and the
ONNX file under onnxruntime, are run on the benchmark's test images; the largest output difference is
reported.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avalanche_sparcl.experiments.build import build_benchmark, build_model
from avalanche_sparcl.experiments.config import ConfigError, ExperimentConfig
from avalanche_sparcl.experiments.run_folder import MODEL_NAME, RESULTS_NAME, read_json_record
from avalanche_sparcl.experiments.trained_model import RESTART, read_trained_model
from avalanche_sparcl.export import load_sparse, save_sparse

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
        seed, smoke, fingerprint = int(results["seed"]), bool(results["smoke"]), str(results["fingerprint"])
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{run_dir / RESULTS_NAME}: no usable config ({error!r})") from None
    return config, {"seed": seed, "smoke": smoke, "fingerprint": fingerprint}


def trained_model(run_dir: Path, config: ExperimentConfig, run: dict[str, Any]) -> tuple[nn.Module, dict]:
    """The run's trained model, built from its config with the weights of its ``model.pt``, and its
    weight masks; nothing but tensors and plain values is read from the folder."""
    state_dict, masks = read_trained_model(run_dir / MODEL_NAME, run["fingerprint"], run["seed"])
    model = build_model(config, run["smoke"])
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ConfigError(
            f"{run_dir / MODEL_NAME}: does not fit the model of results.json's config "
            f"({(str(error).splitlines() or [''])[0]}); {RESTART}"
        ) from None
    parameters = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in parameters or mask.shape != parameters[name].shape or mask.dtype != torch.bool:
            raise ConfigError(
                f"{run_dir / MODEL_NAME}: its mask {name!r} fits no weight of the model; {RESTART}"
            )
    return model, masks


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
    trained, masks = trained_model(run_dir, config, run)
    trained.eval()
    with contextlib.redirect_stdout(io.StringIO()):
        benchmark = build_benchmark(config, run["seed"], run["smoke"])
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
