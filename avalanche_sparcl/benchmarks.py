"""Benchmark builders. Split Digits is embedded: scikit-learn ships its 1,797 real 8x8 images."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.classic import SplitCIFAR10, SplitCIFAR100, SplitTinyImageNet
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

DIGITS_TEST_FRACTION = 0.25


def split_digits(
    n_experiences: int = 5,
    seed: int = 0,
    return_task_id: bool = False,
    fixed_class_order: list[int] | None = None,
):
    """Split Digits: the 10 digit classes split into ``n_experiences`` experiences.

    Images are 1x8x8 floats in [0, 1]; a stratified 75/25 train/test split that does not depend on
    ``seed`` (the seed only orders the classes, as in Avalanche's Split MNIST). With
    ``return_task_id`` each experience gets its own task label (Task-IL).
    """
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=0
    )
    return tensor_benchmark(
        (train_x, train_y), (test_x, test_y), n_experiences, seed, return_task_id, fixed_class_order
    )


def tensor_benchmark(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    n_experiences: int,
    seed: int = 0,
    return_task_id: bool = False,
    fixed_class_order: list[int] | None = None,
):
    """A class-incremental benchmark from (inputs, labels) tensors, through Avalanche's nc_benchmark."""
    return nc_benchmark(
        _make_taskaware_tensor_classification_dataset(*train),
        _make_taskaware_tensor_classification_dataset(*test),
        n_experiences,
        task_labels=return_task_id,
        seed=seed,
        fixed_class_order=fixed_class_order,
        class_ids_from_zero_in_each_exp=False,
    )


class DatasetNotFoundError(FileNotFoundError):
    """The data of a benchmark is not under its ``dataset_root``.

    Raised before Avalanche is called: offline, Avalanche's classic benchmarks would try to download
    and fail with an unhelpful ``URLError``.
    """


DATASET_FILES: dict[str, tuple[str, ...]] = {
    "split_cifar10": tuple(
        f"cifar-10-batches-py/{name}"
        for name in ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
    ),
    "split_cifar100": ("cifar-100-python/meta", "cifar-100-python/train", "cifar-100-python/test"),
    "split_tinyimagenet": (
        "tiny-imagenet-200/wnids.txt",
        "tiny-imagenet-200/train/",
        "tiny-imagenet-200/val/images/",
        "tiny-imagenet-200/val/val_annotations.txt",
    ),
}
"""Benchmark -> paths expected under ``dataset_root`` (a trailing '/' marks a folder), as the
torchvision / Avalanche loaders read them after their own download step."""


def is_present(path: Path, folder: bool) -> bool:
    return path.is_dir() if folder else path.is_file()


def check_dataset_files(benchmark: str, dataset_root: str | Path) -> Path:
    """Return ``dataset_root`` as a Path if every expected file of ``benchmark`` is there.

    Raises DatasetNotFoundError naming the root and the missing files otherwise.
    """
    root = Path(os.path.expandvars(str(dataset_root))).expanduser()
    expected = DATASET_FILES[benchmark]
    missing = [name for name in expected if not is_present(root / name, folder=name.endswith("/"))]
    if missing:
        raise DatasetNotFoundError(
            f"{benchmark}: data not found under dataset_root {str(root)!r} ({root.resolve()}); "
            f"missing {len(missing)} of the expected paths: {', '.join(missing)}. "
            "Put the extracted dataset there (see experiments/README.md) or change benchmark.dataset_root."
        )
    return root


CLASSIC_BENCHMARKS = {
    "split_cifar10": (SplitCIFAR10, 10),
    "split_cifar100": (SplitCIFAR100, 100),
    "split_tinyimagenet": (SplitTinyImageNet, 200),
}


def classic_benchmark(
    name: str, dataset_root: str | Path, n_experiences: int, seed: int = 0, return_task_id: bool = False
):
    """One of Avalanche's classic benchmarks from a local copy, its data checked first.

    Classes come in their natural order (0-1, 2-3, ...), as in the DER / SparCL protocol; training
    uses Avalanche's default augmentation (random crop, flip).
    """
    root = check_dataset_files(name, dataset_root)
    benchmark_class, n_classes = CLASSIC_BENCHMARKS[name]
    return benchmark_class(
        n_experiences,
        return_task_id=return_task_id,
        seed=seed,
        fixed_class_order=list(range(n_classes)),
        dataset_root=root,
    )


def split_cifar10(
    dataset_root: str | Path, n_experiences: int = 5, seed: int = 0, return_task_id: bool = False
):
    """Split CIFAR-10 (32x32, 10 classes) from a local copy; see :func:`classic_benchmark`."""
    return classic_benchmark("split_cifar10", dataset_root, n_experiences, seed, return_task_id)


def split_cifar100(
    dataset_root: str | Path, n_experiences: int = 10, seed: int = 0, return_task_id: bool = False
):
    """Split CIFAR-100 (32x32, 100 classes) from a local copy; see :func:`classic_benchmark`."""
    return classic_benchmark("split_cifar100", dataset_root, n_experiences, seed, return_task_id)


def split_tinyimagenet(
    dataset_root: str | Path, n_experiences: int = 10, seed: int = 0, return_task_id: bool = False
):
    """Split Tiny-ImageNet (64x64, 200 classes) from a local copy; see :func:`classic_benchmark`."""
    return classic_benchmark("split_tinyimagenet", dataset_root, n_experiences, seed, return_task_id)
