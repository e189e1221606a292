"""``sparcl-bench report``: the table's numbers and the plots, from small real runs on Split Digits."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from PIL import Image

from avalanche_sparcl.experiments.cli import main
from avalanche_sparcl.experiments.config import ConfigError, load_config
from avalanche_sparcl.experiments.report import TABLE_HEADER, write_report
from avalanche_sparcl.experiments.runner import RunOptions, run_experiment

BASE = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "base" / "split_digits.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """Dense DER++ (seeds 0, 1) and SparCL-DER++ 0.75 (seed 0), 1 epoch per experience, real digits."""
    folder = tmp_path_factory.mktemp("report")
    common = f"extends: {BASE}\ntraining: {{strategy: der, buffer_size: 50, epochs: 1}}\n"
    (folder / "dense.yaml").write_text(common)
    (folder / "sparse.yaml").write_text(common + "sparcl: {sparsity: 0.75}\n")
    runs_dir = folder / "runs"
    options = RunOptions(runs_dir, quiet=True)
    dense = [run_experiment(load_config(folder / "dense.yaml"), seed, options) for seed in (0, 1)]
    sparse = [run_experiment(load_config(folder / "sparse.yaml"), 0, options)]
    return runs_dir, dense, sparse


def table_row(table: str, method: str) -> list[str]:
    rows = [line for line in table.splitlines() if line.startswith(f"| split_digits | {method} |")]
    assert len(rows) == 1
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def mean_std(runs, field):
    values = [100 * run[field] for run in runs]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} +- {spread:.2f}"


def test_table_has_mean_std_over_seeds_and_flops_ratio_to_dense(small_runs, tmp_path):
    runs_dir, dense, sparse = small_runs
    report = write_report(runs_dir, tmp_path)
    assert report.table.splitlines()[0] == TABLE_HEADER
    dense_row = table_row(report.table, "DER++")
    sparse_row = table_row(report.table, "SparCL-DER++ 0.75")
    assert dense_row[2:6] == [
        "50",
        mean_std(dense, "class_il_accuracy"),
        mean_std(dense, "task_il_accuracy"),
        mean_std(dense, "class_il_forgetting"),
    ]
    assert dense_row[7:] == ["1.000", "0.000", "1.000", "2"]
    ratio = sparse[0]["train_flops"] / statistics.fmean(run["train_flops"] for run in dense)
    assert 0.1 < ratio < 0.6
    assert sparse_row[3] == mean_std(sparse, "class_il_accuracy")
    assert sparse_row[7:] == [f"{ratio:.3f}", f"{sparse[0]['weight_sparsity']:.3f}", "1.000", "1"]
    # measured on the weights: the masked share plus regrown weights still at zero
    assert 0.75 <= float(sparse_row[8]) < 0.76
    assert report.markdown_path.read_text().count(report.table) == 1


def test_plots_exist_and_are_valid_pngs(small_runs, tmp_path):
    runs_dir, _, _ = small_runs
    report = write_report(runs_dir, tmp_path)
    names = sorted(path.relative_to(tmp_path).as_posix() for path in report.plot_paths)
    assert names == [
        "accuracy_matrix/split_digits__dense.png",
        "accuracy_matrix/split_digits__sparse.png",
        "accuracy_vs_flops.png",
        "training_curves_split_digits.png",
    ]
    for path in report.plot_paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            image.verify()
            assert min(image.size) >= 300


def test_report_command_prints_the_table_and_the_plot_path(small_runs, tmp_path, capsys):
    runs_dir, _, _ = small_runs
    assert main(["report", str(runs_dir), "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == TABLE_HEADER
    assert lines[-1] == f"accuracy vs training FLOPs: {tmp_path / 'out' / 'accuracy_vs_flops.png'}"
    assert lines[-2] == f"report: {tmp_path / 'out' / 'report.md'}"


def test_report_without_runs_is_a_user_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no results.json found"):
        write_report(tmp_path, tmp_path / "out")
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"sparcl-bench: error: {tmp_path}: no results.json found")


def test_marked_sections_are_appended_replaced_and_kept(tmp_path):
    from avalanche_sparcl.experiments.report import kept_section, replace_section

    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nmeasured by make bench\n")
    assert kept_section(page, "claim") == ""
    replace_section(page, "claim", "## Claim\n\nold numbers\n")
    assert page.read_text() == (
        "# Benchmarks\n\nmeasured by make bench\n\n"
        "<!-- claim: start -->\n## Claim\n\nold numbers\n<!-- claim: end -->\n"
    )
    replace_section(page, "claim", "## Claim\n\nnew numbers")
    assert page.read_text().count("numbers") == 1 and "new numbers\n<!-- claim: end -->" in page.read_text()
    kept = "\n<!-- claim: start -->\n## Claim\n\nnew numbers\n<!-- claim: end -->\n"
    assert kept_section(page, "claim") == kept
    assert kept_section(tmp_path / "absent.md", "claim") == ""
