"""Hostile or mistaken inputs refused with one clear line: Ctrl-C, a results.json that is no file, two
owners of weight masks in one strategy, profiles masking biases or normalisation, crafted sparse files."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from avalanche_sparcl.experiments import cli
from avalanche_sparcl.experiments.cli import main

# --- Ctrl-C -------------------------------------------------------------------------------------------


def interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("argv", "patched", "expected"),
    [
        (
            ["run", "config.yaml"],
            "run_command",
            "sparcl-bench: interrupted; the last checkpoint is kept (run the same command to resume)\n",
        ),
        (["report", "runs"], "report_command", "sparcl-bench: interrupted\n"),
        (["export", "runs/x", "--out", "out"], "export_command", "sparcl-bench: interrupted\n"),
    ],
    ids=["run", "report", "export"],
)
def test_ctrl_c_prints_one_line_and_exits_130(monkeypatch, capsys, argv, patched, expected):
    monkeypatch.setattr(cli, patched, interrupt)
    try:
        code = main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main: a traceback for the user")
    assert code == 130
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", expected)


# --- report: read only regular files ------------------------------------------------------------------


def report_in_thread(runs: Path, out: Path, fifo: Path) -> int:
    """``sparcl-bench report`` with a time limit: a report that blocks on the pipe is released by
    opening its other end, and the test fails instead of hanging."""
    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(main(["report", str(runs), "--out", str(out)])))
    thread.daemon = True
    thread.start()
    thread.join(timeout=20)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the blocked reader gets end of file
        thread.join(timeout=20)
        pytest.fail("report blocked on a named pipe called results.json")
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_report_refuses_a_named_pipe_called_results_json_without_blocking(tmp_path, capsys):
    runs = tmp_path / "runs"
    fifo = runs / "split_digits" / "x" / "seed_0" / "results.json"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    assert report_in_thread(runs, tmp_path / "report", fifo) == 2
    assert capsys.readouterr().err == (
        f"sparcl-bench: error: {fifo}: not a regular file (a named pipe); a results.json is a file\n"
    )
    assert not (tmp_path / "report").exists()


def test_report_refuses_a_folder_called_results_json(tmp_path, capsys):
    folder = tmp_path / "runs" / "x" / "seed_0" / "results.json"
    folder.mkdir(parents=True)
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 2
    assert capsys.readouterr().err == (
        f"sparcl-bench: error: {folder}: not a regular file (a folder); a results.json is a file\n"
    )
