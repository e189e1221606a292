"""Avalanche's own checkpoint functions on a SparCL strategy, after only ``import avalanche_sparcl``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import hashlib, json, sys, warnings
warnings.simplefilter("ignore")
import torch
import avalanche_sparcl
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

def build():
    RNGManager.set_random_seeds(0)
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=32)
    sparcl = avalanche_sparcl.SparCLPlugin(0.75, 0.3, 0.2, min_update_steps=0, min_experience_steps=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    strategy = Naive(model=model, optimizer=optimizer, train_mb_size=32, train_epochs=3, plugins=[sparcl],
                     evaluator=EvaluationPlugin(loggers=[]))
    return strategy, sparcl

mode, path = sys.argv[1], sys.argv[2]
benchmark = split_digits(n_experiences=5, seed=0)
strategy, sparcl = build()
if mode == "save":
    strategy.train(benchmark.train_stream[0])
    save_checkpoint(strategy, path)
    start = 1
else:
    strategy, start = maybe_load_checkpoint(strategy, path)
    sparcl = [plugin for plugin in strategy.plugins if isinstance(plugin, avalanche_sparcl.SparCLPlugin)][0]
state = {"start": start, "weights": digest(strategy.model.state_dict()), "masks": digest(sparcl.masks)}
strategy.train(benchmark.train_stream[1])  # training goes on from the restored state
mask = sparcl.masks["features.0.weight"]
weight = dict(strategy.model.named_parameters())["features.0.weight"]
state["after"] = digest(strategy.model.state_dict())
state["pruned_non_zero"] = int((weight.detach()[~mask] != 0).sum())
state["kept"] = int(mask.sum())
print(json.dumps(state))
"""


def run(mode: str, path: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_avalanche_save_checkpoint_and_maybe_load_checkpoint_resume_a_sparcl_strategy(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    saved = run("save", path)
    assert path.stat().st_size > 10_000
    resumed = run("load", path)
    assert resumed["start"] == saved["start"] == 1
    assert resumed["weights"] == saved["weights"]
    assert resumed["masks"] == saved["masks"]
    # the resumed process trains the next experience exactly as the uninterrupted one did
    assert resumed["after"] == saved["after"]
    assert resumed["pruned_non_zero"] == saved["pruned_non_zero"] == 0
    assert resumed["kept"] == saved["kept"] == 512
