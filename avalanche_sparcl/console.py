"""Keeping command-line output readable: progress and results, not library noise."""

from __future__ import annotations

import warnings
from typing import Any

AVALANCHE_DEPRECATION = "Call to deprecated"


def hide_avalanche_deprecation_notices() -> None:
    """Drop the DeprecationWarnings Avalanche 0.6 raises about its own internals.

    Its ``deprecated`` decorator re-installs a "once" filter at every call, so ordinary warning filters
    cannot silence it; the notices concern Avalanche's code (e.g. storage policies' ``update``), not
    the user's, so the command-line entry points do not show them.
    """
    original = warnings.showwarning
    if getattr(original, "hides_avalanche_deprecations", False):
        return

    def showwarning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, DeprecationWarning) and str(message).startswith(AVALANCHE_DEPRECATION):
            return
        original(message, category, *args, **kwargs)

    showwarning.hides_avalanche_deprecations = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning
