"""Hostile or mistaken inputs refused with one clear line: Ctrl-C, a results.json that is no file, two
owners of weight masks in one strategy, profiles masking biases or normalisation, crafted sparse files."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest
import torch
from avalanche.training import Naive
from conftest import RULES_OFF, TDM_RULES_OFF, make_tensor_benchmark, quiet_evaluator
from torch import nn

from avalanche_sparcl import DGMPlugin, SparCLPlugin, TDMPlugin
from avalanche_sparcl.experiments import cli
from avalanche_sparcl.experiments.cli import main
from avalanche_sparcl.export import sparse_format
from avalanche_sparcl.export.sparse_file import (
    SparseFileError,
    load_sparse,
    read_sparse,
    save_sparse,
    write_container,
)
from avalanche_sparcl.export.sparse_format import read_payload
from avalanche_sparcl.models import SmallCNN

# --- Ctrl-C -------------------------------------------------------------------------------------------


def interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("argv", "patched", "expected"),
    [
        (
            ["run", "config.yaml"],
            "run_command",
            "sparcl-bench: interrupted; the last checkpoint is kept (run the same command to resume)\n",
        ),
        (["report", "runs"], "report_command", "sparcl-bench: interrupted\n"),
        (["export", "runs/x", "--out", "out"], "export_command", "sparcl-bench: interrupted\n"),
    ],
    ids=["run", "report", "export"],
)
def test_ctrl_c_prints_one_line_and_exits_130(monkeypatch, capsys, argv, patched, expected):
    monkeypatch.setattr(cli, patched, interrupt)
    try:
        code = main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main: a traceback for the user")
    assert code == 130
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", expected)


# --- report: read only regular files ------------------------------------------------------------------


def report_in_thread(runs: Path, out: Path, fifo: Path) -> int:
    """``sparcl-bench report`` with a time limit: a report that blocks on the pipe is released by
    opening its other end, and the test fails instead of hanging."""
    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(main(["report", str(runs), "--out", str(out)])))
    thread.daemon = True
    thread.start()
    thread.join(timeout=20)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the blocked reader gets end of file
        thread.join(timeout=20)
        pytest.fail("report blocked on a named pipe called results.json")
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_report_refuses_a_named_pipe_called_results_json_without_blocking(tmp_path, capsys):
    runs = tmp_path / "runs"
    fifo = runs / "split_digits" / "x" / "seed_0" / "results.json"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    assert report_in_thread(runs, tmp_path / "report", fifo) == 2
    assert capsys.readouterr().err == (
        f"sparcl-bench: error: {fifo}: not a regular file (a named pipe); a results.json is a file\n"
    )
    assert not (tmp_path / "report").exists()


def test_report_refuses_a_folder_called_results_json(tmp_path, capsys):
    folder = tmp_path / "runs" / "x" / "seed_0" / "results.json"
    folder.mkdir(parents=True)
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 2
    assert capsys.readouterr().err == (
        f"sparcl-bench: error: {folder}: not a regular file (a folder); a results.json is a file\n"
    )


# --- two owners of weight masks in one strategy -------------------------------------------------------


def two_owner_strategy(plugins: list):
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        train_mb_size=16,
        train_epochs=1,
        plugins=plugins,
        evaluator=quiet_evaluator(),
    )
    return strategy, model


def refusal_before_the_first_step(plugins: list) -> str:
    """The ValueError's message from training with ``plugins``; the model's weights are unchanged."""
    benchmark = make_tensor_benchmark(8, 4, 2, (8,))
    strategy, model = two_owner_strategy(plugins)
    before = [param.detach().clone() for param in model.parameters()]
    with pytest.raises(ValueError) as raised:
        strategy.train(benchmark.train_stream[0])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    return str(raised.value)


@pytest.mark.parametrize(
    ("make_plugins", "named"),
    [
        (
            lambda: [TDMPlugin(0.5, **TDM_RULES_OFF), TDMPlugin(0.9, **TDM_RULES_OFF)],
            "TDMPlugin (plugins[0]) and TDMPlugin (plugins[1])",
        ),
        (
            lambda: [SparCLPlugin(0.5, removal_ratio=0.0, **RULES_OFF), TDMPlugin(0.9, **TDM_RULES_OFF)],
            "SparCLPlugin (plugins[0], its TDM part) and TDMPlugin (plugins[1])",
        ),
        (
            lambda: [TDMPlugin(0.9, **TDM_RULES_OFF), SparCLPlugin(0.5, **RULES_OFF)],
            "TDMPlugin (plugins[0]) and SparCLPlugin (plugins[1], its TDM part)",
        ),
    ],
    ids=["two-tdm", "sparcl-then-tdm", "tdm-then-sparcl"],
)
def test_two_owners_of_weight_masks_are_refused_before_the_first_step(make_plugins, named):
    assert refusal_before_the_first_step(make_plugins()) == (
        f"{named} both own weight masks in one strategy: their masks would intersect (the network ends "
        "sparser than any of them asks); use one of them (SparCLPlugin holds its own TDM: give it the "
        "sparsity and profile instead of adding a TDMPlugin)"
    )


@pytest.mark.parametrize(
    ("make_plugins", "named"),
    [
        (lambda: [DGMPlugin(0.2), DGMPlugin(0.5)], "DGMPlugin (plugins[0]) and DGMPlugin (plugins[1])"),
        (
            lambda: [TDMPlugin(0.5, **TDM_RULES_OFF), DGMPlugin(0.2), DGMPlugin(0.5)],
            "DGMPlugin (plugins[1]) and DGMPlugin (plugins[2])",
        ),
        (
            lambda: [SparCLPlugin(0.5, removal_ratio=0.0, **RULES_OFF), DGMPlugin(0.5)],
            "SparCLPlugin (plugins[0], its DGM part) and DGMPlugin (plugins[1])",
        ),
    ],
    ids=["two-dgm", "tdm-then-two-dgm", "sparcl-then-dgm"],
)
def test_two_owners_of_gradient_masks_are_refused_before_the_first_step(make_plugins, named):
    assert refusal_before_the_first_step(make_plugins()) == (
        f"{named} both own gradient masks in one strategy: their masks would intersect, or the last one "
        "handed to TDM would replace the others; use one of them (SparCLPlugin holds its own DGM: give it "
        "the gradient_sparsity instead of adding a DGMPlugin)"
    )


def test_one_owner_with_a_dense_sparcl_plugin_still_trains():
    """A SparCLPlugin with sparsity 0 has no TDM part: it owns no masks, so a TDMPlugin beside it is fine."""
    benchmark = make_tensor_benchmark(8, 4, 2, (8,))
    tdm = TDMPlugin(0.5, **TDM_RULES_OFF)
    strategy, _ = two_owner_strategy([SparCLPlugin(0.0, gradient_sparsity=0.0, removal_ratio=0.0), tdm])
    strategy.train(benchmark.train_stream[0])
    assert tdm.masks


# --- profiles never mask biases or normalisation parameters -------------------------------------------

PROFILE_CONFIG = """
benchmark: {name: split_digits}
model: {name: small_cnn}
training: {strategy: naive, epochs: 1}
sparcl: {sparsity: 0.5, profile: profile.yaml}
"""
NEVER_MASKED = (
    "profile names biases or normalisation parameters, which SparCL never masks: conv2.bias (Conv2d bias), "
    "bn2.weight (BatchNorm2d weight); a profile names convolution and Linear weights"
)


def test_a_profile_masking_a_bias_or_batchnorm_is_refused_before_any_run_folder(tmp_path, capsys):
    (tmp_path / "profile.yaml").write_text(
        "prune_ratios:\n  conv2.weight: 0.5\n  conv2.bias: 0.5\n  bn2.weight: 0.5\n  conv3.weight: 0.5\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(PROFILE_CONFIG)
    assert main(["run", str(config), "--smoke", "--quiet", "--out", str(tmp_path / "runs")]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (
        "",
        f"sparcl-bench: error: {config}: sparcl.profile does not fit model 'small_cnn': {NEVER_MASKED}\n",
    )
    assert not (tmp_path / "runs").exists()


def test_tdm_plugin_refuses_a_profile_masking_a_bias_or_batchnorm_at_its_first_use():
    model = SmallCNN(4, in_channels=1, width=4)
    profile = {"conv2.weight": 0.5, "conv2.bias": 0.5, "bn2.weight": 0.5}
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        train_mb_size=8,
        train_epochs=1,
        plugins=[TDMPlugin(0.5, profile=profile, **TDM_RULES_OFF)],
        evaluator=quiet_evaluator(),
    )
    benchmark = make_tensor_benchmark(8, 4, 2, (1, 8, 8))
    with pytest.raises(ValueError) as raised:
        strategy.train(benchmark.train_stream[0])
    assert str(raised.value) == NEVER_MASKED


# --- a small sparse file that declares huge weights ---------------------------------------------------


def declaring_huge_weight(path: Path, dense_state_dict_bytes: int | None = None) -> int:
    """A valid sparse file of a Linear(4, 3) whose masked weight is then declared 100,000 x 100,000
    with no entry kept (indices encoding: nothing stored); returns the dense size it records."""
    model = nn.Linear(4, 3)
    model.weight.detach().zero_()
    save_sparse(model, {"weight": torch.zeros(3, 4, dtype=torch.bool)}, path)
    contents = torch.load(io.BytesIO(read_payload(path)), weights_only=True)
    contents["layers"]["weight"].update(
        shape=[100_000, 100_000],
        numel=10**10,
        kept=0,
        sparsity=1.0,
        encoding="indices",
        values=torch.zeros(0),
        positions=torch.zeros(0, dtype=torch.int64),
        negative_zeros=None,
    )
    if dense_state_dict_bytes is not None:
        contents["dense_state_dict_bytes"] = dense_state_dict_bytes
    write_container(path, contents)
    assert path.stat().st_size < 4096  # a few KB
    return contents["dense_state_dict_bytes"]


@pytest.fixture
def no_decoding(monkeypatch):
    """Decoding a masked layer fails the test: the checks must come before any allocation."""

    def decode(layer):
        raise AssertionError(f"decoded a layer of {layer['numel']} entries before checking it")

    monkeypatch.setattr(sparse_format, "decode_layer", decode)


def test_a_sparse_file_declaring_more_than_its_dense_size_is_refused_before_decoding(tmp_path, no_decoding):
    path = tmp_path / "m.sparse"
    recorded = declaring_huge_weight(path)
    with pytest.raises(SparseFileError) as raised:
        read_sparse(path)
    assert str(raised.value) == (
        f"{path}: malformed sparse model file: its masked layers declare 40000000000 bytes when dense, more "
        f"than the dense model it records ({recorded} bytes)"
    )


def test_load_sparse_compares_the_declared_shapes_with_the_model_before_decoding(tmp_path, no_decoding):
    path = tmp_path / "m.sparse"
    declaring_huge_weight(path, dense_state_dict_bytes=10**12)
    model = nn.Linear(4, 3)
    before = model.weight.detach().clone()
    with pytest.raises(SparseFileError) as raised:
        load_sparse(path, model)
    assert str(raised.value) == (
        f"{path}: the model does not have the architecture saved in the file: 'weight' is float32 "
        "(100000, 100000) in the file but float32 (3, 4) in the model"
    )
    assert torch.equal(model.weight, before)
