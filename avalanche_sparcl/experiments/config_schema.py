"""The experiment config's schema: its sections, their keys, what each accepts and its default.

The ``sparcl`` section is generated from ``avalanche_sparcl.settings``, where every SparCL option is
declared once; the other sections are the run's own (benchmark, model, training, baseline).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from avalanche_sparcl.settings import OPTIONS
from avalanche_sparcl.validation import is_integer, is_real


@dataclass(frozen=True)
class BenchmarkShape:
    """What a benchmark looks like: enough to build random tensors of the same shape (``--smoke``)."""

    n_classes: int
    input_shape: tuple[int, int, int]
    default_experiences: int
    dataset_root: Literal["required", "optional", "refused"]
    """``benchmark.dataset_root``: required (no default copy of the data), optional (read from a
    default location without it) or refused (the data is embedded)."""


BENCHMARK_SHAPES: dict[str, BenchmarkShape] = {
    "split_digits": BenchmarkShape(10, (1, 8, 8), 5, dataset_root="refused"),
    "split_fmnist": BenchmarkShape(10, (1, 28, 28), 5, dataset_root="optional"),
    "split_cifar10": BenchmarkShape(10, (3, 32, 32), 5, dataset_root="required"),
    "split_cifar100": BenchmarkShape(100, (3, 32, 32), 10, dataset_root="required"),
    "split_tinyimagenet": BenchmarkShape(200, (3, 64, 64), 10, dataset_root="required"),
}
MODEL_WIDTHS = {"resnet18": 64, "small_cnn": 32}
"""Model name -> default width (ResNet-18's ``nf``, SmallCNN's first-layer channels)."""
STRATEGIES = ("naive", "er", "der", "er_ace")
REPLAY_STRATEGIES = ("er", "der", "er_ace")
BASELINE_METHODS = ("static", "set", "rigl")
"""Sparse-training baselines (paper Sec. 5.3): TDM's mask core with their prune / regrow rules."""
BUFFER_KINDS = ("stock", "reservoir")
"""Replay buffer: the strategy's own (Avalanche fills it when an experience ends; ER_ACE when it
starts) or a reservoir updated with every minibatch at every step (the reference's and mammoth's)."""

REQUIRED = object()


@dataclass(frozen=True)
class Key:
    """One config key: what it accepts (said in error messages), its check and its default."""

    accepted: str
    check: Callable[[Any], bool]
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()


def choice_key(choices: tuple[str, ...], default: Any = REQUIRED) -> Key:
    """A key that takes one of ``choices`` (a wrong value gets the closest choice suggested)."""
    return Key(choices_text(choices), one_of(choices), default, choices)


def _is_int(value: Any) -> bool:
    return is_integer(value)


def _is_number(value: Any) -> bool:
    return is_real(value) and not math.isnan(value)


def positive_int(value: Any) -> bool:
    return _is_int(value) and value >= 1


def non_negative_number(value: Any) -> bool:
    return _is_number(value) and 0 <= value < math.inf


def positive_number(value: Any) -> bool:
    return _is_number(value) and 0 < value < math.inf


def fraction(value: Any) -> bool:
    return _is_number(value) and 0 <= value < 1


FOLDER_NAME = re.compile(r"[A-Za-z0-9._-]+")


def is_folder_name(value: Any) -> bool:
    """Whether ``value`` names exactly one folder below ``--out`` on every file system: no separator,
    not '.' or '..' (a run must never write outside ``--out``)."""
    return isinstance(value, str) and FOLDER_NAME.fullmatch(value) is not None and value not in (".", "..")


def is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def is_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def one_of(choices: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str) and value in choices


def choices_text(choices: tuple[str, ...] | list[str]) -> str:
    return "one of " + ", ".join(choices)


TOP_LEVEL = {
    "name": Key(
        "a plain folder name: letters, digits, '.', '_' and '-', not '.' or '..' (defaults to the file name)",
        is_folder_name,
        None,
    ),
    "description": Key("a string", lambda v: isinstance(v, str), ""),
    "benchmark": Key("a mapping", lambda v: isinstance(v, Mapping)),
    "model": Key("a mapping", lambda v: isinstance(v, Mapping)),
    "training": Key("a mapping", lambda v: isinstance(v, Mapping)),
    "sparcl": Key("a mapping", lambda v: isinstance(v, Mapping), None),
    "baseline": Key("a mapping", lambda v: isinstance(v, Mapping), None),
}
BENCHMARK_KEYS = {
    "name": choice_key(tuple(BENCHMARK_SHAPES)),
    "n_experiences": Key("an integer >= 1 that divides the number of classes", positive_int, None),
    "task_labels": Key("true or false", is_bool, False),
    "dataset_root": Key("a folder path (string)", is_text, None),
    "train_per_class": Key(
        "an integer >= 1 (split_fmnist only: the first N training images of each class)", positive_int, None
    ),
}
MODEL_KEYS = {
    "name": choice_key(tuple(MODEL_WIDTHS)),
    "width": Key("an integer >= 1", positive_int, None),
}
TRAINING_KEYS = {
    "strategy": choice_key(STRATEGIES),
    "epochs": Key("an integer >= 1 (epochs per experience)", positive_int, 50),
    "batch_size": Key("an integer >= 1", positive_int, 32),
    "lr": Key("a number > 0", positive_number, 0.03),
    "buffer_size": Key("an integer >= 1 (replay strategies only)", positive_int, None),
    "buffer": choice_key(BUFFER_KINDS, "stock"),
    "alpha": Key("a number >= 0 (der only)", non_negative_number, None),
    "beta": Key("a number >= 0 (der only)", non_negative_number, None),
    "eval_batch_size": Key("an integer >= 1", positive_int, 256),
}
SPARCL_DEFAULTS = ("sparsity", "removal_ratio", "gradient_sparsity", "masked_head")
"""The options a config's ``sparcl`` section fills with their defaults; the others are left to the
plugins' own defaults (and recorded as null)."""
SPARCL_KEYS = {
    name: Key(
        option.accepted(),
        option.range.accepts,
        option.default if name in SPARCL_DEFAULTS else None,
        option.range.choices,
    )
    for name, option in OPTIONS.items()
    if name != "seed"  # a run's seed is the run's, given on the command line
}
BASELINE_KEYS = {
    "method": choice_key(BASELINE_METHODS),
    "sparsity": Key("a number in (0, 1)", lambda v: fraction(v) and v > 0),
    "profile": Key("a path to a YAML sparsity profile", is_text, None),
}
SECTIONS = {
    "benchmark": BENCHMARK_KEYS,
    "model": MODEL_KEYS,
    "training": TRAINING_KEYS,
    "sparcl": SPARCL_KEYS,
    "baseline": BASELINE_KEYS,
}
PATH_KEYS = {("sparcl", "profile"), ("baseline", "profile")}
"""Keys holding paths, resolved against the folder of the file that sets them. They are read, never
written; the only config value that names something written is ``name``, a plain folder name."""
EMPTY_SECTION_HINTS = {
    "sparcl": "write 'sparcl: {}' for the default SparCL settings, or leave the section out for a dense run",
    "baseline": "give its method and sparsity, or leave the section out for a dense run",
}
"""Optional sections given with nothing under them are refused. YAML reads ``sparcl:`` as null (no
section: a dense run) and ``sparcl: {}`` as SparCL with its defaults; the two are one blank apart and
an unfinished edit looks like the first, so rather than guess, the error spells out both."""
