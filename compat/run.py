"""Avalanche's own test suite as SparCL's compatibility contract (``make compat``).

Copies the tests that the installed avalanche-lib wheel ships (its top-level ``tests`` package) into
a temporary folder, runs the training, optimizer, logger, model and dataloader tests three times (as
shipped; with ``SparCLPlugin(0.75, 0.3, 0.2)`` injected into every strategy; with TDM alone at 0.9),
each run checking after every ``train()`` that no pruned entry of the current model is non-zero
(``compat/sparcl_injection.py``), and writes docs/compatibility.md: every test, its three results,
and for each difference the reason. The README's compatibility summary is rewritten from the same
results. Exit status 1 when a test that passes as shipped fails with SparCL for a reason not listed
in ``EXPECTED_DIFFERENCES``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEST_PATHS = [
    "tests/training",
    "tests/test_optimizer.py",
    "tests/test_loggers.py",
    "tests/models/test_models.py",
    "tests/models/test_dynamic_optimizers.py",
    "tests/models/test_packnet.py",
    "tests/benchmarks/utils/test_dataloaders.py",
]
MODES = {
    "plain": "as shipped",
    "sparcl": "SparCLPlugin(sparsity=0.75, removal_ratio=0.3, gradient_sparsity=0.2)",
    "tdm": "TDMPlugin(sparsity=0.9)",
}
README_BEGIN = "<!-- compatibility summary: written by make compat -->"
README_END = "<!-- end of compatibility summary -->"

DDR_OTHER_DATA = (
    "refused before the first step: DDR removes examples of the experience being trained, and this "
    "strategy trains on other data"
)
RECORDED_NUMBERS = "asserts numbers recorded from dense training"
EXPECTED_DIFFERENCES: dict[str, tuple[tuple[str, ...], str, str]] = {
    # test id -> (modes, text the failure message must contain, reason)
    "tests.training.test_strategies.StrategyTest::test_cumulative": (
        ("sparcl",),
        "DDRPlugin cannot be used with Cumulative",
        DDR_OTHER_DATA + " (every experience seen so far)",
    ),
    "tests.training.test_strategies_accuracy.StrategyTest::test_multihead_cumulative": (
        ("sparcl",),
        "DDRPlugin cannot be used with Cumulative",
        DDR_OTHER_DATA + " (every experience seen so far)",
    ),
    "tests.training.test_supervised_regression.TestStrategyReproducibility::"
    "test_reproduce_old_cumulative_strategy": (
        ("sparcl",),
        "DDRPlugin cannot be used with Cumulative",
        DDR_OTHER_DATA + " (every experience seen so far)",
    ),
    "tests.training.test_strategies.BaseStrategyTest::test_early_stop": (
        ("sparcl",),
        "DDRPlugin cannot be used with Cumulative",
        DDR_OTHER_DATA + " (the test trains Cumulative)",
    ),
    "tests.training.test_strategies.StrategyTest::test_joint": (
        ("sparcl",),
        "DDRPlugin cannot be used with JointTraining",
        DDR_OTHER_DATA + " (all experiences at once)",
    ),
    "tests.training.test_strategies.StrategyTest::test_gdumb": (
        ("sparcl",),
        "DDRPlugin cannot be used with GDumb",
        DDR_OTHER_DATA + " (its own buffer)",
    ),
    "tests.training.test_strategies.StrategyTest::test_icarl": (
        ("sparcl", "tdm"),
        "",
        "refused before the first step: the test's model is a single Linear layer (no layer to make "
        "sparse but the classifier); with DDR, iCaRL is refused too (it trains on the experience joined "
        "with its exemplars)",
    ),
    "tests.models.test_models.DynamicModelsTests::test_multihead_head_selection": (
        ("sparcl", "tdm"),
        "the model has no layer SparCL can make sparse",
        "refused before the first step: the test's model is a MultiHeadClassifier alone, one weight layer "
        "per task (the classifier), nothing to make sparse",
    ),
    "tests.models.test_packnet.TestPackNet::test_PackNet_sgd": (
        ("sparcl", "tdm"),
        "SparCL cannot be used with PackNet",
        "refused before the first step: PackNet prunes and freezes the model itself",
    ),
    "tests.models.test_packnet.TestPackNet::test_PackNet_adam": (
        ("sparcl", "tdm"),
        "SparCL cannot be used with PackNet",
        "refused before the first step: PackNet prunes and freezes the model itself",
    ),
    "tests.training.test_plugins.PluginTests::test_scheduler_reduce_on_plateau_plugin": (
        ("sparcl", "tdm"),
        "LR mismatch",
        RECORDED_NUMBERS + ": the learning-rate timeline of ReduceLROnPlateau, which follows the "
        "losses of a dense reference run",
    ),
    "tests.training.test_supervised_regression.TestStrategyReproducibility::"
    "test_reproduce_old_base_strategy": (
        ("sparcl", "tdm"),
        "Not equal to tolerance",
        RECORDED_NUMBERS + ": the outputs of a dense Naive model, compared to 1e-7",
    ),
}
EXPECTED_DIFFERENCES[
    "tests.training.test_supervised_regression.TestStrategyReproducibility::test_reproduce_old_cumulative_strategy"
] = (
    ("sparcl", "tdm"),
    "",
    RECORDED_NUMBERS + ": the outputs of a dense Cumulative model, compared to 1e-7 (with DDR, "
    "Cumulative is refused before the first step)",
)


@dataclass
class Outcome:
    """One test's result in one mode."""

    status: str  # passed, failed, skipped
    message: str = ""


