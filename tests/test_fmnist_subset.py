"""benchmark.train_per_class: Split Fashion-MNIST on the first N training images of each class."""

from __future__ import annotations

import pytest
import torch

from avalanche_sparcl import benchmarks
from avalanche_sparcl.experiments.build import build_benchmark
from avalanche_sparcl.experiments.config import ConfigError, load_config

CONFIG = """
benchmark: {name: %s, train_per_class: 3}
model: {name: small_cnn, width: 4}
training: {strategy: er, epochs: 1, buffer_size: 10}
"""


def fake_fmnist(dataset_root=None):
    """7 training images per class, labels interleaved; each image holds its own index."""
    labels = torch.arange(70) % 10
    images = torch.arange(70, dtype=torch.float32).view(70, 1, 1, 1).expand(70, 1, 28, 28).clone()
    return (images, labels), (images[:20].clone(), labels[:20].clone())


def test_train_per_class_keeps_the_first_images_of_each_class(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmarks, "load_fmnist", fake_fmnist)
    path = tmp_path / "subset.yaml"
    path.write_text(CONFIG % "split_fmnist")
    benchmark = build_benchmark(load_config(path), seed=0, smoke=False)
    indices = []
    for experience in benchmark.train_stream:
        images = torch.stack([x for x, *_ in experience.dataset])
        indices += images[:, 0, 0, 0].long().tolist()
    assert len(benchmark.train_stream) == 5
    assert sorted(indices) == list(range(30))  # images 0-29: the first three of each class
    assert sum(len(experience.dataset) for experience in benchmark.test_stream) == 20


def test_train_per_class_is_refused_for_other_benchmarks(tmp_path):
    path = tmp_path / "subset.yaml"
    path.write_text(CONFIG % "split_digits")
    with pytest.raises(ConfigError, match="train_per_class is accepted for split_fmnist only"):
        build_benchmark(load_config(path), seed=0, smoke=False)
