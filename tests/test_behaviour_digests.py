"""Fixed training runs whose final weights and masks must not change under a refactor.

The SHA-256 digests below were recorded on the CPU (torch 2.14.1, one thread) before the structure work
(issue "each option declared once, the runner split by job, one owner for what is masked at the
optimizer step"). A change that is meant to alter training must re-record them and say why.
Re-recorded when ``kept_scale="weight_variance"`` became the default (the initial kept weights are
rescaled; masks and every other step unchanged): with ``kept_scale="none"`` the runs still give the
earlier digests.

``sparcl_der_defaults`` is the default plugin on experiences of 288 optimizer steps (8 epochs of 36
minibatches of 8), over the short-experience threshold of 256: its digests were recorded before the
short-experience rules of DDR, DGM and the masked head (commit 013534c), which must leave it alone
(at 7 epochs, 252 steps, the rules change its digests).
"""

from __future__ import annotations

import hashlib
import warnings

import pytest
import torch
from avalanche.training import DER
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from conftest import RULES_OFF

from avalanche_sparcl import ReservoirReplayPlugin, SparCLPlugin, TDMPlugin
from avalanche_sparcl.benchmarks import split_digits
from avalanche_sparcl.models import SmallCNN

RECORDED = {
    "sparcl_der": (
        "cf745dcb5906eabc056d395bac5257473d086671c31abeae84d26c0d3623f90a",
        "8b32d106d2a5036da7ca75293d77cf12bb57e959cd797ea0b72888966fcafbfb",
    ),
    "rigl_der": (
        "dfce0bf8dbb8a569583f04cbf0bf5ce8eb5957a6e8b61fb894e58d4845f1e7ae",
        "3036c93d53f393911901318300776bbb98ad891c22ee8571ee8646e8874ff25a",
    ),
    "sparcl_der_defaults": (
        "2f65afb027407024540621998e566097748f1612de129bb3375cdd9bd8134b9b",
        "bc666a5b544e5d2561ba08030753e568ed0abc864e954d1588f96ad7da65e1c0",
    ),
}


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes, in name order."""
    hasher = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        hasher.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        hasher.update(
            tensor.to(torch.uint8 if tensor.dtype == torch.bool else tensor.dtype).numpy().tobytes()
        )
    return hasher.hexdigest()


SCHEDULES = {  # method -> (minibatch size, epochs per experience, experiences)
    "sparcl_der": (32, 4, 3),
    "rigl_der": (32, 4, 3),
    "sparcl_der_defaults": (8, 8, 2),
}


def sparse_plugin(method: str):
    if method == "sparcl_der":  # TDM + DDR + DGM + masked head, on the reservoir buffer
        return SparCLPlugin(
            sparsity=0.75, removal_ratio=0.3, gradient_sparsity=0.2, masked_head=True, **RULES_OFF
        )
    if method == "sparcl_der_defaults":  # the same parts at their defaults, every rule in force
        return SparCLPlugin(sparsity=0.75, removal_ratio=0.3, gradient_sparsity=0.2, masked_head=True)
    # RigL-style baseline on TDM's core: magnitude prune, gradient regrow, no expansion
    return TDMPlugin(0.75, expand_ratio=0, importance_lambda=0, regrow="gradient", min_update_steps=0)


def train(method: str) -> tuple[str, str]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        RNGManager.set_random_seeds(0)
        benchmark = split_digits(n_experiences=5, seed=0)
        model = SmallCNN(width=8)
        plugin = sparse_plugin(method)
        minibatch, epochs, experiences = SCHEDULES[method]
        strategy = DER(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
            mem_size=64,
            train_mb_size=minibatch,
            train_epochs=epochs,
            plugins=[ReservoirReplayPlugin(mem_size=64), plugin],
            evaluator=EvaluationPlugin(loggers=[]),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for experience in benchmark.train_stream[:experiences]:
                strategy.train(experience)
        return digest(model.state_dict()), digest(plugin.masks)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("method", list(RECORDED))
def test_final_weights_and_masks_match_the_recorded_digests(method):
    assert train(method) == RECORDED[method]
