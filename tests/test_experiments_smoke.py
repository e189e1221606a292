"""Every shipped config runs end to end in ``--smoke`` mode (random tensors shaped like its benchmark),
so the paper grid cannot rot while its data is absent here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avalanche_sparcl.experiments.cli import main
from avalanche_sparcl.experiments.config import BENCHMARK_SHAPES, load_config
from avalanche_sparcl.experiments.runner import SMOKE_EXPERIENCES, RunOptions, run_directory, run_experiment

CONFIG_DIR = Path(__file__).resolve().parents[1] / "experiments" / "configs"
SHIPPED_CONFIGS = sorted(CONFIG_DIR.glob("split_*/*.yaml"))
RESULT_KEYS = {
    "name", "method", "method_kind", "benchmark", "strategy", "buffer_size", "sparsity", "seed", "smoke",
    "device", "config_path", "config", "identity", "fingerprint", "versions", "class_il_accuracy",
    "task_il_accuracy", "class_il_forgetting", "task_il_forgetting", "accuracy_matrix", "train_flops",
    "train_flops_after_experience", "train_iterations", "wall_time_s", "train_time_s", "weight_sparsity",
    "kept_data", "curves", "world_size", "mask_digests",
}  # fmt: skip


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_config_runs_end_to_end_in_smoke_mode(tmp_path, path):
    config = load_config(path)
    results = run_experiment(config, seed=0, options=RunOptions(tmp_path, quiet=True, smoke=True))
    run_dir = run_directory(config, 0, tmp_path, smoke=True)
    assert json.loads((run_dir / "results.json").read_text())["train_flops"] == results["train_flops"]
    assert set(results) == RESULT_KEYS
    assert results["world_size"] == 1 and len(results["mask_digests"]) == 1
    assert 0 < results["train_time_s"] < results["wall_time_s"]
    n_experiences = BENCHMARK_SHAPES[config.benchmark["name"]].default_experiences
    for kind in ("class_il", "task_il"):
        matrix = results["accuracy_matrix"][kind]
        assert len(matrix) == SMOKE_EXPERIENCES and all(len(row) == n_experiences for row in matrix)
        assert all(0 <= value <= 1 for row in matrix for value in row)
    flops = results["train_flops_after_experience"]
    assert len(flops) == SMOKE_EXPERIENCES and 0 < flops[0] < flops[1] == results["train_flops"]
    # the smoke SmallCNN (width 2) masks only conv2 (72 weights) and conv3 (144): rounding each
    # layer's count to a whole weight moves the masked share by up to (0.5 + 0.5) / 216; the metric
    # counts zero weights, so a few regrown weights still at zero (at most 1% of each layer's
    # mutation, 1 + 2 weights here) come on top
    assert config.sparsity - 1 / 216 <= results["weight_sparsity"] <= config.sparsity + 4 / 216
    if config.sparcl is not None and config.sparcl["removal_ratio"] > 0:
        assert results["kept_data"] < 1.0  # DDR removed data within the three smoke epochs
    else:
        assert results["kept_data"] == 1.0
    assert list(run_dir.glob("tensorboard/events.out.tfevents.*"))
    assert (run_dir / "csv" / "eval_results.csv").stat().st_size > 0
    assert (run_dir / "csv" / "training_results.csv").stat().st_size > 0


def test_same_seed_gives_the_same_run_and_another_seed_does_not(tmp_path):
    """Real Split Digits, 3 epochs (DDR removes once, at epoch 2): class order, initialisation, DDR
    and TDM regrowth follow the seed."""
    path = tmp_path / "sparcl_er.yaml"
    path.write_text(
        f"extends: {CONFIG_DIR / 'split_digits' / 'sparcl_er_0.75_buf200.yaml'}\ntraining: {{epochs: 3}}\n"
        "sparcl: {min_update_steps: 0, min_experience_steps: 0}\n"  # 27 steps: every part still acts
    )
    config = load_config(path)
    runs = [
        run_experiment(config, seed, RunOptions(tmp_path / str(index), quiet=True))
        for index, seed in enumerate((3, 3, 4))
    ]
    assert runs[0]["accuracy_matrix"] == runs[1]["accuracy_matrix"]
    assert runs[0]["train_flops"] == runs[1]["train_flops"]
    assert runs[0]["curves"] == runs[1]["curves"]
    assert runs[2]["accuracy_matrix"] != runs[0]["accuracy_matrix"]


def test_cli_run_writes_one_folder_per_config_and_seed(tmp_path, capsys):
    configs = [
        CONFIG_DIR / "split_digits" / name for name in ("er_buf200.yaml", "sparcl_der_0.90_buf200.yaml")
    ]
    out = tmp_path / "runs"
    assert (
        main(["run", *map(str, configs), "--seeds", "0", "1", "--smoke", "--quiet", "--out", str(out)]) == 0
    )
    folders = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("results.json"))
    assert folders == [
        "smoke/split_digits/er_buf200/seed_0",
        "smoke/split_digits/er_buf200/seed_1",
        "smoke/split_digits/sparcl_der_0.90_buf200/seed_0",
        "smoke/split_digits/sparcl_der_0.90_buf200/seed_1",
    ]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("split_digits er_buf200 seed 0: Class-IL ")
    assert lines[3].endswith(f"-> {out}/smoke/split_digits/sparcl_der_0.90_buf200/seed_1")
