"""Where DDR's example positions travel: a data attribute while the loaders are built, a collate that
gives replay rows position -1, a loader wrapper that takes them off each minibatch before the strategy
sees it, and the in-place cut of Avalanche's multi-dataset loader to the kept examples."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from avalanche.benchmarks.utils.data_attribute import DataAttribute
from avalanche.benchmarks.utils.data_loader import MultiDatasetDataLoader, _make_data_loader
from torch import Tensor

POSITION_ATTRIBUTE = "ddr_position"
"""Data attribute holding each training example's position in its experience's dataset."""

NOT_FROM_EXPERIENCE = -1
"""Position given to minibatch rows that come from a replay buffer."""


class MinibatchPositions:
    """The train loader, with DDR's position field taken off each minibatch before the strategy sees
    it (kept in ``plugin.minibatch_positions``): every plugin reads Avalanche's own minibatch."""

    def __init__(self, loader: Any, plugin: Any):
        self.loader = loader
        self.plugin = plugin

    def __iter__(self) -> Iterator[Any]:
        for minibatch in self.loader:
            minibatch, self.plugin.minibatch_positions = split_positions(minibatch)
            yield minibatch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name in ("loader", "plugin"):
            raise AttributeError(name)
        return getattr(self.loader, name)


def split_positions(minibatch: Any) -> tuple[Any, Tensor | None]:
    """The minibatch without DDR's position field, and the positions (None if it has none)."""
    if isinstance(minibatch, dict):
        positions = minibatch.pop(POSITION_ATTRIBUTE, None)
        return minibatch, positions
    fields = list(minibatch)
    return fields[:-1], fields[-1]


class PositionCollate:
    """Collates training minibatches; samples without the position field (replay) get position -1."""

    def __init__(self, base_collate: Any):
        self.base_collate = base_collate

    def __call__(self, samples: list[Any]) -> Any:
        if isinstance(samples[0], dict):
            samples = [{POSITION_ATTRIBUTE: NOT_FROM_EXPERIENCE, **sample} for sample in samples]
            return self.base_collate(samples)
        width = max(len(sample) for sample in samples)
        if any(len(sample) != width for sample in samples):
            samples = [
                [*sample, NOT_FROM_EXPERIENCE] if len(sample) == width - 1 else sample for sample in samples
            ]
        return self.base_collate(samples)


def with_positions(dataset: Any) -> Any:
    """``dataset`` with each example's position appended to its fields (kept by ``subset``)."""
    positions = DataAttribute(range(len(dataset)), POSITION_ATTRIBUTE, use_in_getitem=True)
    tagged = dataset.update_data_attribute(POSITION_ATTRIBUTE, positions)
    if not isinstance(tagged.collate_fn, PositionCollate):
        tagged.collate_fn = PositionCollate(tagged.collate_fn)
    return tagged


def carries_positions(dataset: Any) -> bool:
    """Whether ``dataset`` holds examples of the experience being trained, tagged by DDR."""
    return isinstance(getattr(dataset, POSITION_ATTRIBUTE, None), DataAttribute)


def keep_only_positions(loader: MultiDatasetDataLoader, kept_positions: Tensor) -> None:
    """Cut each of the loader's tagged datasets to the kept examples, leaving the others (replay
    memory) as they are, and recompute the epoch length as ``MultiDatasetDataLoader`` does: from the
    longest of the experience's datasets (the termination dataset ReplayDataLoader picks)."""
    experience_parts: list[int] = []
    datasets, batch_sizes = [], []
    for dataset, batch_size in zip(loader.datasets, loader.batch_sizes, strict=True):
        if carries_positions(dataset):
            positions = torch.as_tensor(list(getattr(dataset, POSITION_ATTRIBUTE)))
            rows = torch.isin(positions, kept_positions).nonzero().flatten().tolist()
            if not rows:
                continue  # a task all of whose examples are removed: an empty sampler cannot be built
            dataset = dataset.subset(rows)
            experience_parts.append(len(datasets))
        datasets.append(dataset)
        batch_sizes.append(batch_size)
    loader.datasets, loader.batch_sizes = datasets, batch_sizes
    loader._persistent_loader = None  # its workers iterate the old datasets
    if loader.never_ending:
        return
    iterations = [
        len(
            _make_data_loader(
                datasets[part],
                loader.distributed_sampling,
                loader.loader_kwargs,
                batch_sizes[part],
                force_no_workers=True,
            )[0]
        )
        for part in experience_parts
    ]
    longest = max(range(len(iterations)), key=iterations.__getitem__)
    loader.termination_dataset = experience_parts[longest]
    loader.n_iterations = iterations[longest]
