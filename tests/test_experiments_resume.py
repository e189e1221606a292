"""sparcl-bench runs resume from their last checkpoint, are not rerun when finished, and fail cleanly."""

import json
import os

import pytest

from avalanche_sparcl.experiments.cli import main
from avalanche_sparcl.experiments.config import load_config
from avalanche_sparcl.experiments.runner import RunOptions, run_directory, run_experiment

# 3 epochs of a few minibatches: the short-schedule rules are off so that TDM and DDR act (RULES_OFF)
SHORT_SPARCL_DER = """
extends: {base}
training: {{strategy: der, buffer_size: 100, epochs: 3, lr: {lr}, buffer: {buffer}}}
sparcl: {{sparsity: 0.75, removal_ratio: 0.3, gradient_sparsity: 0.2, masked_head: {head},
          min_update_steps: 0, min_experience_steps: 0}}
"""
BASE = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs", "base", "split_digits.yaml")


def short_config(tmp_path, lr="0.03", buffer="stock"):
    """SparCL-DER++ on Split Digits, 3 epochs (DDR removes at epoch 2); with the reservoir buffer the
    masked head is on, as in the paper-grid configs."""
    path = tmp_path / "short_sparcl_der.yaml"
    head = "true" if buffer == "reservoir" else "false"
    path.write_text(SHORT_SPARCL_DER.format(base=os.path.abspath(BASE), lr=lr, buffer=buffer, head=head))
    return load_config(path)


class SimulatedKillError(Exception):
    pass


def interrupt_after(experience_index):
    def callback(record):
        if record.index == experience_index:
            raise SimulatedKillError

    return callback


def comparable(results):
    return {key: value for key, value in results.items() if key not in ("wall_time_s", "train_time_s")}


@pytest.mark.parametrize("buffer", ["stock", "reservoir"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, buffer):
    config = short_config(tmp_path, buffer=buffer)
    uninterrupted = run_experiment(config, 0, RunOptions(tmp_path / "a", quiet=True))
    options = RunOptions(tmp_path / "b", quiet=True)
    with pytest.raises(SimulatedKillError):
        run_experiment(config, 0, options, on_experience_end=[interrupt_after(1)])
    run_dir = run_directory(config, 0, tmp_path / "b")
    assert (run_dir / "checkpoint.pkl").is_file() and not (run_dir / "results.json").exists()
    trained_again = []
    resumed = run_experiment(config, 0, options, on_experience_end=[lambda r: trained_again.append(r.index)])
    assert trained_again == [2, 3, 4]
    assert comparable(resumed) == comparable(uninterrupted)
    rows = {}
    for name in ("eval_results.csv", "training_results.csv", "sparcl_epochs.csv", "sparcl_experiences.csv"):
        csv_resumed = (run_dir / "csv" / name).read_text()
        assert csv_resumed == (run_directory(config, 0, tmp_path / "a") / "csv" / name).read_text()
        rows[name] = len(csv_resumed.splitlines()) - 1  # less the header
    assert rows["training_results.csv"] == rows["sparcl_epochs.csv"] == 5 * 3  # 5 experiences x 3 epochs
    assert rows["sparcl_experiences.csv"] == 5
    assert resumed["kept_data"] < 1.0  # DDR acted


def test_a_finished_run_is_not_rerun_and_restart_starts_over(tmp_path, capsys):
    config = short_config(tmp_path)
    run_experiment(config, 0, RunOptions(tmp_path, quiet=True))
    results_file = run_directory(config, 0, tmp_path) / "results.json"
    first = results_file.stat().st_mtime_ns
    arguments = ["run", str(config.path), "--out", str(tmp_path), "--quiet"]
    assert main(arguments) == 0
    assert results_file.stat().st_mtime_ns == first
    assert main([*arguments, "--restart"]) == 0
    assert results_file.stat().st_mtime_ns != first
    assert json.loads(results_file.read_text())["train_iterations"] > 0
    assert capsys.readouterr().out.count("short_sparcl_der seed 0: Class-IL") == 2


def test_diverging_training_stops_with_exit_1_and_names_where(tmp_path, capsys):
    config = short_config(tmp_path, lr="1.0e+30")
    assert main(["run", str(config.path), "--out", str(tmp_path), "--quiet"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("sparcl-bench: training failed: non-finite ")
    assert "at experience 0, epoch 0, iteration " in error
    assert error.rstrip().endswith("; the last checkpoint is kept")
    assert not (run_directory(config, 0, tmp_path) / "results.json").exists()


def test_csv_rows_written_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    import dill

    from avalanche_sparcl.experiments.runner import ResumableCSVLogger

    logger = ResumableCSVLogger(tmp_path)
    logger.print_eval_metrics(0, 0, 0.5, 1.0, 0.0)
    saved = dill.dumps(logger)
    logger.print_eval_metrics(1, 1, 0.25, 2.0, 0.1)  # an interrupted experience's row
    logger.eval_file.flush()
    resumed = dill.loads(saved)
    resumed.print_eval_metrics(1, 1, 0.75, 0.5, 0.0)
    resumed.close()
    assert (tmp_path / "eval_results.csv").read_text().splitlines() == [
        "eval_exp,training_exp,eval_accuracy,eval_loss,forgetting",
        "0,0,0.5000,1.0000,0.0000",
        "1,1,0.7500,0.5000,0.0000",
    ]
