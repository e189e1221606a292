"""Avalanche's own checkpoint functions on a SparCL strategy, after only ``import avalanche_sparcl``: the
weights, masks and the logs of ``avalanche_sparcl.loggers`` come back as an uninterrupted run has them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import hashlib, json, shutil, sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
import torch
import avalanche_sparcl
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche_sparcl.loggers import ResumableCSVLogger, ResumableTensorboardLogger, SparCLCSVLogger
from avalanche_sparcl.metrics import data_metrics, flops_metrics, sparsity_metrics
from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint
from avalanche.models import SimpleMLP
from avalanche.training import Naive
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from avalanche_sparcl.benchmarks import split_digits

def digest(tensors):
    hasher = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        hasher.update(name.encode())
        as_bytes = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor
        hasher.update(as_bytes.numpy().tobytes())
    return hasher.hexdigest()

def build(logs):
    RNGManager.set_random_seeds(0)
    loggers = [ResumableCSVLogger(logs / "csv"), SparCLCSVLogger(logs / "csv"),
               ResumableTensorboardLogger(logs / "tb")]
    evaluator = EvaluationPlugin(accuracy_metrics(epoch=True, experience=True), loss_metrics(epoch=True),
                                 *flops_metrics(epoch=True), *sparsity_metrics(per_layer=False),
                                 *data_metrics(), loggers=loggers)
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=32)
    sparcl = avalanche_sparcl.SparCLPlugin(0.75, 0.3, 0.2, min_update_steps=0, min_experience_steps=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    strategy = Naive(model=model, optimizer=optimizer, train_mb_size=32, train_epochs=3, plugins=[sparcl],
                     evaluator=evaluator)
    return strategy, sparcl

mode, path, logs = sys.argv[1], sys.argv[2], Path(sys.argv[3])
benchmark = split_digits(n_experiences=5, seed=0)
if mode == "save":
    strategy, sparcl = build(logs)
    strategy.train(benchmark.train_stream[0])
    save_checkpoint(strategy, path)
    start = 1
else:  # a new process, whose loggers would start new files: the checkpoint's replace them
    strategy, sparcl = build(logs.parent / "scratch")
    strategy, start = maybe_load_checkpoint(strategy, path)
    sparcl = [plugin for plugin in strategy.plugins if isinstance(plugin, avalanche_sparcl.SparCLPlugin)][0]
state = {"start": start, "weights": digest(strategy.model.state_dict()), "masks": digest(sparcl.masks)}
strategy.train(benchmark.train_stream[1])  # training goes on from the restored state
mask = sparcl.masks["features.0.weight"]
weight = dict(strategy.model.named_parameters())["features.0.weight"]
state["after"] = digest(strategy.model.state_dict())
state["pruned_non_zero"] = int((weight.detach()[~mask] != 0).sum())
state["kept"] = int(mask.sum())
for logger in strategy.evaluator.loggers:  # Avalanche's TensorboardLogger has no close(): its writer has
    logger.writer.close() if hasattr(logger, "writer") else logger.close()
if mode == "save":  # the uninterrupted run's logs; the resumed process writes on in the same folder
    shutil.copytree(logs, logs.parent / "uninterrupted")
print(json.dumps(state))
"""


def run(mode: str, path: Path, logs: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(path), str(logs)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_avalanche_save_checkpoint_and_maybe_load_checkpoint_resume_a_sparcl_strategy(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    logs = tmp_path / "logs"
    saved = run("save", path, logs)
    assert path.stat().st_size > 10_000
    resumed = run("load", path, logs)
    assert resumed["start"] == saved["start"] == 1
    assert resumed["weights"] == saved["weights"]
    assert resumed["masks"] == saved["masks"]
    # the resumed process trains the next experience exactly as the uninterrupted one did
    assert resumed["after"] == saved["after"]
    assert resumed["pruned_non_zero"] == saved["pruned_non_zero"] == 0
    assert resumed["kept"] == saved["kept"] == 512

    # complete logs: the resumed process dropped the rows and events the first one wrote after the
    # checkpoint, and wrote them again; nothing lost, nothing twice
    uninterrupted = tmp_path / "uninterrupted"
    for name in ("training_results.csv", "eval_results.csv", "sparcl_epochs.csv", "sparcl_experiences.csv"):
        assert (logs / "csv" / name).read_text() == (uninterrupted / "csv" / name).read_text(), name
    epochs = (logs / "csv" / "sparcl_epochs.csv").read_text().splitlines()
    assert epochs[0] == "training_exp,epoch,iteration,train_flops,weight_sparsity,gradient_sparsity,kept_data"
    assert [row.split(",")[:2] for row in epochs[1:]] == [["0", "0"], ["0", "1"], ["0", "2"], ["1", "0"],
                                                          ["1", "1"], ["1", "2"]]
    assert len((logs / "csv" / "sparcl_experiences.csv").read_text().splitlines()) == 1 + 2
    resumed_scalars, reference_scalars = scalars(logs / "tb"), scalars(uninterrupted / "tb")
    assert resumed_scalars == reference_scalars
    assert len(resumed_scalars["Top1_Acc_Epoch/train_phase/train_stream/Task000"]) == 6  # 2 experiences x 3


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the event files under ``folder``: tag -> (step, value) in order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in tags}
