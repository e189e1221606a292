"""``sparcl-bench report``: the table's numbers and the plots, from small real runs on Split Digits."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from avalanche_sparcl.experiments.cli import main
from avalanche_sparcl.experiments.config import ConfigError, ExperimentConfig, load_config
from avalanche_sparcl.experiments.fingerprint import fingerprint, run_identity
from avalanche_sparcl.experiments.report import TABLE_HEADER, write_report
from avalanche_sparcl.experiments.runner import RunOptions, run_experiment, run_labels

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
    if len(values) == 1:  # one seed: the mean alone, the seeds column says n=1
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} +- {statistics.stdev(values):.2f}"


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
            assert min(image.info["dpi"]) >= 199.5  # publishable: PNG_DPI, rounded in the pHYs chunk
        vector = path.with_suffix(".pdf")
        assert vector.read_bytes()[:5] == b"%PDF-"
        assert f"({vector.relative_to(tmp_path).as_posix()})" in report.markdown_path.read_text()


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


def test_every_section_with_a_prefix_is_found_in_file_order(tmp_path):
    """`make bench` rewrites docs/benchmarks.md keeping every short-schedule section, not a fixed list."""
    from avalanche_sparcl.experiments.report import marked_section_names, replace_section

    page = tmp_path / "benchmarks.md"
    for name in ("short_schedules_b", "claim", "short_schedules_a_pc500_min_experience_steps-0"):
        replace_section(page, name, f"## {name}")
    page.write_text(page.read_text() + "<!-- short_schedules_c: start -->\nno end marker\n")
    assert marked_section_names(page, "short_schedules_") == [
        "short_schedules_b",
        "short_schedules_a_pc500_min_experience_steps-0",
    ]
    assert marked_section_names(tmp_path / "absent.md", "short_schedules_") == []


# Fake run folders: results.json files as the runner writes them, with made-up numbers, so grouping,
# labels and errors are tested without training.


def write_config(folder: Path, file_name: str, body: str) -> ExperimentConfig:
    """A real config extending the Split Digits base, loaded (and validated) like `sparcl-bench run` does."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name
    path.write_text(f"extends: {BASE}\n{body}")
    return load_config(path)


def fake_results(
    config: ExperimentConfig, seed: int, smoke: bool = False, accuracy: float = 0.5, flops: float = 1e9
) -> dict[str, Any]:
    """A results.json as the runner writes it, identity and fingerprint included."""
    rows = 2 if smoke else config.benchmark["n_experiences"]
    matrix = [[accuracy] * config.benchmark["n_experiences"] for _ in range(rows)]
    return {
        **run_labels(config, seed, run_identity(config, smoke), "cpu"),
        "class_il_accuracy": accuracy,
        "task_il_accuracy": accuracy,
        "class_il_forgetting": 0.1,
        "task_il_forgetting": 0.1,
        "accuracy_matrix": {"class_il": matrix, "task_il": matrix},
        "train_flops": flops,
        "train_flops_after_experience": [flops],
        "train_iterations": 10,
        "wall_time_s": 1.0,
        "train_time_s": 1.0,
        "weight_sparsity": config.sparsity,
        "kept_data": 1.0,
        "curves": {
            "weight_sparsity": {"iterations": [0, 10], "values": [config.sparsity] * 2},
            "kept_data": {"iterations": [], "values": []},
        },
    }


def legacy(results: dict[str, Any]) -> dict[str, Any]:
    """The same results as written before runs carried an identity."""
    return {key: value for key, value in results.items() if key not in ("identity", "fingerprint")}


def write_run(runs_dir: Path, results: dict[str, Any], prefix: str = "") -> Path:
    """``<runs>/[<prefix>/]<benchmark>/<name>/seed_<seed>/results.json``, as the runner lays it out."""
    run_dir = runs_dir / prefix / results["benchmark"] / results["name"] / f"seed_{results['seed']}"
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "results.json"
    path.write_text(json.dumps(results, indent=2))
    return path


@pytest.fixture
def two_configs(tmp_path):
    """Dense DER++ and SparCL-DER++ 0.75, buffer 50."""
    common = "training: {strategy: der, buffer_size: 50, epochs: 1}\n"
    dense = write_config(tmp_path / "configs", "dense.yaml", common)
    sparse = write_config(tmp_path / "configs", "sparse.yaml", common + "sparcl: {sparsity: 0.75}\n")
    return dense, sparse


