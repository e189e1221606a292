"""How to run, as opposed to what to run (the config): the run options and what ``--smoke`` shrinks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunOptions:
    """How to run, as opposed to what to run (the config)."""

    out_dir: Path
    device: str = "cpu"
    quiet: bool = False
    smoke: bool = False
    restart: bool = False


SMOKE_WIDTH = 2
"""``--smoke``: model width (ResNet-18's nf); the layer structure and parameter names stay."""
SMOKE_EPOCHS = 3
"""``--smoke``: at most this many epochs per experience (so the epoch-based schedules still move: DDR
needs 3, a two-epoch window before its first removal)."""
SMOKE_EXPERIENCES = 2
"""``--smoke``: train on the first experiences only (each followed by an evaluation on the whole test
stream), which still crosses an experience boundary: buffer, masks and schedules carry over."""
SMOKE_BATCH_SIZE = 8
"""``--smoke``: at most this many current (and as many buffer) examples per minibatch."""
SMOKE_TRAIN_PER_EXPERIENCE = 16
"""``--smoke``: random training examples per experience (at least two per class: DDR never removes
the last example of a class, so with one per class it would have nothing to remove)."""
SMOKE_TEST_PER_EXPERIENCE = 10
"""``--smoke``: random test examples per experience (at least one per class)."""
