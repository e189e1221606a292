"""Configs written to hurt (alias bombs, deep nesting, bytes that are not UTF-8, huge values) and
YAML's surprises (``1e-3``, a default that does not fit the sparsity the user set): each is one line
and exit 2 before anything trains, in bounded time and memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avalanche_sparcl.experiments.cli import main
from avalanche_sparcl.experiments.config import ConfigError, load_config

SECTIONS = """benchmark: {name: split_digits}
model: {name: small_cnn}
training: {strategy: der, buffer_size: 200, epochs: 1}
"""
LAUGHS = "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9 if previous else ['lol'] * 9)}]\n"
    for previous, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
)
ALIAS_BOMB = LAUGHS.replace("a: &a", "x: &a", 1) + SECTIONS + "description: *i\n"
"""The classic "billion laughs": nine levels of nine aliases each, 9**9 strings once expanded, here
as the value of a config key that a naive loader would check (and print in its error message)."""


def run_cli(tmp_path: Path, text: str | bytes, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and stderr of ``sparcl-bench run`` on a config file holding ``text``."""
    path = tmp_path / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code = main(["run", str(path), "--out", str(tmp_path / "runs"), "--quiet"])
    assert not (tmp_path / "runs").exists()  # refused before any run folder
    return code, capsys.readouterr().err