def methods(table: str) -> list[str]:
    """The method column of every row, in order."""
    return [line.split("|")[2].strip() for line in table.splitlines()[2:]]


def test_the_same_run_copied_into_two_folders_is_refused_naming_both(two_configs, tmp_path, capsys):
    dense, _ = two_configs
    first = write_run(tmp_path / "runs", fake_results(dense, 0), "a")
    second = write_run(tmp_path / "runs", fake_results(dense, 0), "b")
    write_run(tmp_path / "runs", fake_results(dense, 1), "b")
    short = fingerprint(run_identity(dense, False))[:12]
    message = f"{first} and {second}: the same run (fingerprint {short}, seed 0) twice"
    with pytest.raises(ConfigError, match=re.escape(message)):
        write_report(tmp_path / "runs", tmp_path / "out")
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"sparcl-bench: error: {first} and {second}") and error.count("\n") == 1


def test_configs_sharing_a_name_or_a_method_label_are_separate_rows(tmp_path):
    common = "training: {strategy: der, buffer_size: 50, epochs: 1}\n"
    dense = write_config(tmp_path / "configs", "dense.yaml", common)
    dense_long = write_config(tmp_path / "configs", "dense_long.yaml", common.replace("1}", "3}"))
    # two different files both named "sparse", with the same method label
    sparse = write_config(tmp_path / "one", "sparse.yaml", common + "sparcl: {sparsity: 0.75}\n")
    sparse_other = write_config(
        tmp_path / "two", "sparse.yaml", common + "sparcl: {sparsity: 0.75, removal_ratio: 0.5}\n"
    )
    runs_dir = tmp_path / "runs"
    write_run(runs_dir, fake_results(dense, 0, flops=2e9))
    write_run(runs_dir, fake_results(dense_long, 0, flops=6e9))
    write_run(runs_dir, fake_results(sparse, 0, accuracy=0.4, flops=1e9), "one")
    write_run(runs_dir, fake_results(sparse, 1, accuracy=0.6, flops=1e9), "one")
    write_run(runs_dir, fake_results(sparse_other, 0, accuracy=0.9, flops=1e9), "two")
    report = write_report(runs_dir, tmp_path / "out")

    first_label = f"SparCL-DER++ 0.75 [sparse {fingerprint(run_identity(sparse, False))[:8]}]"
    other_label = f"SparCL-DER++ 0.75 [sparse {fingerprint(run_identity(sparse_other, False))[:8]}]"
    assert sorted(methods(report.table)) == sorted(
        ["DER++ [dense]", "DER++ [dense_long]", first_label, other_label]
    )
    first = table_row(report.table, first_label)
    assert first[3] == "50.00 +- 14.14" and first[-1] == "2"
    other = table_row(report.table, other_label)
    assert other[3] == "90.00" and other[-1] == "1"
    assert table_row(report.table, "DER++ [dense_long]")[-1] == "1"
    assert len([path for path in report.plot_paths if path.parent.name == "accuracy_matrix"]) == 4


def test_smoke_runs_are_never_merged_with_real_runs(two_configs, tmp_path):
    dense, sparse = two_configs
    runs_dir = tmp_path / "runs"
    write_run(runs_dir, fake_results(dense, 0, accuracy=0.8, flops=4e9))
    write_run(runs_dir, fake_results(sparse, 0, accuracy=0.7, flops=1e9))
    write_run(runs_dir, fake_results(dense, 0, smoke=True, accuracy=0.1, flops=2e6), "smoke")
    report = write_report(runs_dir, tmp_path / "out")
    assert methods(report.table) == ["DER++", "SparCL-DER++ 0.75", "DER++ (smoke)"]
    assert table_row(report.table, "DER++")[3:] == [
        "80.00",
        "80.00",
        "10.00",
        "4 G",
        "1.000",
        "0.000",
        "1.000",
        "1",
    ]
    # the sparse run is compared with the real dense run, not with the smoke one
    assert table_row(report.table, "SparCL-DER++ 0.75")[7] == "0.250"
    assert table_row(report.table, "DER++ (smoke)")[3] == "10.00"
    assert "+-" not in "".join(line for line in report.table.splitlines()[2:])
    assert "accuracy_matrix/split_digits__dense__smoke.png" in report.markdown_path.read_text()


