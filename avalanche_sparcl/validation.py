"""Argument checks shared by the plugins: every rejection names the argument and its accepted range."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable


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
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    value = float(value)
    above_low = value >= low if include_low else value > low
    below_high = value <= high if include_high else value < high
    if math.isnan(value) or not (above_low and below_high):
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return value


def check_positive_int(name: str, value: int) -> int:
    """Return ``value`` if it is an integer >= 1, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


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
