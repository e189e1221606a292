"""What identifies a run: the resolved config (profiles included), smoke or not, the package version.

A checkpoint or results.json is only reused for the run that produced it. Both carry the run's
identity and its fingerprint (a SHA-256 of the identity's canonical JSON); resuming, skipping a
finished run and grouping runs in a report compare fingerprints, and a mismatch is explained by the
keys that differ.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from avalanche_sparcl.experiments.config import PATH_KEYS, ExperimentConfig

IGNORED_CONFIG_KEYS = ("description",)
"""Config keys that do not change what a run computes."""


def package_version() -> str:
    try:
        return metadata.version("avalanche-sparcl")
    except metadata.PackageNotFoundError:
        return "not installed"


def run_identity(config: ExperimentConfig, smoke: bool, world_size: int = 1) -> dict[str, Any]:
    """Everything that decides what a run computes, as plain JSON values.

    A profile is identified by its content, not its path, so editing the file changes the run. A
    data-parallel run (``world_size`` processes) trains on other minibatches, so its identity names
    the process count; one-process identities stay as they always were.
    """
    resolved = {key: value for key, value in config.to_dict().items() if key not in IGNORED_CONFIG_KEYS}
    resolved = json.loads(json.dumps(resolved))  # deep copy, plain JSON types
    for section, key in PATH_KEYS:
        path = (resolved.get(section) or {}).get(key)
        if path is not None:
            resolved[section][key] = {"path": path, "content": profile_content(Path(path))}
    identity = {"config": resolved, "smoke": bool(smoke), "package_version": package_version()}
    if world_size > 1:
        identity["world_size"] = world_size
    return identity


def profile_content(path: Path) -> Any:
    """The parsed profile (whitespace and comments do not matter), or None if it cannot be read."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def fingerprint(identity: dict[str, Any]) -> str:
    """SHA-256 of the identity's canonical JSON."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def differing_keys(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Dotted paths of the values that differ between two identities (e.g. ``config.sparcl.sparsity``)."""
    stored_flat, requested_flat = flatten(stored), flatten(requested)
    keys = sorted(set(stored_flat) | set(requested_flat))
    return [key for key in keys if stored_flat.get(key, MISSING) != requested_flat.get(key, MISSING)]


MISSING = object()


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one mapping of dotted paths to leaf values."""
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}