def test_results_without_fingerprint_are_grouped_by_their_config_and_smoke_flag(tmp_path):
    common = "training: {strategy: der, buffer_size: 50, epochs: 1}\n"
    dense = write_config(tmp_path / "one", "dense.yaml", common)
    dense_other = write_config(tmp_path / "two", "dense.yaml", common.replace("1}", "2}"))
    runs_dir = tmp_path / "runs"
    write_run(runs_dir, legacy(fake_results(dense, 0, accuracy=0.2)), "one")
    write_run(runs_dir, legacy(fake_results(dense, 1, accuracy=0.4)), "one")
    write_run(runs_dir, legacy(fake_results(dense_other, 0, accuracy=0.9)), "two")
    write_run(runs_dir, legacy(fake_results(dense, 0, smoke=True)), "smoke")
    report = write_report(runs_dir, tmp_path / "out")
    rows = methods(report.table)
    assert len(rows) == 3 and rows[-1] == "DER++ (smoke)"
    assert all(re.fullmatch(r"DER\+\+ \[dense [0-9a-f]{8}\]", row) for row in rows[:2])
    assert sorted(line.split("|")[4].strip() for line in report.table.splitlines()[2:4]) == [
        "30.00 +- 14.14",
        "90.00",
    ]
    # a copy of an old run is a duplicate too
    copy = write_run(runs_dir, legacy(fake_results(dense, 1, accuracy=0.4)), "copy")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(copy))} and "):
        write_report(runs_dir, tmp_path / "out")


def test_unfinished_runs_are_listed_in_the_report(two_configs, tmp_path):
    dense, sparse = two_configs
    runs_dir = tmp_path / "runs"
    finished = write_run(runs_dir, fake_results(dense, 0)).parent
    (finished / "checkpoint.pkl").write_bytes(b"last checkpoint, kept after the run finished")
    interrupted = runs_dir / "split_digits" / "sparse" / "seed_0"
    interrupted.mkdir(parents=True)
    (interrupted / "checkpoint.pkl").write_bytes(b"not a real checkpoint")
    started = runs_dir / "smoke" / "split_digits" / "sparse" / "seed_1"
    started.mkdir(parents=True)
    (started / "run.json").write_text("{}")
    report = write_report(runs_dir, tmp_path / "out")
    assert report.unfinished_runs == [started, interrupted]
    text = report.markdown_path.read_text()
    assert "## Unfinished runs (2, not in the table)" in text
    assert f"- `{interrupted}`: checkpoint.pkl, no results.json" in text
    assert f"- `{started}`: run.json, no results.json" in text
    assert "2 unfinished" in text.splitlines()[2]
    assert f"`{finished}`" not in text


