"""What identifies a run: the resolved config (profiles included), the data it reads, smoke or not,
the package version.

A checkpoint or results.json is only reused for the run that produced it. Both carry the run's
identity and its fingerprint (a SHA-256 of the identity's canonical JSON); resuming, skipping a
finished run and grouping runs in a report compare fingerprints, and a mismatch is explained by the
keys that differ. The data is identified by its content (size and SHA-256 of every file a benchmark
reads), so data files replaced between a kill and its resume make another run, not a mixed one. A
checkpoint is signed for its run and seed (:func:`checkpoint_run_id`), so one copied from another
folder is not resumed either.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from avalanche_sparcl.benchmarks import DATASET_FILES, expand_root, fmnist_files
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
    data = data_identity(config, smoke)
    if data is not None:
        identity["data"] = data
    if world_size > 1:
        identity["world_size"] = world_size
    return identity


def data_identity(config: ExperimentConfig, smoke: bool) -> dict[str, Any] | None:
    """Size and SHA-256 of each data file the benchmark reads, by file name; None when it reads none
    (smoke runs: random tensors; Split Digits: data inside the installed packages).

    A folder of many files (Tiny-ImageNet's images) is identified by the names and sizes of the files
    under it, which is cheap; single files by their content.
    """
    benchmark = config.benchmark
    if smoke:
        return None
    if benchmark["name"] == "split_fmnist":
        paths = {path.name: path for path in fmnist_files(benchmark.get("dataset_root")).values()}
    elif benchmark["name"] in DATASET_FILES:
        root = expand_root(benchmark["dataset_root"])
        paths = {name.rstrip("/"): root / name for name in DATASET_FILES[benchmark["name"]]}
    else:
        return None
    return {name: path_identity(path) for name, path in sorted(paths.items())}


def path_identity(path: Path) -> dict[str, Any]:
    if path.is_dir():
        return folder_identity(path)
    info = path.stat()
    return {
        "bytes": info.st_size,
        "sha256": file_sha256(str(path), info.st_size, info.st_mtime_ns, info.st_ino),
    }


@lru_cache(maxsize=64)
def file_sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """SHA-256 of a file's content, computed once per process for each (path, size, time, inode)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def folder_identity(folder: Path) -> dict[str, Any]:
    """The count, total size, and SHA-256 of the sorted names and sizes of the files under ``folder``."""
    entries = []
    for parent, _, names in os.walk(folder):
        for name in names:
            path = Path(parent) / name
            entries.append(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\n")
    entries.sort()
    listing = hashlib.sha256("".join(entries).encode("utf-8", "surrogateescape")).hexdigest()
    total = sum(int(entry.rsplit("\0", 1)[1]) for entry in entries)
    return {"files": len(entries), "bytes": total, "listing_sha256": listing}


def checkpoint_run_id(identity: dict[str, Any], seed: int) -> str:
    """What a run's checkpoints are signed for: its fingerprint and its seed (the folder's, as the
    identity leaves the seed out so that a report groups the seeds of one run)."""
    return fingerprint({"fingerprint": fingerprint(identity), "seed": seed})


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
