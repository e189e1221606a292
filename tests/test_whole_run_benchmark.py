"""benchmarks/whole_run.py: its summaries and docs section from made-up runs (no training here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import whole_run  # noqa: E402

MIB_IN_KIB = 1024


def quick_row(method: str, seed: int, seconds: float, iterations: int, peak_mib: float) -> dict:
    return {
        "method": method,
        "config": f"{method}_config",
        "seed": seed,
        "epochs": 3,
        "threads": 1,
        "train_time_s": seconds,
        "train_iterations": iterations,
        "class_il": 0.75 if method == "dense" else 0.76,
        "train_flops": 4.4e12 if method == "dense" else 1.0e12,
        "kept_data": 1.0 if method == "dense" else 0.9,
        "parameter_bytes": 400_000,
        "vm_hwm_kib": round(peak_mib * MIB_IN_KIB),
        "ru_maxrss_kib": 5_000_000,  # inherited from a big parent: must not be used
    }


def memory_row(method: str, round_index: int, peak_mib: float, events: int = 3) -> dict:
    return {
        "method": method,
        "round": round_index,
        "model": "ResNet18(nf=64, in_channels=1)",
        "threads": 1,
        "train_time_s": 50.0 if method == "dense" else 60.0,
        "train_iterations": 60,
        "parameter_bytes": 40 * 2**20,
        "setup_peak_kib": 1000 * MIB_IN_KIB,
        "plugin_state_bytes": 30 * 2**20 if method == "sparcl" else 0,
        "mask_updates": events if method == "sparcl" else 0,
        "gradient_mask_refreshes": events if method == "sparcl" else 0,
        "ddr_stages": 2 if method == "sparcl" else 0,
        "vm_hwm_kib": round(peak_mib * MIB_IN_KIB),
        "ru_maxrss_kib": 5_000_000,
    }


def wall_rows(sparcl_seconds: tuple[float, float]) -> list[dict]:
    return [
        quick_row("dense", 0, 100.0, 5625, 900.0),
        quick_row("sparcl", 0, sparcl_seconds[0], 5065, 910.0),
        quick_row("dense", 1, 140.0, 5625, 904.0),
        quick_row("sparcl", 1, sparcl_seconds[1], 5065, 920.0),
    ]


def memory_rows(sparcl_peaks: tuple[float, float], events: int = 3) -> list[dict]:
    return [
        memory_row("dense", 0, 1000.0),
        memory_row("sparcl", 0, sparcl_peaks[0], events),
        memory_row("dense", 1, 1010.0),
        memory_row("sparcl", 1, sparcl_peaks[1], events),
    ]


def report(wall: list[dict] | None, memory: list[dict] | None) -> dict:
    result = {
        "date": "2026-01-02",
        "command": "python benchmarks/whole_run.py --threads 1",
        "threads": 1,
        "threads_used": [1],
        "wall_clock": None,
        "memory": None,
    }
    if wall is not None:
        result["wall_clock"] = {
            "settings": {"seeds": [0, 1], "epochs": 3},
            "rows": wall,
            "summary": whole_run.summarise_wall_clock(wall),
        }
    if memory is not None:
        result["memory"] = {
            "settings": {"rounds": 2, "nf": 64, "epochs": 3, "minibatches": 10},
            "rows": memory,
            "summary": whole_run.summarise_memory(memory),
        }
    return result


def test_wall_clock_summary_medians_ratios_and_verdict():
    summary = whole_run.summarise_wall_clock(wall_rows((84.0, 108.0)))
    assert summary["dense"]["train_time_s"] == 120.0
    assert summary["sparcl"]["train_time_s"] == 96.0
    assert summary["wall_clock_ratio"] == 96.0 / 120.0
    assert summary["wall_clock_met"]  # 0.80x is on the target, which is inclusive
    assert summary["seed_ratios"] == [0.84, 108.0 / 140.0]
    assert summary["iterations_ratio"] == 5065 / 5625
    assert summary["flops_reduction"] == 4.4
    assert summary["dense"]["class_il"] == 0.75 and summary["sparcl"]["class_il"] == 0.76
    assert summary["dense"]["peak_rss_kib"] == 902 * MIB_IN_KIB  # VmHWM, not the inherited ru_maxrss
    assert summary["rss_difference_bytes"] == 13 * 2**20
    assert summary["rss_budget_bytes"] == 600_000
    missed = whole_run.summarise_wall_clock(wall_rows((100.0, 120.0)))
    assert missed["wall_clock_ratio"] == 110.0 / 120.0 and not missed["wall_clock_met"]


def test_peak_falls_back_to_ru_maxrss_without_vm_hwm():
    assert whole_run.peak_kib({"vm_hwm_kib": None, "ru_maxrss_kib": 1234}) == 1234
    assert whole_run.peak_kib({"vm_hwm_kib": 99, "ru_maxrss_kib": 1234}) == 99


def test_memory_summary_medians_difference_and_verdict():
    summary = whole_run.summarise_memory(memory_rows((1040.0, 1060.0)))
    assert summary["dense"]["peak_rss_kib"] == 1005 * MIB_IN_KIB
    assert summary["sparcl"]["peak_rss_kib"] == 1050 * MIB_IN_KIB
    assert summary["round_differences_bytes"] == [40 * 2**20, 50 * 2**20]
    assert summary["rss_difference_bytes"] == 45 * 2**20
    assert summary["rss_budget_bytes"] == 60 * 2**20
    assert summary["memory_met"]
    assert summary["events"] == {"mask_updates": 3, "gradient_mask_refreshes": 3, "ddr_stages": 2}
    assert not whole_run.summarise_memory(memory_rows((1070.0, 1080.0)))["memory_met"]


@pytest.mark.parametrize(
    ("sparcl_seconds", "sparcl_peaks", "wall_verdict", "memory_verdict"),
    [
        ((84.0, 108.0), (1040.0, 1060.0), "met (0.80x)", "met (+45.0 MiB of 60.0 MiB allowed)"),
        (
            (100.0, 120.0),
            (1070.0, 1080.0),
            "**missed** (0.92x)",
            "**missed** (+70.0 MiB, 10.0 MiB over the 60.0 MiB allowed)",
        ),
    ],
)
def test_section_has_the_verdicts(sparcl_seconds, sparcl_peaks, wall_verdict, memory_verdict):
    text = whole_run.section_markdown(report(wall_rows(sparcl_seconds), memory_rows(sparcl_peaks)), "CPU X")
    assert text.startswith("## Whole run on Split Fashion-MNIST: wall clock and peak memory\n")
    assert "Measured on 2026-01-02, CPU X, by `python benchmarks/whole_run.py --threads 1`" in text
    assert f"| SparCL-DER++ 0.75 training wall clock <= 0.80x dense DER++ | {wall_verdict} |" in text
    assert f"| SparCL peak RSS <= dense peak RSS + 1.5x parameter bytes | {memory_verdict} |" in text
    assert "Not measured" not in text and "Not every SparCL event" not in text


def test_section_flags_missing_parts_and_events():
    text = whole_run.section_markdown(report(None, memory_rows((1040.0, 1060.0), events=0)), "CPU X")
    assert "### Training wall clock\n\nNot measured in this run." in text
    assert "**Not every SparCL event happened** (mask_updates, gradient_mask_refreshes)" in text


def test_section_name_is_stable():
    assert whole_run.WHOLE_RUN_SECTION == "whole_run"


def test_a_saved_longer_schedule_adds_its_own_verdict_to_the_section():
    longer = report(wall_rows((70.0, 105.0)), None)  # medians: SparCL 87.5 s vs dense 120 s
    longer["wall_clock"]["settings"]["epochs"] = 10
    section = whole_run.section_markdown(report(wall_rows((90.0, 130.0)), None), "test machine", longer)
    assert "### Training wall clock at 10 epochs per experience" in section
    assert "| SparCL-DER++ 0.75 training wall clock <= 0.80x dense DER++ | met (0.73x) |" in section
    assert "| SparCL-DER++ 0.75 training wall clock <= 0.80x dense DER++ | **missed** (0.92x) |" in section
    assert "Per iteration SparCL took 0.81x dense's time." in section  # 0.729 / (5065 / 5625)
