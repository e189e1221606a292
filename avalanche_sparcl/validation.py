"""Argument checks shared by the plugins: every rejection names the argument and its accepted range.

Numbers are any ``numbers.Real`` (NumPy scalars included) and integers any ``numbers.Integral``, but
never a bool: ``removal_ratio=False`` is a typo far more often than a ratio of 0. Checked values come
back as plain Python ``float`` / ``int``, so settings, checkpoints and results hold no NumPy types.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Iterable
from typing import Any

import yaml

MAX_SEED = 2**32 - 1
"""NumPy's limit: seeds must lie in [0, 2**32 - 1]."""


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number (NumPy scalars included) and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    """Whether ``value`` is an integer (NumPy integers included) and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_fraction(
    name: str,
    value: float,
    *,
    low: float = 0.0,
    high: float = 1.0,
    include_low: bool = True,
    include_high: bool = False,
) -> float:
    """Return ``value`` as a float if it lies in the stated interval, else raise ValueError."""
    interval = f"{'[' if include_low else '('}{low:g}, {high:g}{']' if include_high else ')'}"
    if not is_real(value):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float's range lies outside every interval
        raise ValueError(f"{name} must be in {interval}, got {value!r}") from None
    above_low = number >= low if include_low else number > low
    below_high = number <= high if include_high else number < high
    if math.isnan(number) or not (above_low and below_high):
        raise ValueError(f"{name} must be in {interval}, got {number!r}")
    return number


def check_non_negative(name: str, value: float) -> float:
    """Return ``value`` as a float if it is a finite number >= 0, else raise ValueError."""
    if not is_real(value) or not value >= 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_positive_int(name: str, value: int) -> int:
    """Return ``value`` as an int if it is an integer >= 1, else raise ValueError."""
    if not is_integer(value) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_non_negative_int(name: str, value: int) -> int:
    """Return ``value`` as an int if it is an integer >= 0, else raise ValueError."""
    if not is_integer(value) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def check_seed(name: str, value: int) -> int:
    """Return ``value`` as an int if every generator accepts it as a seed (NumPy's [0, MAX_SEED])."""
    if not is_integer(value) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be an integer in [0, {MAX_SEED}], got {value!r}")
    return int(value)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ValueError listing them."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


MAX_YAML_DEPTH = 64
"""Deepest nesting of sequences and mappings a YAML file may have (a config needs 3)."""
MAX_YAML_NUMBER_LENGTH = 100
"""Longest number (in characters) a YAML file may give: longer ones would only cost time to convert."""
YAML12_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
"""YAML 1.2 floats with an exponent and no dot (``1e-3``), which YAML 1.1 reads as strings."""


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader for files a user or a stranger wrote: only plain, bounded data.

    - A key given twice in one mapping, at any depth, is refused: PyYAML silently keeps the last of
      two equal keys, so a setting repeated lower down a file would override the first one unseen
      (the YAML spec requires keys to be unique anyway).
    - Aliases (``*name``) are refused: a few hundred bytes of nested aliases expand to billions of
      values, which every later step (merging, checking, printing) would walk.
    - Nesting deeper than ``MAX_YAML_DEPTH`` is refused before the parser's recursion overflows, and
      numbers longer than ``MAX_YAML_NUMBER_LENGTH`` characters before their slow conversion.
    - ``1e-3`` is a number, as in YAML 1.2, not the string YAML 1.1 makes of it.
    """

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None,
                None,
                f"aliases (*{event.anchor}) are not accepted; write the value out",
                event.start_mark,
            )
        if self.depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark
            )
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_marks: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = first_marks.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base loader reports it
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r} (first given on line {first.line + 1})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)

    def construct_bounded_number(self, node: yaml.ScalarNode) -> int | float:
        """An int or float scalar, refused if it is too long to be a setting."""
        if len(node.value) > MAX_YAML_NUMBER_LENGTH:
            raise yaml.constructor.ConstructorError(
                None, None, f"a number longer than {MAX_YAML_NUMBER_LENGTH} characters", node.start_mark
            )
        if node.tag.endswith(":int"):
            return self.construct_yaml_int(node)
        return self.construct_yaml_float(node)


UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", UniqueKeyLoader.construct_bounded_number)
UniqueKeyLoader.add_constructor("tag:yaml.org,2002:float", UniqueKeyLoader.construct_bounded_number)
UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float", YAML12_FLOAT, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse YAML safely (see ``UniqueKeyLoader``); raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def describe_yaml_error(error: yaml.YAMLError) -> str:
    """'not valid YAML (line L, column C): problem', for a message that names the file first."""
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"not valid YAML{where}: {problem}"


def close_matches_hint(name: str, candidates: Iterable[str], n: int = 3, cutoff: float = 0.6) -> str:
    """A ' (did you mean ...?)' suffix naming the ``n`` closest candidates, or ''."""
    matches = difflib.get_close_matches(name, list(candidates), n=n, cutoff=cutoff)
    if not matches:
        return ""
    return " (did you mean " + " or ".join(repr(m) for m in matches) + "?)"


def reject_unknown_options(owner: str, unknown: Iterable[str], accepted: Iterable[str]) -> None:
    """Raise ValueError naming each unknown keyword option and the accepted ones."""
    unknown = sorted(unknown)
    if not unknown:
        return
    accepted = sorted(accepted)
    described = ", ".join(repr(name) + close_matches_hint(name, accepted) for name in unknown)
    raise ValueError(f"{owner} got unknown option(s) {described}; accepted options: {', '.join(accepted)}")
