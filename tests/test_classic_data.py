"""CIFAR and Tiny-ImageNet from a local copy: damaged files are named, nothing is ever downloaded, and
the benchmark is the one Avalanche's SplitCIFAR10 builds from the same files."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from avalanche.benchmarks.classic import SplitCIFAR10
from torchvision.datasets import CIFAR10, cifar

from avalanche_sparcl.benchmarks import (
    DatasetFormatError,
    check_dataset_files,
    split_cifar10,
    split_tinyimagenet,
)
from avalanche_sparcl.experiments.cli import main

N_PER_CLASS = 2  # in each of the 5 training batches and in the test batch


def cifar_batch(rng: np.random.Generator) -> dict:
    labels = [label for label in range(10) for _ in range(N_PER_CLASS)]
    return {"data": rng.integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8), "labels": labels}


@pytest.fixture
def tiny_cifar10(tmp_path, monkeypatch) -> Path:
    """A CIFAR-10 copy of 20 images a batch, with torchvision's MD5s set to its files' own."""
    folder = tmp_path / "data" / CIFAR10.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    contents = {name: pickle.dumps(cifar_batch(rng)) for name, _ in CIFAR10.train_list + CIFAR10.test_list}
    contents[CIFAR10.meta["filename"]] = pickle.dumps({"label_names": [f"class{i}" for i in range(10)]})
    for name, data in contents.items():
        (folder / name).write_bytes(data)

    def md5(name: str) -> str:
        return hashlib.md5(contents[name]).hexdigest()

    monkeypatch.setattr(CIFAR10, "train_list", [[name, md5(name)] for name, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[name, md5(name)] for name, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5(CIFAR10.meta["filename"])})
    return tmp_path / "data"


@pytest.fixture
def no_download(monkeypatch) -> list:
    """Any download torchvision starts is recorded and fails (offline, it would fail anyway)."""
    attempts: list = []

    def download(*args, **kwargs):
        attempts.append(args)
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(cifar, "download_and_extract_archive", download)
    return attempts


def test_split_cifar10_from_a_local_copy_is_avalanches_benchmark(tiny_cifar10, no_download):
    ours = split_cifar10(tiny_cifar10, n_experiences=5, seed=0)
    reference = SplitCIFAR10(5, seed=0, fixed_class_order=list(range(10)), dataset_root=tiny_cifar10)
    assert no_download == []
    assert [sorted(e.classes_in_this_experience) for e in ours.train_stream] == [
        [0, 1],
        [2, 3],
        [4, 5],
        [6, 7],
        [8, 9],
    ]
    for stream, size in (("train_stream", 5 * 2 * N_PER_CLASS), ("test_stream", 2 * N_PER_CLASS)):
        mine, theirs = getattr(ours, stream), getattr(reference, stream)
        assert [len(e.dataset) for e in mine] == [len(e.dataset) for e in theirs] == [size] * 5
    # the eval transform is Avalanche's: the same normalised tensors
    x, y, _ = ours.test_stream[1].dataset[3]
    x_ref, y_ref, _ = reference.test_stream[1].dataset[3]
    assert y == y_ref and torch.equal(x, x_ref) and x.shape == (3, 32, 32)
    # and the train transform too: the same random crop and flip under the same seed
    torch.manual_seed(5)
    x, _, _ = ours.train_stream[0].dataset[0]
    torch.manual_seed(5)
    x_ref, _, _ = reference.train_stream[0].dataset[0]
    assert torch.equal(x, x_ref)


def test_a_corrupt_cifar_file_is_named_and_nothing_is_downloaded(tiny_cifar10, no_download):
    damaged = tiny_cifar10 / CIFAR10.base_folder / "data_batch_3"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    md5 = CIFAR10.train_list[2][1]
    message = (
        f"{damaged}: not the original CIFAR10 file (its MD5 is not {md5}): corrupt, truncated or from "
        "another version; extract it again from the original archive"
    )
    for read in (split_cifar10, lambda root: check_dataset_files("split_cifar10", root)):
        with pytest.raises(DatasetFormatError) as raised:
            read(tiny_cifar10)
        assert str(raised.value) == message
    assert no_download == []


def test_the_real_cifar_checksums_refuse_a_copy_of_garbage(tmp_path, no_download):
    folder = tmp_path / CIFAR10.base_folder
    folder.mkdir()
    for name, _ in CIFAR10.train_list + CIFAR10.test_list + [(CIFAR10.meta["filename"], "")]:
        (folder / name).write_bytes(b"garbage")
    with pytest.raises(DatasetFormatError) as raised:
        split_cifar10(tmp_path)
    assert str(raised.value) == (
        f"{folder / 'data_batch_1'}: not the original CIFAR10 file (its MD5 is not "
        "c99cafc152244af753f735de768cd75f): corrupt, truncated or from another version; extract it again "
        "from the original archive"
    )
    assert no_download == []


CIFAR_CONFIG = """
benchmark: {name: split_cifar10, dataset_root: %s}
model: {name: resnet18}
training: {strategy: er, buffer_size: 50, epochs: 1}
"""


def test_cli_on_a_corrupt_cifar_copy_exits_2_before_making_the_run_folder(
    tiny_cifar10, no_download, tmp_path, capsys
):
    damaged = tiny_cifar10 / CIFAR10.base_folder / "test_batch"
    damaged.write_bytes(b"\0" + damaged.read_bytes()[1:])
    config = tmp_path / "cifar.yaml"
    config.write_text(CIFAR_CONFIG % tiny_cifar10)
    assert main(["run", str(config), "--quiet", "--out", str(tmp_path / "runs")]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (
        "",
        f"sparcl-bench: error: {config}: {damaged}: not the original CIFAR10 file (its MD5 is not "
        f"{CIFAR10.test_list[0][1]}): corrupt, truncated or from another version; extract it again from "
        "the original archive\n",
    )
    assert not (tmp_path / "runs").exists() and no_download == []


def tiny_imagenet(root: Path, wnids: list[str], without_train: str = "", without_val: str = "") -> Path:
    """Tiny-ImageNet's layout, one (empty) image per class and split, less the classes named."""
    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("".join(f"{wnid}\n" for wnid in wnids))
    annotations = []
    for index, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        if wnid != without_train:
            (images / f"{wnid}_0.JPEG").write_bytes(b"")
        if wnid != without_val:
            annotations.append(f"val_{index}.JPEG\t{wnid}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(annotations))
    return folder


WNIDS = [f"n{index:08d}" for index in range(200)]


@pytest.mark.parametrize("missing", ["train", "val", "classes"])
def test_tinyimagenet_without_every_class_in_train_and_validation_is_named(tmp_path, missing):
    if missing == "train":
        folder = tiny_imagenet(tmp_path, WNIDS, without_train=WNIDS[7])
        images = folder / "train" / WNIDS[7] / "images"
        expected = f"{images}: no training image of class {WNIDS[7]} (missing or empty folder)"
    elif missing == "val":
        folder = tiny_imagenet(tmp_path, WNIDS, without_val=WNIDS[199])
        expected = f"{folder}/val/val_annotations.txt: no validation image of class {WNIDS[199]}"
    else:
        folder = tiny_imagenet(tmp_path, WNIDS[:150])
        expected = f"{folder}/wnids.txt: names 150 classes, Tiny-ImageNet has 200"
    with pytest.raises(DatasetFormatError) as raised:
        split_tinyimagenet(tmp_path)
    assert str(raised.value) == expected