def installed_tests() -> Path:
    """The ``tests`` package that the installed avalanche-lib wheel ships."""
    import avalanche

    folder = Path(avalanche.__file__).resolve().parent.parent / "tests"
    if not (folder / "training").is_dir():
        sys.exit(
            f"make compat: avalanche-lib's own tests are not installed next to it ({folder} has no training/)"
        )
    return folder


def run_mode(mode: str, workdir: Path, results: Path) -> float:
    """Run the selected tests in ``mode``; junit XML goes to ``results``; returns seconds taken."""
    environment = {
        **os.environ,
        "SPARCL_COMPAT_MODE": mode,
        "PYTHONPATH": os.pathsep.join([str(REPO / "compat"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-p",
        "sparcl_injection",
        "-q",
        "--rootdir",
        str(workdir),
        f"--junitxml={results}",
        *TEST_PATHS,
    ]
    started = time.monotonic()
    with open(results.with_suffix(".log"), "w") as log:
        subprocess.run(
            command, cwd=workdir, env=environment, stdout=log, stderr=subprocess.STDOUT, check=False
        )
    return time.monotonic() - started


def read_results(path: Path) -> dict[str, Outcome]:
    """Test id (``module.Class::name``) -> outcome, from pytest's junit XML."""
    outcomes = {}
    for case in ElementTree.parse(path).iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        outcome = Outcome("passed")
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = Outcome("failed", one_line(child.get("message") or child.text or ""))
            elif child.tag == "skipped" and outcome.status == "passed":
                outcome = Outcome("skipped", one_line(child.get("message") or ""))
        outcomes[test_id] = outcome
    return outcomes


def one_line(message: str, limit: int = 220) -> str:
    """A failure message on one line, shortened."""
    text = re.sub(r"\s+", " ", message).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def explain(test_id: str, mode: str, outcome: Outcome) -> str | None:
    """The listed reason for a difference, or None when it is not an expected one."""
    expected = EXPECTED_DIFFERENCES.get(test_id)
    if expected is None:
        return None
    modes, needle, reason = expected
    if mode not in modes or needle not in outcome.message:
        return None
    return reason


def write_report(
    results: dict[str, dict[str, Outcome]], seconds: dict[str, float], output: Path
) -> list[str]:
    """docs/compatibility.md; returns the unexplained regressions."""
    import avalanche
    import torch

    plain = results["plain"]
    unexplained: list[str] = []
    lines = [
        "# Avalanche's own tests with SparCL injected",
        "",
        "Written by `make compat` (compat/run.py); do not edit by hand. avalanche-lib "
        f"{avalanche.__version__}, torch {torch.__version__}, Python {sys.version.split()[0]}, "
        f"on {os.cpu_count()} CPU cores; runs took "
        + ", ".join(f"{mode} {seconds[mode]:.0f} s" for mode in MODES)
        + ".",
        "",
        "The tests that the avalanche-lib wheel ships (" + ", ".join(f"`{p}`" for p in TEST_PATHS) + ") run "
        "three times: as shipped, then with a SparCL plugin appended to the plugins of every strategy "
        "that `BaseTemplate.__init__` builds (after the test's own plugins, before the evaluator):",
        "",
        *[f"- **{mode}**: {description}" for mode, description in MODES.items()],
        "",
        "With SparCL injected, every `train()` is followed by a check that no pruned entry of the "
        "strategy's current model is non-zero; a violation fails the test.",
        "",
    ]
    counts = {mode: {"passed": 0, "failed": 0, "skipped": 0} for mode in MODES}
    for mode in MODES:
        for outcome in results[mode].values():
            counts[mode][outcome.status] += 1
    passing = [test_id for test_id, outcome in plain.items() if outcome.status == "passed"]
    lines += [
        "## Summary",
        "",
        "| | passed | failed | skipped | of the tests passing as shipped, failing |",
        "|---|---|---|---|---|",
    ]
    for mode in MODES:
        lost = sum(
            1 for test_id in passing if results[mode].get(test_id, Outcome("failed")).status != "passed"
        )
        lines.append(
            f"| {mode} | {counts[mode]['passed']} | {counts[mode]['failed']} "
            f"| {counts[mode]['skipped']} | {lost} |"
        )
    lines += ["", "## Differences from the run as shipped", ""]
    differences = []
    for test_id in passing:
        for mode in ("sparcl", "tdm"):
            outcome = results[mode].get(test_id, Outcome("failed", "not run"))
            if outcome.status == "passed":
                continue
            reason = explain(test_id, mode, outcome)
            if reason is None:
                unexplained.append(f"{mode}: {test_id}: {outcome.message}")
                reason = "**not explained: a regression**"
            differences.append(f"| `{test_id}` | {mode} | {reason} | {outcome.message.replace('|', '/')} |")
    if differences:
        lines += ["| test | mode | reason | message |", "|---|---|---|---|", *differences]
    else:
        lines.append("None.")
    lines += [
        "",
        "## Every test",
        "",
        "Tests failing as shipped fail for reasons of this machine (no network for downloads, a torch "
        "scheduler argument removed) and are not compared.",
        "",
        "| test | as shipped | sparcl | tdm |",
        "|---|---|---|---|",
    ]
    for test_id in sorted(set().union(*results.values())):
        cells = [results[mode].get(test_id, Outcome("not run")).status for mode in MODES]
        lines.append(f"| `{test_id}` | " + " | ".join(cells) + " |")
    output.write_text("\n".join(lines) + "\n")
    update_readme(counts, passing, results)
    return unexplained


def update_readme(
    counts: dict[str, dict[str, int]], passing: list[str], results: dict[str, dict[str, Outcome]]
) -> None:
    """Rewrite the README's compatibility summary between its markers."""
    readme = REPO / "README.md"
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return
    rows = ["| run | tests passing as shipped that pass |", "|---|---|"]
    for mode in ("sparcl", "tdm"):
        kept = sum(
            1 for test_id in passing if results[mode].get(test_id, Outcome("failed")).status == "passed"
        )
        rows.append(f"| {MODES[mode]} | {kept} of {len(passing)} |")
    summary = "\n".join(
        [
            README_BEGIN,
            *rows,
            "",
            "Each test that does not pass is listed in [docs/compatibility.md](docs/compatibility.md) "
            "with its "
            "reason: a refusal before the first step for a combination that cannot work, or a test that "
            "asserts numbers recorded from dense training.",
            README_END,
        ]
    )
    start, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + summary + text[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "compatibility.md")
    args = parser.parse_args()
    source = installed_tests()
    with tempfile.TemporaryDirectory(prefix="sparcl-compat-") as folder:
        workdir = Path(folder)
        shutil.copytree(source, workdir / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        results, seconds = {}, {}
        for mode in MODES:
            xml = workdir / f"{mode}.xml"
            seconds[mode] = run_mode(mode, workdir, xml)
            results[mode] = read_results(xml)
            passed = sum(outcome.status == "passed" for outcome in results[mode].values())
            print(f"{mode}: {passed} passed in {seconds[mode]:.0f} s")
    unexplained = write_report(results, seconds, args.output)
    print(f"wrote {args.output}")
    for line in unexplained:
        print(f"unexplained: {line}")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
