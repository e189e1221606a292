"""Benchmark builders. Split Digits is embedded: scikit-learn ships its 1,797 real 8x8 images."""

from __future__ import annotations

import torch
from avalanche.benchmarks import nc_benchmark
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
    return nc_benchmark(
        _make_taskaware_tensor_classification_dataset(train_x, train_y),
        _make_taskaware_tensor_classification_dataset(test_x, test_y),
        n_experiences,
        task_labels=return_task_id,
        seed=seed,
        fixed_class_order=fixed_class_order,
        class_ids_from_zero_in_each_exp=False,
    )
