"""``sparcl-bench --version`` and ``sparcl-bench export --onnx`` without the export extra."""

import subprocess
import sys

import pytest

from avalanche_sparcl import __version__
from avalanche_sparcl.experiments.cli import main


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"sparcl-bench {__version__}\n"


def test_version_from_the_command_line():
    result = subprocess.run(
        [sys.executable, "-m", "avalanche_sparcl.experiments.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, f"sparcl-bench {__version__}\n")


@pytest.mark.parametrize("missing", [("onnx",), ("onnxruntime",), ("onnx", "onnxruntime")])
def test_export_onnx_without_the_extra_is_one_line_and_writes_nothing(missing, tmp_path, monkeypatch, capsys):
    """Checked before the run folder is read: even a folder that is not a finished run gets this line."""
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    run_dir = tmp_path / "split_digits" / "x" / "seed_0"
    run_dir.mkdir(parents=True)
    out = tmp_path / "out"
    assert main(["export", str(run_dir), "--out", str(out), "--onnx"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "sparcl-bench: error: --onnx needs the packages onnx and onnxruntime "
        f"({', '.join(missing)} missing): install the export extra with "
        'pip install ".[export]" in the repository\'s folder\n'
    )
    assert not out.exists()


def test_export_onnx_without_the_extra_from_the_command_line(tmp_path):
    """The console command, in a process where ``import onnx`` fails: exit code 2, one line, no output."""
    out = tmp_path / "out"
    script = (
        "import sys; sys.modules['onnx'] = None; "
        "from avalanche_sparcl.experiments.cli import main; "
        f"sys.exit(main(['export', {str(tmp_path)!r}, '--out', {str(out)!r}, '--onnx']))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert 'pip install ".[export]"' in result.stderr
    assert not out.exists()
