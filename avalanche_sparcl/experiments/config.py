"""Experiment configs: the YAML schema, loading (with ``extends``) and validation.

A config is checked completely before anything runs, so a typo in the tenth file of a grid stops the
command at once with one message that names the key, says what is accepted and suggests the closest
valid key, instead of failing hours later inside training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from avalanche_sparcl.experiments.config_files import (  # noqa: F401 (re-exported)
    MAX_CONFIG_BYTES,
    SHOWN,
    ConfigError,
    deep_merge,
    load_raw,
    read_yaml_mapping,
    shown,
)
from avalanche_sparcl.experiments.config_schema import (  # noqa: F401 (re-exported)
    BASELINE_METHODS,
    BENCHMARK_SHAPES,
    BUFFER_KINDS,
    EMPTY_SECTION_HINTS,
    MODEL_WIDTHS,
    PATH_KEYS,
    REPLAY_STRATEGIES,
    REQUIRED,
    SECTIONS,
    SPARCL_DEFAULTS,
    SPARCL_KEYS,
    STRATEGIES,
    TOP_LEVEL,
    BenchmarkShape,
    Key,
    is_folder_name,
    is_text,
)
from avalanche_sparcl.plugins import SparCLPlugin, TDMPlugin
from avalanche_sparcl.settings import LAYER_RATIOS, OPTIONS
from avalanche_sparcl.validation import (
    close_matches_hint,
    describe_yaml_error,
    load_yaml,
)


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment: every section filled with its defaults, paths resolved."""

    name: str
    path: Path
    description: str
    benchmark: dict[str, Any]
    model: dict[str, Any]
    training: dict[str, Any]
    sparcl: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def method_kind(self) -> str:
        """'dense', 'sparcl' or a baseline method name."""
        if self.sparcl is not None:
            return "sparcl"
        if self.baseline is not None:
            return self.baseline["method"]
        return "dense"

    @property
    def sparsity(self) -> float:
        """Target weight sparsity of the masked layers (0 for a dense run)."""
        section = self.sparcl or self.baseline
        return 0.0 if section is None else float(section["sparsity"])

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, as written to results.json."""
        return {
            "name": self.name,
            "description": self.description,
            "benchmark": self.benchmark,
            "model": self.model,
            "training": self.training,
            "sparcl": self.sparcl,
            "baseline": self.baseline,
        }


def is_file(path: str) -> bool:
    """Whether ``path`` is a file; False, not an OSError, for a name the system refuses (too long)."""
    try:
        return Path(path).is_file()
    except OSError:
        return False


def closest_hint(name: str, candidates: list[str]) -> str:
    """' (did you mean 'x'?)' for the single closest candidate, or ''."""
    return close_matches_hint(name, candidates, n=1, cutoff=0.5)


def check_keys(path: Path, where: str, values: Mapping[str, Any], schema: dict[str, Key]) -> dict[str, Any]:
    """Reject unknown keys and bad values of one mapping; return it with defaults filled in."""
    accepted = sorted(schema)
    for name in values:
        if name not in schema:
            dotted = f"{where}.{name}" if where else str(name)
            raise ConfigError(
                f"{path}: unknown key {shown(dotted)}{closest_hint(str(name), accepted)}; "
                f"accepted keys{f' in {where!r}' if where else ''}: {', '.join(accepted)}"
            )
    checked: dict[str, Any] = {}
    for name, key in schema.items():
        dotted = f"{where}.{name}" if where else name
        if name not in values or values[name] is None and key.default is not REQUIRED:
            if key.default is REQUIRED:
                raise ConfigError(f"{path}: missing key {dotted!r}: it must be {key.accepted}")
            checked[name] = key.default
            continue
        value = values[name]
        if not key.check(value):
            hint = closest_hint(value, list(key.choices)) if isinstance(value, str) and key.choices else ""
            raise ConfigError(f"{path}: {dotted} must be {key.accepted}, got {shown(value)}{hint}")
        checked[name] = value
    return checked


@dataclass(frozen=True)
class Override:
    """One ``--set KEY=VALUE`` of the command line: a config value replaced in every config."""

    text: str
    section: str | None
    key: str
    value: Any


def parse_override(text: str) -> Override:
    """``section.key=value`` (or ``name=...``, ``description=...``), its value read as YAML as in a
    config file and checked like one, so ``--set`` accepts and refuses what the file would."""
    dotted, equals, value_text = text.partition("=")
    if not equals or not dotted:
        raise ConfigError(f"--set {shown(text)}: expected KEY=VALUE, e.g. training.epochs=1")
    where = f"--set {shown(text)}"
    section, _, key = dotted.rpartition(".")
    if section and section not in SECTIONS:
        accepted = sorted(SECTIONS)
        raise ConfigError(
            f"{where}: unknown section {shown(section)}{closest_hint(section, accepted)}; "
            f"sections: {', '.join(accepted)}"
        )
    schema = SECTIONS[section] if section else {k: v for k, v in TOP_LEVEL.items() if k not in SECTIONS}
    if key not in schema:
        accepted = sorted(schema)
        if not section and key in SECTIONS:
            raise ConfigError(
                f"{where}: set one key of the section, e.g. {key}.{next(iter(SECTIONS[key]))}=VALUE"
            )
        in_sections = [f"{name}.{key}" for name in SECTIONS if not section and key in SECTIONS[name]]
        hint = f" (did you mean {' or '.join(map(repr, in_sections))}?)" if in_sections else ""
        raise ConfigError(
            f"{where}: unknown key {shown(dotted)}{hint or closest_hint(key, accepted)}; "
            f"accepted keys{f' in {section!r}' if section else ''}: {', '.join(accepted)}"
        )
    try:
        value = load_yaml(value_text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: the value is {describe_yaml_error(error)}") from None
    if value is not None and not schema[key].check(value):
        choices = list(schema[key].choices)
        hint = closest_hint(value, choices) if isinstance(value, str) and choices else ""
        raise ConfigError(f"{where}: {dotted} must be {schema[key].accepted}, got {shown(value)}{hint}")
    if (section, key) in PATH_KEYS and isinstance(value, str):
        value = str(Path(value).expanduser().resolve())  # relative to where the command runs
    return Override(text, section or None, key, value)


def apply_overrides(path: Path, raw: dict[str, Any], overrides: Sequence[Override]) -> dict[str, Any]:
    """``raw`` with the overrides' values; a section the config lacks is refused, not added (a
    ``--set sparcl.sparsity=0.9`` meant for the sparse configs of a grid must not make its dense
    ones sparse)."""
    for override in overrides:
        if override.section is None:
            raw[override.key] = override.value
            continue
        if not isinstance(raw.get(override.section), dict):
            raise ConfigError(
                f"{path}: --set {shown(override.text)}: the config has no {override.section!r} section "
                "(--set changes values of a config, it adds no section)"
            )
        raw[override.section][override.key] = override.value
    return raw


def load_config(path: str | Path, overrides: Sequence[Override] = ()) -> ExperimentConfig:
    """Load and fully validate one config file, with the command line's ``--set`` values in place;
    raise ConfigError naming the offending key."""
    path = Path(path)
    raw = apply_overrides(path, load_raw(path), overrides)
    for section, hint in EMPTY_SECTION_HINTS.items():
        if section in raw and raw[section] is None:
            raise ConfigError(f"{path}: {section} is empty: {hint}")
    top = check_keys(path, "", raw, TOP_LEVEL)
    if top["name"] is None and not is_folder_name(path.stem):
        raise ConfigError(
            f"{path}: name must be {TOP_LEVEL['name'].accepted}, got {path.stem!r} (from the file name: "
            "set 'name')"
        )
    sections = {
        name: check_keys(path, name, top[name], SECTIONS[name]) if top.get(name) is not None else None
        for name in SECTIONS
    }
    benchmark, model, training = sections["benchmark"], sections["model"], sections["training"]
    check_benchmark(path, benchmark)
    if model["width"] is None:
        model["width"] = MODEL_WIDTHS[model["name"]]
    check_training(path, training)
    if sections["sparcl"] is not None and sections["baseline"] is not None:
        raise ConfigError(f"{path}: give either a 'sparcl' or a 'baseline' section, not both")
    for section_name, key_name in sorted(PATH_KEYS):
        profile = (sections[section_name] or {}).get(key_name)
        if profile is not None and not (is_text(profile) and is_file(profile)):
            raise ConfigError(
                f"{path}: {section_name}.{key_name} must be {SECTIONS[section_name][key_name].accepted}"
                f", got {shown(profile)}{' (no such file)' if is_text(profile) else ''}"
            )
    config = ExperimentConfig(
        name=top["name"] or path.stem,
        path=path,
        description=top["description"],
        benchmark=benchmark,
        model=model,
        training=training,
        sparcl=sections["sparcl"],
        baseline=sections["baseline"],
        raw=raw,
    )
    build_sparse_plugin(config, seed=0)  # the plugins' own checks: ranges that depend on each other
    return config


def check_benchmark(path: Path, benchmark: dict[str, Any]) -> None:
    shape = BENCHMARK_SHAPES[benchmark["name"]]
    if benchmark["n_experiences"] is None:
        benchmark["n_experiences"] = shape.default_experiences
    if shape.n_classes % benchmark["n_experiences"]:
        raise ConfigError(
            f"{path}: benchmark.n_experiences must divide the {shape.n_classes} classes of "
            f"{benchmark['name']}, got {benchmark['n_experiences']}"
        )
    if shape.dataset_root == "required" and benchmark["dataset_root"] is None:
        raise ConfigError(
            f"{path}: missing key 'benchmark.dataset_root': {benchmark['name']} needs the folder that "
            "holds its data"
        )
    if shape.dataset_root == "refused" and benchmark["dataset_root"] is not None:
        raise ConfigError(
            f"{path}: benchmark.dataset_root is not accepted for {benchmark['name']} (its data is embedded)"
        )


def check_training(path: Path, training: dict[str, Any]) -> None:
    strategy = training["strategy"]
    if strategy in REPLAY_STRATEGIES and training["buffer_size"] is None:
        raise ConfigError(
            f"{path}: missing key 'training.buffer_size': strategy {strategy!r} replays a buffer"
        )
    if strategy not in REPLAY_STRATEGIES and training["buffer_size"] is not None:
        raise ConfigError(
            f"{path}: training.buffer_size is not accepted for strategy {strategy!r} (no replay)"
        )
    if strategy not in REPLAY_STRATEGIES and training["buffer"] != "stock":
        raise ConfigError(f"{path}: training.buffer is not accepted for strategy {strategy!r} (no replay)")
    for name, default in (("alpha", 0.1), ("beta", 0.5)):
        if strategy == "der" and training[name] is None:
            training[name] = default
        elif strategy != "der" and training[name] is not None:
            raise ConfigError(
                f"{path}: training.{name} is accepted for strategy 'der' only, got {strategy!r}"
            )


SMOKE_SHORT_SCHEDULE_RULES_OFF = {
    "min_update_steps": 0,
    "min_experience_steps": 0,
    "min_gradient_masking_steps": 0,
    "min_masked_head_steps": 0,
}
"""Smoke runs train a few steps per experience, far below the short-schedule rules' thresholds: they
turn the rules off (unless the config sets them) so that every part of the method still runs."""


def build_sparse_plugin(
    config: ExperimentConfig, seed: int, smoke: bool = False
) -> SparCLPlugin | TDMPlugin | None:
    """The config's SparCL plugin or sparse-training baseline (None for a dense run).

    Baselines share TDM's mask core (paper Sec. 5.3 comparison): ``static`` keeps the initial
    magnitude mask, ``set`` prunes by magnitude and regrows at random (SET/MEST), ``rigl`` prunes by
    magnitude and regrows by gradient. ``smoke`` applies ``SMOKE_SHORT_SCHEDULE_RULES_OFF``.
    """
    try:
        if config.sparcl is not None:
            options = {k: v for k, v in config.sparcl.items() if v is not None}
            if smoke:
                options = {**SMOKE_SHORT_SCHEDULE_RULES_OFF, **options}
            return SparCLPlugin(seed=seed, **options)
        if config.baseline is not None:
            baseline = config.baseline
            options: dict[str, Any] = {"seed": seed, "expand_ratio": 0}
            if smoke:
                options["min_update_steps"] = 0
            if baseline["profile"] is not None:
                options["profile"] = baseline["profile"]
            if baseline["method"] == "static":
                options["mutate_ratio"] = 0
            else:
                options["importance_lambda"] = 0
                options["regrow"] = "random" if baseline["method"] == "set" else "gradient"
            return TDMPlugin(baseline["sparsity"], **options)
    except (ValueError, OSError) as error:
        section = "sparcl" if config.sparcl is not None else "baseline"
        message = str(error)
        first_word = message.split(" ", 1)[0]
        if first_word in LAYER_RATIOS and (config.sparcl or {}).get(first_word) is None:
            message = unset_ratio_message(config, first_word, message)
        elif first_word in SECTIONS[section]:
            message = f"{section}.{message}"
        else:
            message = f"{section}: {message}"
        raise ConfigError(f"{config.path}: {message}") from None
    return None


def unset_ratio_message(config: ExperimentConfig, ratio: str, message: str) -> str:
    """The error of a layer ratio the config does not set, whose default does not fit the sparsity
    it does set: the message names what the user wrote (the sparsity or the profile), not only a
    default they never saw."""
    if config.baseline is not None:
        sparsity = config.baseline["sparsity"]
        return (
            f"baseline.sparsity {sparsity!r} does not fit method {config.baseline['method']!r}, which "
            f"swaps a share of each layer at every mask update: at this sparsity, {message}; choose a "
            "sparsity further from 0 and 1"
        )
    assert config.sparcl is not None
    given = (
        "sparcl.profile's layer sparsities"
        if config.sparcl.get("profile")
        else f"sparcl.sparsity {config.sparcl['sparsity']!r}"
    )
    return (
        f"{given} does not fit the default {ratio} {OPTIONS[ratio].default!r} (this config does not set "
        f"it): at this sparsity, {message}; set sparcl.{ratio} in that range, or another sparsity"
    )
