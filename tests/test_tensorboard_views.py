"""At the end of a run its TensorBoard folder holds views for comparing runs: an HParams session (the
config's values against the final accuracies and training FLOPs), series over experiences and a figure
of accuracy against training FLOPs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import plugin_data_pb2

from avalanche_sparcl.experiments.cli import main
from avalanche_sparcl.experiments.loggers import (
    EXPERIENCE_TAGS,
    FIGURE_TAG,
    SUMMARY_RUN,
    flat_hparams,
    seen_mean,
)
from avalanche_sparcl.experiments.options import SMOKE_EXPERIENCES

CONFIG = (
    Path(__file__).resolve().parents[1]
    / "experiments"
    / "configs"
    / "split_digits"
    / "sparcl_der_0.90_buf200.yaml"
)


def loaded(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tensorboard_views") / "runs"
    assert main(["run", str(CONFIG), "--seeds", "0", "--smoke", "--quiet", "--out", str(out)]) == 0
    (results_path,) = out.rglob("results.json")
    return results_path.parent, json.loads(results_path.read_text())


def test_the_run_writes_an_hparams_session_with_its_config_and_final_metrics(smoke_run):
    run_dir, results = smoke_run
    events = loaded(run_dir / "tensorboard" / SUMMARY_RUN)
    content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    assert set(content) >= {
        hparams_metadata.EXPERIMENT_TAG,
        hparams_metadata.SESSION_START_INFO_TAG,
        hparams_metadata.SESSION_END_INFO_TAG,
    }
    start = plugin_data_pb2.HParamsPluginData.FromString(content[hparams_metadata.SESSION_START_INFO_TAG])
    hparams = start.session_start_info.hparams
    assert hparams["sparcl.sparsity"].number_value == pytest.approx(0.9)
    assert hparams["training.strategy"].string_value == "der"
    assert hparams["method"].string_value == results["method"]
    assert hparams["seed"].number_value == 0 and hparams["smoke"].number_value == 1
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content[hparams_metadata.EXPERIMENT_TAG])
    metric_tags = {info.name.tag for info in experiment.experiment.metric_infos}
    assert metric_tags == {"hparam/class_il_accuracy", "hparam/task_il_accuracy", "hparam/train_flops"}
    final = {tag: events.Scalars(tag)[-1].value for tag in metric_tags}
    assert final["hparam/class_il_accuracy"] == pytest.approx(results["class_il_accuracy"])
    assert final["hparam/task_il_accuracy"] == pytest.approx(results["task_il_accuracy"])
    assert final["hparam/train_flops"] == pytest.approx(results["train_flops"], rel=1e-6)


def test_the_run_writes_series_over_experiences_and_an_accuracy_vs_flops_image(smoke_run):
    run_dir, results = smoke_run
    events = loaded(run_dir / "tensorboard" / SUMMARY_RUN)
    tags = events.Tags()
    assert FIGURE_TAG in tags["images"]
    (image,) = events.Images(FIGURE_TAG)
    assert image.step == SMOKE_EXPERIENCES - 1 and image.encoded_image_string[:4] == b"\x89PNG"
    flops = events.Scalars(EXPERIENCE_TAGS["train_flops"])
    assert [event.step for event in flops] == list(range(SMOKE_EXPERIENCES))
    assert [e.value for e in flops] == pytest.approx(results["train_flops_after_experience"], rel=1e-6)
    accuracy = events.Scalars(EXPERIENCE_TAGS["class_il_accuracy"])
    expected = seen_mean(results["accuracy_matrix"]["class_il"])
    assert [event.value for event in accuracy] == pytest.approx(expected, abs=1e-6)
    # the views leave the run's own event file as it was: one file (the resume checks count them)
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert FIGURE_TAG not in loaded(run_dir / "tensorboard").Tags()["images"]


def test_flat_hparams_keeps_scalars_and_names_sections():
    assert flat_hparams({"a": {"b": 1, "c": None, "d": [1, 2]}, "e": "x", "f": True}) == {
        "a.b": 1,
        "a.d": "[1, 2]",
        "e": "x",
        "f": True,
    }


def test_seen_mean_averages_the_experiences_trained_so_far():
    assert seen_mean([[0.8, 0.0], [0.4, 0.6]]) == pytest.approx([0.8, 0.5])
