"""Reading config files: bounded YAML, ``extends`` chains, and the config error.

Torch-free and Avalanche-free, so ``sparcl-bench run`` reads and checks every config file (a hostile
one included: an alias bomb, deep nesting, a pipe) before it imports anything heavy.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml

from avalanche_sparcl.experiments.config_schema import PATH_KEYS, is_text
from avalanche_sparcl.validation import describe_yaml_error, load_yaml


class ConfigError(ValueError):
    """A user error in a config file; the command line prints it without a traceback (exit 2)."""


SHOWN = reprlib.Repr()
SHOWN.maxstring, SHOWN.maxother, SHOWN.maxlevel = 200, 200, 3
SHOWN.maxlist = SHOWN.maxtuple = SHOWN.maxdict = SHOWN.maxset = 6


def shown(value: Any) -> str:
    """``repr(value)`` cut to at most a few hundred characters: a message quotes what was given, never
    all of a huge value from a hostile or broken file."""
    return SHOWN.repr(value)


MAX_CONFIG_BYTES = 1 << 20
"""Largest config file read (1 MiB; the shipped ones are under 2 KB)."""


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file, or ConfigError (with the line of a YAML error).

    Only a regular file of at most ``MAX_CONFIG_BYTES`` is read: a named pipe would block the
    command and a device such as /dev/zero never end.
    """
    try:
        if path.exists() and not path.is_file():
            raise ConfigError(f"{path}: not a regular file, so not a config file")
        with path.open("rb") as stream:
            content = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file ({error.strerror})") from None
    if len(content) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB, so not a config file")
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{content[error.start]:02x} at offset {error.start}); "
            "save the config as UTF-8"
        ) from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as error:  # a key given twice in one mapping is one too
        raise ConfigError(f"{path}: {describe_yaml_error(error)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``; nested mappings are merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file with its ``extends`` chain merged in and path keys resolved per file."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{seen[0]}: 'extends' loops back to {path}")
    data = read_yaml_mapping(path)
    for section, key in PATH_KEYS:
        value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(value, str) and value:
            data[section][key] = str((path.parent / Path(value).expanduser()).resolve())
    extends = data.pop("extends", None)
    if extends is None:
        return data
    if not is_text(extends):
        raise ConfigError(f"{path}: extends must be a path to another config file, got {shown(extends)}")
    return deep_merge(load_raw(path.parent / extends, (*seen, path)), data)
