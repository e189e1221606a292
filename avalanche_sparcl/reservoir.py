"""A reservoir replay buffer updated at every training step, as in the SparCL reference and mammoth.

Framework-free: ``add`` after each optimizer step with that step's current examples (and, for
DER++, the logits the model gave them), ``sample`` before each forward pass. Reservoir sampling
(Vitter's algorithm R) keeps every example of the stream seen so far in the buffer with the same
probability, so the current experience's examples are replayed while it trains, which the masked
head relies on: without them the current classes never compete with the old ones in any loss term.
"""

from __future__ import annotations

import torch
from torch import Tensor

from avalanche_sparcl.validation import check_positive_int

FIELDS = ("inputs", "labels", "task_labels", "logits")


class ReservoirBuffer:
    """At most ``capacity`` examples of the stream, each seen example kept with equal probability.

    Tensors live on the device of the data added; the random draws come from a CPU generator
    seeded with ``seed``, so the buffer's content does not depend on the device and never waits on it.
    Indexing a row returns ``(input, label, task_label[, logits])``, so it is also a map-style dataset.
    """

    def __init__(self, capacity: int, seed: int = 0):
        self.capacity = check_positive_int("mem_size", capacity)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.generator = torch.Generator().manual_seed(seed)
        self.seen = 0
        self.inputs: Tensor | None = None
        self.labels: Tensor | None = None
        self.task_labels: Tensor | None = None
        self.logits: Tensor | None = None

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        if not 0 <= index < len(self):
            raise IndexError(f"buffer index {index} out of range for {len(self)} examples")
        return tuple(stored[index] for stored in self.stored_fields())

    def stored_fields(self) -> list[Tensor]:
        """The storage tensors in FIELDS order, leaving out logits when none are kept."""
        return [stored for stored in (getattr(self, name) for name in FIELDS) if stored is not None]

    @torch.no_grad()
    def add(self, inputs: Tensor, labels: Tensor, task_labels: Tensor, logits: Tensor | None = None) -> None:
        """Offer each row to the buffer in order, as algorithm R does one stream example at a time."""
        rows = len(inputs)
        if rows == 0:
            return
        batch = {"inputs": inputs, "labels": labels, "task_labels": task_labels, "logits": logits}
        self._allocate_like(batch)
        slots = self.reservoir_slots(rows)
        self.seen += rows
        if not slots:
            return
        row_index = torch.tensor(list(slots.values()), dtype=torch.long)
        slot_index = torch.tensor(list(slots.keys()), dtype=torch.long)
        for name, values in batch.items():
            if values is not None:
                stored = getattr(self, name)
                stored[slot_index.to(stored.device)] = values.detach()[row_index.to(values.device)].to(
                    stored.device, stored.dtype
                )

    def reservoir_slots(self, rows: int) -> dict[int, int]:
        """Slot -> row of the next ``rows`` stream examples that enter the buffer (the last row offered
        to a slot wins, exactly as if the rows were offered one by one)."""
        positions = torch.arange(self.seen, self.seen + rows, dtype=torch.float64)
        draws = torch.floor(torch.rand(rows, generator=self.generator, dtype=torch.float64) * (positions + 1))
        slots = torch.where(positions < self.capacity, positions, draws).long().tolist()
        return {slot: row for row, slot in enumerate(slots) if slot < self.capacity}

    def sample(self, size: int) -> tuple[Tensor, ...]:
        """``min(size, len(self))`` distinct buffered examples, drawn uniformly: each field's rows."""
        count = min(size, len(self))
        chosen = torch.randperm(len(self), generator=self.generator)[:count]
        return tuple(stored[chosen.to(stored.device)] for stored in self.stored_fields())

    def _allocate_like(self, batch: dict[str, Tensor | None]) -> None:
        """Storage shaped like the first batch's rows; later batches must have the same row shapes."""
        for name, values in batch.items():
            stored = getattr(self, name)
            if values is None:
                if stored is not None:
                    raise ValueError(f"the buffer stores {name} but none were given")
                continue
            if stored is None:
                if self.seen > 0:
                    raise ValueError(f"{name} given now, but the buffer was filled without them")
                shape = (self.capacity, *values.shape[1:])
                setattr(self, name, torch.zeros(shape, dtype=values.dtype, device=values.device))
            elif stored.shape[1:] != values.shape[1:]:
                raise ValueError(
                    f"buffered {name} have shape {tuple(stored.shape[1:])} per example, "
                    f"got {tuple(values.shape[1:])}"
                )
