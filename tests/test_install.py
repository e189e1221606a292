"""Installing into a user's environment: tested dependency ranges, the README's Install section, and
the run that ``make test-compat-torch`` makes under another torch release.

The last two tests run only where ``SPARCL_COMPAT_TORCH`` names the torch version installed (the
Makefile target sets it, and runs this file with ``--noconftest``: conftest.py imports Avalanche, which
imports torchvision, and the torchvision wheel that matches the torch release may need the workaround in
:func:`import_torchvision` first).
"""

from __future__ import annotations

import configparser
import importlib
import os
import re
import warnings
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
COMPAT_TORCH = os.environ.get("SPARCL_COMPAT_TORCH")
TESTED = {
    "torch": ("2.13.0", "2.14.1"),
    "torchvision": ("0.28.0", "0.29.1"),
    "avalanche-lib": ("0.6.0",),
}
"""The releases each dependency range must admit (torch 2.13 and 2.14, their torchvision, Avalanche 0.6)."""


def install_requires() -> dict[str, Requirement]:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in setup["options"]["install_requires"].splitlines() if line.strip()]
    return {Requirement(line).name: Requirement(line) for line in lines}


@pytest.mark.parametrize("name", list(TESTED))
def test_dependencies_are_ranges_that_hold_the_tested_releases(name):
    requirement = install_requires()[name]
    assert all(spec.operator != "==" for spec in requirement.specifier), f"{requirement} pins one release"
    for version in TESTED[name]:
        assert requirement.specifier.contains(version), f"{requirement} excludes {version}"
    upper = Version(TESTED[name][-1])
    next_minor = f"{upper.major}.{upper.minor + 1}.0"
    assert not requirement.specifier.contains(next_minor), f"{requirement} admits untested {next_minor}"


def test_readme_install_section_works_from_a_clone():
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Install\n(.*?)(?=^## )", readme, flags=re.S | re.M)
    assert section, "README.md has an '## Install' section"
    for command in ("pip install .", 'pip install ".[export]"', "make test-compat-torch"):
        assert command in section.group(1)
    assert len(readme.splitlines()) < 300


def test_no_registry_install_hint_in_the_docs():
    """The package is not on a registry: ``pip install avalanche-sparcl[export]`` cannot work."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
    assert [page.name for page in pages if "install avalanche-sparcl" in page.read_text()] == []


compat_only = pytest.mark.skipif(
    COMPAT_TORCH is None, reason="make test-compat-torch sets SPARCL_COMPAT_TORCH"
)


def assert_sparse(masks: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], sparsity: float):
    assert masks, "no masks"
    for name, mask in masks.items():
        kept = int(mask.sum())
        assert abs(kept - round((1 - sparsity) * mask.numel())) <= 1, f"{name}: {kept} of {mask.numel()} kept"
        assert int((weights[name].detach()[~mask.bool()] != 0).sum()) == 0, f"{name}: pruned weights non-zero"
        print(f"{name}: kept {kept} of {mask.numel()}")


@compat_only
def test_compat_torch_is_the_one_installed():
    assert torch.__version__.split("+")[0] == COMPAT_TORCH


@compat_only
def test_compat_core_trains_sparse_on_digits_without_avalanche():
    """The torch-only core (avalanche_sparcl.sparse), 3 epochs on scikit-learn's digits."""
    from sklearn.datasets import load_digits
    from torch import nn

    from avalanche_sparcl.models import SmallCNN
    from avalanche_sparcl.sparse import SparseTraining

    torch.manual_seed(0)
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    model = SmallCNN(width=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparse = SparseTraining.for_model(
        model, optimizer, example_input=images[:2], sparsity=0.75, gradient_sparsity=0.2
    )
    n_epochs, criterion = 3, nn.CrossEntropyLoss()
    for classes in labels.unique().split(2):
        chosen = torch.isin(labels, classes)
        loader = list(zip(images[chosen].split(32), labels[chosen].split(32), strict=True))
        sparse.start_experience(n_epochs, len(loader))
        for epoch in range(n_epochs):
            for iteration, (x, y) in enumerate(loader):
                sparse.before_iteration(epoch, iteration, len(loader))
                loss = criterion(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                sparse.after_backward()
                optimizer.step()
        sparse.finish_experience()
    sparse.close()
    assert_sparse(sparse.masks, dict(model.named_parameters()), 0.75)


def import_torchvision() -> str:
    """Import torchvision; how it went, on one line.

    PyPI's torchvision 0.28.0 is a CUDA build: beside torch 2.13.0+cpu its C extension does not load,
    and its import then fails registering fake kernels of two ops the extension would have defined
    (``torchvision::nms``, ``qnms``). Avalanche needs only torchvision's Python parts (transforms,
    dataset classes), so on that failure the two schemas are defined here and the import retried; the
    C ops (detection's NMS, RoI pooling) stay absent, and Split Digits uses none of them.
    """
    import sys

    try:
        importlib.import_module("torchvision")
        return "torchvision imported"
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
        for name in [name for name in sys.modules if name.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        importlib.import_module("torchvision")
        globals()["TORCHVISION_SCHEMAS"] = library
        return f"torchvision imported without its C extension, after {error}"


@compat_only
def test_compat_split_digits_sparcl_der_trains_sparse():
    """SparCL-DER++ (SparCLPlugin 0.75 / 0.3 / 0.2) on Split Digits, 3 epochs per experience."""
    print(import_torchvision())
    from avalanche.training import DER
    from avalanche.training.plugins import EvaluationPlugin

    from avalanche_sparcl import SparCLPlugin
    from avalanche_sparcl.benchmarks import split_digits
    from avalanche_sparcl.models import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(width=8)
    plugin = SparCLPlugin(0.75, 0.3, 0.2)
    strategy = DER(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        mem_size=100,
        batch_size_mem=32,
        train_mb_size=32,
        train_epochs=3,
        plugins=[plugin],
        evaluator=EvaluationPlugin(loggers=[]),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for experience in split_digits(n_experiences=5, seed=0).train_stream:
            strategy.train(experience)
    assert_sparse(plugin.masks, dict(model.named_parameters()), 0.75)
