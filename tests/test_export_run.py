"""``sparcl-bench export`` on a finished Split Digits run: sizes, sparsity and output checks."""

import json
import re
from pathlib import Path

import pytest

from avalanche_sparcl.experiments.cli import main
from avalanche_sparcl.experiments.export_run import SPARSE_FILE_NAME

BASE = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "base" / "split_digits.yaml"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """SparCL-ER 0.90 on real Split Digits, 3 epochs per experience (so DDR acts), run by the CLI."""
    folder = tmp_path_factory.mktemp("export")
    config = folder / "sparcl_er.yaml"
    config.write_text(
        f"extends: {BASE}\n"
        "training: {strategy: er, buffer_size: 100, epochs: 3}\n"
        "sparcl: {sparsity: 0.9, removal_ratio: 0.3, gradient_sparsity: 0.2}\n"
    )
    assert main(["run", str(config), "--quiet", "--out", str(folder / "runs")]) == 0
    return folder / "runs" / "split_digits" / "sparcl_er" / "seed_0"


def test_export_writes_a_sparse_file_that_restores_the_trained_model(finished_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["export", str(finished_run), "--out", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip()
    sparse_path = tmp_path / SPARSE_FILE_NAME
    record = json.loads((tmp_path / "export.json").read_text())
    assert record["sparse_bytes"] == sparse_path.stat().st_size
    assert record["layer_sparsity"] == {"conv2.weight": pytest.approx(0.9, abs=5e-4),
                                        "conv3.weight": pytest.approx(0.9, abs=5e-4)}  # fmt: skip
    assert record["max_output_difference"] == {"sparse_file": 0.0, "onnx": None}
    assert record["checked_images"] == 256
    assert re.fullmatch(
        rf"{re.escape(str(sparse_path))}: [\d,]+ bytes vs [\d,]+ dense \(0\.\d{{3}}\); sparsity "
        r"conv2\.weight 0\.900, conv3\.weight 0\.900; max \|output difference\| on 256 test images: "
        r"sparse file 0",
        line,
    )
    assert record["sparse_bytes"] < record["dense_bytes"]


def test_export_with_onnx_matches_the_trained_model(finished_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["export", str(finished_run), "--out", str(tmp_path), "--onnx"]) == 0
    record = json.loads((tmp_path / "export.json").read_text())
    assert record["onnx_file"] == str(tmp_path / "model.onnx")
    assert record["max_output_difference"]["sparse_file"] == 0.0
    assert record["max_output_difference"]["onnx"] < 1e-5
    assert ", ONNX " in capsys.readouterr().out


def test_export_of_an_unfinished_run_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "split_digits" / "x" / "seed_0"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pkl").write_bytes(b"")
    assert main(["export", str(run_dir), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        f"sparcl-bench: error: {run_dir}: no results.json, so not a finished run; export needs one\n"
    )