def test_the_report_command_prints_the_unfinished_runs(two_configs, tmp_path, capsys):
    dense, _ = two_configs
    runs_dir = tmp_path / "runs"
    write_run(runs_dir, fake_results(dense, 0))
    interrupted = runs_dir / "split_digits" / "sparse" / "seed_0"
    interrupted.mkdir(parents=True)
    (interrupted / "checkpoint.pkl").write_bytes(b"not a real checkpoint")
    assert main(["report", str(runs_dir), "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == ["unfinished runs, not in the table (1):", f"  {interrupted}"]


def test_only_unfinished_runs_is_a_user_error_that_names_them(tmp_path):
    interrupted = tmp_path / "split_digits" / "sparse" / "seed_0"
    interrupted.mkdir(parents=True)
    (interrupted / "checkpoint.pkl").write_bytes(b"")
    message = f"{tmp_path}: no results.json found; 1 unfinished run: {interrupted}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        write_report(tmp_path, tmp_path / "out")


@pytest.mark.parametrize(
    ("corrupt", "problem"),
    [
        (lambda text, results: text[: len(text) // 2], "not valid JSON (line"),
        (lambda text, results: "[1, 2]", "not a JSON object"),
        (lambda text, results: "\xff\xfe".encode("latin-1"), "not valid JSON (not UTF-8 text"),
        (
            lambda text, results: {k: v for k, v in results.items() if k not in ("train_flops", "seed")},
            "missing keys seed, train_flops",
        ),
        (
            lambda text, results: {**results, "class_il_accuracy": "high"},
            "class_il_accuracy: expected a number, got 'high'",
        ),
        (lambda text, results: {**results, "curves": {}}, "curves: missing keys kept_data, weight_sparsity"),
        (
            lambda text, results: {**results, "identity": {**results["identity"], "smoke": True}},
            "fingerprint does not match its identity",
        ),
        (
            lambda text, results: {k: v for k, v in legacy(results).items() if k != "config"},
            "missing keys config",
        ),
    ],
    ids=[
        "truncated",
        "not-an-object",
        "not-utf8",
        "missing-keys",
        "wrong-type",
        "missing-nested-keys",
        "edited-identity",
        "no-fingerprint-and-no-config",
    ],
)
def test_a_corrupted_results_json_is_a_one_line_user_error(two_configs, tmp_path, capsys, corrupt, problem):
    dense, _ = two_configs
    results = fake_results(dense, 0)
    path = write_run(tmp_path / "runs", results)
    broken = corrupt(path.read_text(), results)
    if isinstance(broken, bytes):
        path.write_bytes(broken)
    else:
        path.write_text(broken if isinstance(broken, str) else json.dumps(broken))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {problem}")):
        write_report(tmp_path / "runs", tmp_path / "out")
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"sparcl-bench: error: {path}: {problem}") and error.count("\n") == 1


def flops_cell(table: str, method_label: str) -> str:
    rows = [line for line in table.splitlines() if f"| {method_label} |" in line]
    assert len(rows) == 1, rows
    return rows[0].strip("|").split("|")[7].strip()


def test_flops_ratio_pairs_the_sparse_run_with_the_dense_run_of_the_same_schedule(tmp_path):
    configs = tmp_path / "configs"
    epochs_1 = "training: {strategy: der, buffer_size: 50, epochs: 1}\n"
    epochs_3 = "training: {strategy: der, buffer_size: 50, epochs: 3}\n"
    dense_1 = write_config(configs, "dense_e1.yaml", epochs_1)
    dense_3 = write_config(configs, "dense_e3.yaml", epochs_3)
    sparse_3 = write_config(configs, "sparse_e3.yaml", epochs_3 + "sparcl: {sparsity: 0.75}\n")
    runs = tmp_path / "runs"
    write_run(runs, fake_results(dense_1, 0, flops=1e9))  # listed first: the pairing must skip it
    write_run(runs, fake_results(sparse_3, 0, flops=0.78e9))
    table = write_report(runs, tmp_path / "out").table
    assert flops_cell(table, "SparCL-DER++ 0.75") == "n/a (no dense run of this setup)"

    write_run(runs, fake_results(dense_3, 0, flops=3e9))
    table = write_report(runs, tmp_path / "out").table
    assert flops_cell(table, "SparCL-DER++ 0.75") == "0.260"
    assert flops_cell(table, "DER++ [dense_e3]") == "1.000"

    dense_3_again = write_config(configs, "dense_e3_copy.yaml", epochs_3)
    write_run(runs, fake_results(dense_3_again, 0, flops=2e9))
    table = write_report(runs, tmp_path / "out").table
    assert flops_cell(table, "SparCL-DER++ 0.75") == (
        "n/a (2 dense runs of this setup: dense_e3, dense_e3_copy)"
    )


def test_flops_ratio_ignores_dense_runs_of_another_lr_model_width_or_smoke_flag(tmp_path):
    configs = tmp_path / "configs"
    lr_01 = "training: {strategy: der, buffer_size: 50, lr: 0.1}\n"
    sparse = write_config(configs, "sparse.yaml", lr_01 + "sparcl: {sparsity: 0.75}\n")
    others = [
        write_config(configs, "dense_lr.yaml", "training: {strategy: der, buffer_size: 50, lr: 0.03}\n"),
        write_config(configs, "dense_width.yaml", lr_01 + "model: {width: 16}\n"),
    ]
    runs = tmp_path / "runs"
    write_run(runs, fake_results(sparse, 0, flops=1e9))
    for config in others:
        write_run(runs, fake_results(config, 0, flops=4e9))
    dense = write_config(configs, "dense.yaml", "training: {strategy: der, buffer_size: 50, lr: 0.1}\n")
    write_run(runs, fake_results(dense, 0, smoke=True, flops=4e9))
    table = write_report(runs, tmp_path / "out").table
    assert flops_cell(table, "SparCL-DER++ 0.75") == "n/a (no dense run of this setup)"