BOMB_PROBE = """
import json, resource, subprocess, sys, time
command = [sys.executable, "-m", "avalanche_sparcl.experiments.cli", "run", sys.argv[1], "--out", sys.argv[2]]
def bounded():  # a hard bound on the command's address space: a loader that expands fails fast
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, resource.RLIM_INFINITY))
started = time.perf_counter()
done = subprocess.run(command, capture_output=True, text=True, preexec_fn=bounded)
seconds = time.perf_counter() - started
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the command is the only child
print(json.dumps({"code": done.returncode, "seconds": seconds, "peak_kib": peak_kib, "stderr": done.stderr}))
"""
"""The whole ``sparcl-bench run`` process, from its start: the config is read before torch and
Avalanche are imported, so the refusal costs a Python interpreter and PyYAML only."""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB and RLIMIT_AS: Linux")
def test_an_alias_bomb_exits_2_in_under_2_s_and_200_mb(tmp_path):
    assert len(ALIAS_BOMB) < 600
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    done = subprocess.run(
        [sys.executable, "-c", BOMB_PROBE, str(path), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    measured = json.loads(done.stdout.splitlines()[-1])
    assert measured["stderr"] == (
        f"sparcl-bench: error: {path}: not valid YAML (line 2, column 8): aliases (*a) are not accepted; "
        "write the value out\n"
    )
    assert measured["code"] == 2
    assert measured["seconds"] < 2
    assert measured["peak_kib"] < 200 * 1024
    assert not (tmp_path / "runs").exists()


def test_a_single_alias_is_refused_too(tmp_path, capsys):
    code, err = run_cli(tmp_path, SECTIONS.replace("epochs: 1", "epochs: &n 1, batch_size: *n"), capsys)
    assert code == 2
    assert err == (
        f"sparcl-bench: error: {tmp_path / 'config.yaml'}: not valid YAML (line 3, column 71): "
        "aliases (*n) are not accepted; write the value out\n"
    )


def test_20000_nested_brackets_exit_2(tmp_path, capsys):
    code, err = run_cli(tmp_path, SECTIONS + "description: " + "[" * 20000 + "]" * 20000 + "\n", capsys)
    assert code == 2
    assert err == (
        f"sparcl-bench: error: {tmp_path / 'config.yaml'}: not valid YAML (line 4, column 77): "
        "nested deeper than 64 levels\n"
    )


def test_a_config_that_is_not_utf8_exits_2(tmp_path, capsys):
    code, err = run_cli(tmp_path, (SECTIONS + "description: café\n").encode("latin-1"), capsys)
    assert code == 2
    assert err == (
        f"sparcl-bench: error: {tmp_path / 'config.yaml'}: not UTF-8 text (byte 0xe9 at offset "
        f"{len(SECTIONS) + len('description: caf')}); save the config as UTF-8\n"
    )


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + (SECTIONS + "description: caf\xc3\xa9\n").encode("latin-1"))
    assert load_config(path).description == "café"


def test_a_number_of_5000_digits_exits_2(tmp_path, capsys):
    code, err = run_cli(tmp_path, SECTIONS.replace("epochs: 1", "epochs: " + "9" * 5000), capsys)
    assert code == 2
    assert err == (
        f"sparcl-bench: error: {tmp_path / 'config.yaml'}: not valid YAML (line 3, column 53): "
        "a number longer than 100 characters\n"
    )


def test_a_huge_value_is_quoted_in_a_bounded_message(tmp_path, capsys):
    code, err = run_cli(tmp_path, SECTIONS + "name: " + "x/" * 100_000 + "\n", capsys)
    assert code == 2
    assert err.count("\n") == 1 and len(err) < 600
    assert err.endswith(", got 'x/x/x/x/x/x" + err.split(", got 'x/x/x/x/x/x", 1)[1])
    assert "..." in err


def test_a_profile_that_is_not_a_path_exits_2(tmp_path, capsys):
    code, err = run_cli(tmp_path, SECTIONS + "sparcl: {profile: [1, 2]}\n", capsys)
    assert code == 2
    assert err == (
        f"sparcl-bench: error: {tmp_path / 'config.yaml'}: sparcl.profile must be a path to a YAML "
        "sparsity profile, got [1, 2]\n"
    )


@pytest.mark.parametrize(("text", "value"), [("1e-3", 0.001), ("3E-2", 0.03), ("1.5e+1", 15.0), ("2", 2)])
def test_yaml_1_2_floats_are_numbers(tmp_path, text, value):
    path = tmp_path / "config.yaml"
    path.write_text(SECTIONS.replace("epochs: 1", f"epochs: 1, lr: {text}"))
    lr = load_config(path).training["lr"]
    assert lr == value and type(lr) is type(value)


def test_a_quoted_exponent_stays_a_string(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(SECTIONS.replace("epochs: 1", "epochs: 1, lr: '1e-3'"))
    with pytest.raises(ConfigError, match=r"training\.lr must be a number > 0, got '1e-3'$"):
        load_config(path)


def test_a_high_sparsity_names_the_sparsity_not_only_the_default_it_breaks(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(SECTIONS + "sparcl: {sparsity: 0.999}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == (
        f"{path}: sparcl.sparsity 0.999 does not fit the default mutate_ratio 0.01 (this config does not "
        "set it): at this sparsity, mutate_ratio must be in [0, 0.001], got 0.01; set sparcl.mutate_ratio "
        "in that range, or another sparsity"
    )
    path.write_text(SECTIONS + "sparcl: {sparsity: 0.999, mutate_ratio: 0.001}\n")
    assert load_config(path).sparcl["mutate_ratio"] == 0.001


def test_a_set_mutate_ratio_that_does_not_fit_is_named_as_before(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(SECTIONS + "sparcl: {sparsity: 0.999, mutate_ratio: 0.01}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == f"{path}: sparcl.mutate_ratio must be in [0, 0.001], got 0.01"


def test_a_baseline_sparsity_too_high_for_its_method_is_named(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(SECTIONS + "baseline: {method: set, sparsity: 0.999}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == (
        f"{path}: baseline.sparsity 0.999 does not fit method 'set', which swaps a share of each layer at "
        "every mask update: at this sparsity, mutate_ratio must be in [0, 0.001], got 0.01; choose a "
        "sparsity further from 0 and 1"
    )


def test_a_config_that_is_not_a_regular_file_or_too_large_exits_2(tmp_path, capsys):
    out = tmp_path / "runs"
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it would wait for a writer for ever
    for path, problem in (
        (tmp_path, "not a regular file, so not a config file"),
        (fifo, "not a regular file, so not a config file"),
        (Path("/dev/zero"), "not a regular file, so not a config file"),
    ):
        assert main(["run", str(path), "--out", str(out)]) == 2
        assert capsys.readouterr().err == f"sparcl-bench: error: {path}: {problem}\n"
    code, err = run_cli(tmp_path, SECTIONS + "description: " + "x" * (1 << 20) + "\n", capsys)
    assert (code, err) == (
        2,
        f"sparcl-bench: error: {tmp_path / 'config.yaml'}: larger than 1 MiB, so not a config file\n",
    )
    assert not out.exists()
